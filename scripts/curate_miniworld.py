"""Curate the mini-world vocabulary from Debian's ``openclipart-png`` package.

Provenance: Debian package ``openclipart-png`` (version 1:0.18+dfsg-19, source ``openclipart``),
installed with ``apt-get install -y openclipart-png``; files under ``/usr/share/openclipart/png``.
Licence: Creative Commons Public Domain Dedication (see
``/usr/share/doc/openclipart-png/copyright``): every image is in the public domain.

How the vocabulary was made (re-run this script to reproduce it):
1. candidates: every PNG whose folder + file name matches a noun's pattern below (the clip-art
   authors wrote names in English, Italian and French, hence ``gatto``, ``cavallo``, ``tigre`` …; a
   few files named only after their author are listed by name after a look at them);
   symbolic links and byte-identical copies are dropped (the package links one file into several
   folders), but their names count: a file whose real path lies in an excluded folder (an icon
   theme) is a candidate when a link or copy of it in an object folder matches, and it is listed
   under its first real path;
2. automatic filter on the alpha channel (the object mask): a real alpha channel, the object fills
   10–97 % of its bounding box (a full box is an opaque background; boxy objects such as cameras
   come close, and wiry ones such as bicycles fill little, so the eye decides there), its largest
   connected component holds ≥ 75 % of the opaque pixels (one object, not a scene or a collection;
   the loose bound admits objects with detached parts, and the eye rejects the collections it lets
   through), and the bounding box is not thinner than 1:4 and its longer side has ≥ 48 pixels;
3. by eye: ``--sheets DIR`` renders one contact sheet per noun on a checkerboard; files that show
   several objects, a scene, text, a different object, an outline only, or something unrecognisable
   at 64x64 pixels are listed in ``REJECT``.

Usage::

    python scripts/curate_miniworld.py --sheets /tmp/sheets        # look at the candidates
    python scripts/curate_miniworld.py --write                      # write the vocabulary file
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

SOURCE = Path("/usr/share/openclipart/png")
OUT = Path(__file__).resolve().parents[1] / "src/ttd/assets/miniworld/vocabulary.json"
PACKAGE = {"name": "openclipart-png", "version": "1:0.18+dfsg-19", "licence": "public domain (CC Public Domain Dedication)"}

# noun: (synonyms, regex over "folder/stem" lower-cased; \b-like boundaries are added around each alternative)
NOUNS: dict[str, tuple[list[str], str]] = {
    "cat": (["kitten", "kitty"], r"cat|gatto|gattina|gatto_nero|kitten|housecats/.*"),
    "dog": (["puppy", "hound"], r"dog|dogs/.*|bobi|beagle|bulldog|black_lab|bored_dog"),
    "horse": (["pony", "stallion"], r"horse|cavallo"),
    "tiger": ([], r"tiger|tigre\d*"),
    "lion": ([], r"lion|leone|leone_\d+"),
    "bear": ([], r"bear|orso|ours"),
    "elephant": ([], r"elephant|elefante\d*|elefantone"),
    "monkey": (["ape"], r"monkey|baboon|orangutan"),
    "pig": (["piglet", "hog"], r"pig|porcinet|maiale|maialino|cochon"),
    "sheep": (["lamb"], r"sheep|sheep-md|pecora|pecorella|agnello|mouton"),
    "cow": (["cattle"], r"cow|vacca|bull|toro|mucca|vache|mhooo"),
    "rabbit": (["bunny"], r"rabbit|bunny|coniglio"),
    "dolphin": ([], r"dolphin"),
    "fish": ([], r"fish|pesce|pescetto|gourami|angelfish|loach|cichlid|greyling"),
    "duck": (["duckling"], r"duck|anatra|papera|canard|pennuto\d*"),
    "penguin": ([], r"penguin|tux|penguin/.*|pinguino\d*|ralf_ark\.in-berlin\.de_ra_\d+"),
    "eagle": ([], r"eagle|aquila|acquila"),
    "owl": ([], r"owl|gufo|civetta|hibou|chouette"),
    "chicken": (["hen", "rooster"], r"hen|rooster|gallo|pollo|chicken|gallina|pulcino|poule|coq"),
    "swan": ([], r"swan|cigno|cigni"),
    "butterfly": ([], r"butterfly|farfalla"),
    "bee": (["wasp"], r"bee\d?|abeille|wasp|ape_miele"),
    "ladybug": (["ladybird"], r"ladybug|coccinella|coccinelle|coccinellona|c_rollandin_francesco_ar_\d+|bug_nicu_buculei_\d+"),
    "spider": ([], r"spider|ragno|ragnetto"),
    "dinosaur": (["dino"], r"dino|dinosauro|dinosaur"),
    "snail": ([], r"snail|lumaca"),
    "frog": (["toad"], r"frog|rana"),
    "apple": ([], r"apple|applf"),
    "banana": ([], r"banana|bananas"),
    "pear": ([], r"pear|pera"),
    "orange": ([], r"orange"),
    "lemon": ([], r"lemon|lime"),
    "strawberry": ([], r"strawberry|fragola|fraise"),
    "cherry": ([], r"cherry|cherries"),
    "grapes": (["grape"], r"grape|grapes"),
    "watermelon": (["melon"], r"watermelon|pasteque|melon"),
    "cake": ([], r"cake|torta|gateau"),
    "pizza": ([], r"pizza"),
    "hamburger": (["burger"], r"burger|hamburger"),
    "bread": (["loaf"], r"bread|croissant|cornetto"),
    "pumpkin": ([], r"pumpkin\d?|zucca"),
    "egg": ([], r"egg|uovo|uova|oeuf"),
    "cheese": ([], r"cheese"),
    "mushroom": ([], r"mushroom|champignon|fungo|toadstool"),
    "car": (["automobile"], r"car|auto|autos|redcar|sportcar|chevrolet|celebrit|shelby|skoda|blazer|hummer|4wd|old_car"),
    "bus": ([], r"bus\d?"),
    "truck": (["lorry"], r"truck"),
    "airplane": (["plane", "aircraft", "jet"], r"airplane|aircraft|plane"),
    "bicycle": (["bike"], r"bicycle|bicicletta|bike|vtt"),
    "boat": (["ship", "sailboat"], r"boat|sailboat|trawler|ship|nave|barca"),
    "tractor": ([], r"tractor|trattore"),
    "rocket": ([], r"rocket"),
    "train": (["locomotive"], r"train|treno"),
    "guitar": ([], r"guitar"),
    "violin": (["fiddle"], r"violin|cello"),
    "trumpet": ([], r"trumpet|tpt"),
    "drum": ([], r"drum|drums|africandrum|djambf|derbouk"),
    "piano": ([], r"piano"),
    "saxophone": (["sax"], r"saxophone"),
    "harp": ([], r"harp\d?"),
    "cup": (["mug"], r"cup|mug|teacup|tazza|kubek|cuppa|coffee|coffe"),
    "teapot": ([], r"teapot|teiera"),
    "bottle": ([], r"bottle|bottled|bottiglia"),
    "chair": ([], r"chair|sedia|poltrona"),
    "table": ([], r"table|tavolo"),
    "lamp": ([], r"lamp|lampada"),
    "clock": ([], r"clock\d*|orologio"),
    "book": ([], r"book|books|libro|bible|diary"),
    "scissors": ([], r"scissors|forbici"),
    "hammer": ([], r"hammer|martello"),
    "key": ([], r"key|chiave"),
    "umbrella": ([], r"umbrella|ombrello|parapluie"),
    "hat": (["cap"], r"hat|hats/.*|fedora|sombrero|tophat|cappello"),
    "shoe": (["sneaker", "boot"], r"shoe|shoes|boot"),
    "television": (["tv"], r"television|tv"),
    "computer": (["pc"], r"computer\d?|desktop|workstation"),
    "laptop": (["notebook"], r"laptop"),
    "telephone": (["phone"], r"phone|telephone|telefono|handphone"),
    "camera": ([], r"camera|fotografica|telecamera|camcorder"),
    "house": (["home", "cottage"], r"house|home\d*|casa|chalet|pinkhome\d?|homes/.*"),
    "tree": ([], r"tree|albero|evergreen/.*|palmtree"),
    "flower": (["blossom"], r"flower\d?|fiore|daisy|daffodil|rose|tulips|geranium|sun_flower|magnolia"),
    "cactus": ([], r"cactus"),
    "moon": ([], r"moon|moon-\w+|full_moon|moon\d+|fullmoon"),
    "ball": ([], r"ball|soccer_ball|beachball|beach_ball|8ball"),
    "robot": ([], r"robot"),
    "crown": ([], r"crown|corona|couronne"),
    "envelope": ([], r"envelope|envelop"),
    "pencil": (["crayon"], r"pencil|crayon"),
    "candle": ([], r"candle|candela"),
    "teddy": (["teddybear"], r"teddy|teddybear"),
    "lighthouse": ([], r"lighthouse"),
    "anchor": ([], r"anchor"),
    "glasses": (["sunglasses", "spectacles"], r"sunglasses|glasses|occhiali"),
}

# Icon themes, flags, patterns and logos are symbols, not objects.
EXCLUDED_FOLDERS = (
    "computer/icons",
    "signs_and_symbols/flags",
    "signs_and_symbols/hazard",
    "signs_and_symbols/map_symbols",
    "transportation/aiga-symbols",
    "transportation/roadsigns",
    "special",
    "shapes",
    "buttons",
    "logos",
)
MAX_PIXELS = 16_000_000  # a few files are > 100 M pixels: too slow to cut out, and refused by Pillow

# Rejected by eye on the contact sheets: wrong object, several objects, a scene, text or an outline only.
REJECT: dict[str, set[str]] = {
    "airplane": {
        "recreation/toys/toy_paper_plane_01.png",
        "signs_and_symbols/airplane.png",
        "transportation/airplane.png",
        "transportation/plane_in_the_sky_mo_01.png",
    },
    "apple": {
        "education/slate-apple_benji_park_01.png",
        "food/beverages/apple_juice_box.png",
        "food/beverages/apple_juice_box_bw.png",
        "food/desserts/pie_apple.png",
        "food/desserts/pie_apple_bw.png",
        "food/fruit/apple_core_01.png",
        "food/fruit/apple_wedge.png",
        "food/fruit/apple_wedge_bw.png",
    },
    "ball": {
        "recreation/games/8ball_form_jarno_vasama.png",
        "recreation/games/9ball_form_jarno_vasama.png",
        "recreation/sports/golf_flag_ball_bram_gron_.png",
        "recreation/sports/handball_ball_brice_boye_01.png",
    },
    "bear": {
        "animals/mammals/bears/sleeping_bear_under_sta_01.png",
        "animals/mammals/bears/sleeping_bear_under_sta_02.png",
        "recreation/toys/simple_teddy_bear_gerald_01.png",
        "recreation/toys/simple_teddy_bear_with__01.png",
        "recreation/toys/stylized_teddy_bear_gera_01.png",
        "recreation/toys/stylized_teddy_bear_wit_01.png",
        "recreation/toys/stylized_teddy_bear_wit_02.png",
    },
    "bicycle": {
        "transportation/bicycle_philippe_colin_01.png",
    },
    "boat": {
        "transportation/boating/sailboat_illustration_labels.png",
    },
    "book": {
        "education/books/books-aj.svg_aj_ashton_01.png",
        "education/books/help-books-aj.svg_aj_ash_01.png",
        "education/books/open_book_01.png",
        "education/books/stack_of_books_01.png",
        "education/books/stack_of_books_taller_ga_.png",
        "education/books/old_book_lumen_design_st_01.png",
    },
    "bread": {
        "food/bread_and_wine_mark_near_.png",
    },
    "cake": {
        "food/cake_and_candle_anton_fr_01.png",
    },
    "car": {
        "people/car_ride_ganson.png",
        "transportation/vehicles/hummers/hummer_01.png",
        "transportation/vehicles/hummers/hummer_02.png",
        "transportation/vehicles/hummers/hummer_03.png",
        "transportation/vehicles/hummers/hummer_05.png",
        "transportation/vehicles/hummers/hummer_07.png",
    },
    "cat": {
        "animals/mammals/housecats/cat_scrathing_post_benji_01.png",
        "animals/mammals/housecats/gatto_nero_architetto_fr_01.png",
        "animals/mammals/housecats/le_mie_tigri_preferite_a_01.png",
        "unsorted/scodella_gatto_architett_01.png",
        "animals/mammals/housecats/sleeping_cat_ron_golan_01.png",
    },
    "chair": {
        "people/man_in_chair_-_thinking_01.png",
    },
    "cheese": {
        "food/pizza_cheese.png",
        "food/pizza_cheese_bw.png",
    },
    "cherry": {
        "food/desserts/pie_cherry.png",
        "food/desserts/pie_cherry_bw.png",
    },
    "chicken": {
        "animals/birds/pollo_architetto_frances_01.png",
        "food/meats_and_eggs/chicken_burger.png",
        "food/meats_and_eggs/chicken_burger_bw.png",
        "unsorted/marchio_gallina_architet_01.png",
    },
    "clock": {
        "signs_and_symbols/clocks/clock02.png",
        "signs_and_symbols/clocks/clock03.png",
        "signs_and_symbols/clocks/clock04.png",
        "signs_and_symbols/clocks/clock05.png",
        "signs_and_symbols/clocks/clock06.png",
        "signs_and_symbols/clocks/clock08.png",
        "signs_and_symbols/clocks/clock09.png",
        "signs_and_symbols/clocks/clock10.png",
        "signs_and_symbols/clocks/clock11.png",
        "signs_and_symbols/clocks/clock12.png",
        "signs_and_symbols/clocks/alarm_clock_gerald_g._01.png",
    },
    "computer": {
        "computer/gis-computer_glenn_rolla_01.png",
        "computer/hardware/gis-computer_glenn_rolla_01.png",
        "computer/computer_zazou.png",
    },
    "cow": {
        "tools/nodding_donkey_kevin_cow_01.png",
        "animals/mammals/mhooo_peterm_.png",
    },
    "cup": {
        "food/beverages/teiera_tazza_architetto__01.png",
    },
    "dog": {
        "food/meats_and_eggs/corn_dog.png",
        "food/meats_and_eggs/corn_dog_bw.png",
        "food/meats_and_eggs/hot_dog.png",
        "food/meats_and_eggs/hot_dog_bw.png",
        "food/meats_and_eggs/hot_dog_juliane_krug_r.png",
        "signs_and_symbols/chodovian_39_s_dog_by_m_01.png",
    },
    "drum": {
        "geography/war_drum_enrique_meza_c_01.png",
        "recreation/music/derbouk_jurgen_01.png",
    },
    "eagle": {
        "animals/birds/acquila_architetto_franc_04.png",
    },
    "egg": {
        "food/meats_and_eggs/egg_muffin.png",
        "unsorted/Uovo_sorridente.png",
    },
    "flower": {
        "food/beverages/flower-pot_01.png",
        "plants/flowers/pink-rose_tess_brady_01.png",
    },
    "frog": {
        "animals/red-eye_frog_mirko_maisc_01.png",
    },
    "hat": {
        "people/clothing/hats/bejewelled_crown_with_t_01.png",
        "people/clothing/hats/green_fedora_01.png",
        "people/clothing/hats/jacob_leisler_mo_01.png",
        "people/clothing/hats/magic_hat_and_wand_nath_r.png",
        "people/clothing/hats/simple_crown_with_one_r_01.png",
        "people/clothing/hats/simple_crown_with_three_01.png",
    },
    "horse": {
        "animals/mammals/horses/horse_1_konstantin_r._01.png",
        "transportation/horse.png",
        "animals/mammals/horses/horse_2_konstantin_r._01.png",
    },
    "house": {
        "buildings/homes/abitazione_villa_con_gi_01.png",
        "buildings/homes/casa_in_campagna_archite_01.png",
        "buildings/homes/casa_plurifamigliare_arc_01.png",
        "buildings/homes/chalet_di_montagna_arch_01.png",
        "buildings/homes/home10.png",
        "buildings/homes/home11.png",
        "buildings/homes/home13.png",
        "buildings/homes/home8.png",
        "buildings/homes/house_gabrielle_nowicki_.png",
        "buildings/homes/houses_jon_phillips_01.png",
        "buildings/homes/lowtec_house_christoph_b_01.png",
        "buildings/homes/pinkhome-simple.png",
        "buildings/homes/pinkhome2.png",
        "buildings/homes/pinkhome3.png",
        "computer/folders/gnome-fs-home.png",
        "computer/home1.png",
        "computer/home13.png",
        "computer/home5.png",
        "computer/home6.png",
        "signs_and_symbols/ell_house_0_symbol_1m_bwh.png",
    },
    "key": {
        "tools/utensili_chiave_e_cacci_01.png",
    },
    "lamp": {
        "office/lamp_sergio_luiz_araujo__01.png",
    },
    "lemon": {
        "food/fruit/lime_half_ganson.png",
        "food/fruit/lime_half_slice_ganson.png",
        "food/fruit/lime_slice_ganson.png",
        "food/fruit/lime_wedge_ganson.png",
        "food/fruit/lime_whole_ganson.png",
        "food/fruit/lime_half_jarno_vasamaa_.png",
    },
    "lion": {
        "tools/toys/unit_blocks_lion_kimbro_01.png",
    },
    "monkey": {
        "animals/mammals/crazy_monkey_shandy_brow_01.png",
    },
    "moon": {
        "geography/astronomy/moon-crescent.png",
        "geography/astronomy/moon-crescent2.png",
        "geography/astronomy/moon-half.png",
        "geography/astronomy/moon-half2.png",
        "science/astronomy/moon_jasper_van_de_grond_01.png",
    },
    "orange": {
        "food/beverages/orange_juice_box.png",
        "food/beverages/orange_juice_box_bw.png",
        "recreation/party/balloon-orange-aj.png",
        "signs_and_symbols/led/led_circle_orange.png",
        "signs_and_symbols/led/led_rounded_h_orange.png",
        "signs_and_symbols/led/led_rounded_v_orange.png",
        "signs_and_symbols/led/led_triangular_1_orange.png",
        "tools/orange_burner_01.png",
    },
    "pear": {
        "food/fruit/pear_jean-victor_balin_01r.png",
    },
    "penguin": {
        "animals/birds/baby_tux_rory_mccann_01.png",
        "animals/birds/ninja_tux_rory_mccann_01.png",
        "animals/fantasy/the_incredible_tux_giuli_01.png",
        "animals/pinguino_col_piccolo_arc_01.png",
        "unsorted/Pinguino3.png",
    },
    "piano": {
        "recreation/music/piano_keys_jonathan_diet_01.png",
        "recreation/music/piano_theory__ganson.png",
        "recreation/music/piano_theory_ganson1.png",
    },
    "pumpkin": {
        "food/desserts/pie_pumpkin.png",
        "food/desserts/pie_pumpkin_bw.png",
    },
    "shoe": {
        "people/clothing/shoe_print_01.png",
    },
    "swan": {
        "animals/birds/cigno_architetto_frances_01.png",  # scribbled reflections read as part of the bird
        "animals/birds/cigni_bianchi_e_neri_arc_01.png",
        "animals/birds/cigno_di_notte_nella_pa_01.png",
    },
    "teapot": {
        "food/beverages/teiera_tazza_architetto__01.png",
    },
    "tree": {
        "plants/trees/tree_01.png",
    },
    "trumpet": {
        "recreation/music/tpt_cubf_ganson.png",
        "recreation/music/trumpet_harmon_mute__ganson.png",
        "recreation/music/trumpet_straight_mute_ganson.png",
    },
    "watermelon": {
        "food/fruit/melon_goneri_le_bouder_01.png",
    },
    "spider": {
        "animals/bugs/ragnetto_incazzato_archi_01.png",
        "animals/bugs/ragno_figo_architetto_fr_01.png",
        "animals/bugs/spider.png",
        "tools/weapons/spider_sword_celso_junio_01.png",
    },
    "television": {
        "buildings/furniture/television_peterm_.png",
        "computer/tv_zazou.png",
        "electronics/television_alexander_d.__01.png",
        "recreation/tv_01.png",
    },
    "cactus": {
        "plants/cactus_linda_kim_01.png",
    },
    "rocket": {
        "transportation/vehicles/rocket.png",
    },
    "tractor": {
        "transportation/vehicles/trattore_architetto_fran_01.png",
    },
    "train": {
        "recreation/toys/kiddy_train_orlando_kara_.png",
    },
    "glasses": {
        "people/clothing/sunglasses_01.png",
        "people/clothing/sunglasses_linda_kim_01.png",
    },
    "lighthouse": {
        "buildings/homes/lighthouse_matthew_gates_.png",
        "transportation/vehicles/lighthouse_01.png",
    },
    "candle": {
        "food/cake_and_candle_anton_fr_01.png",
        "unsorted/candela.png",
    },
    "pencil": {
        "education/crayon.png",
        "education/pencil_01.png",
        "education/pencil_benji_park_01.png",
        "office/pen_pencil_darkon_01.png",
        "office/pencil_jonathan_dietrich_01.png",
    },
    "envelope": {
        "office/addressed_envelope_with_stamp_01.png",
        "office/envelop_rikva_01.png",
        "office/envelope_01.png",
    },
    "rabbit": {
        "animals/mammals/bunny_01.png",
        "animals/mammals/coniglio_architetto_fran_01.png",
    },
    "snail": {
        "animals/bugs/lumaca_architetto_france_01.png",
        "animals/bugs/lumaca_turbo_architetto__01.png",
    },
    "saxophone": {
        "recreation/music/saxophone_jarno_vasamaa_.png",
    },
    "dolphin": {
        "animals/fish/dolphin_01.png",
    },
    "bee": {
        "unsorted/ape_miele.png",
    },
    "bottle": {
        "food/beverages/alcohol/bottiglia_di_vino_pregi_01.png",
    },
    "scissors": {
        "unsorted/scissors_RPSWB.png",
    },
}


def _pattern(regex: str) -> re.Pattern:
    alternatives = "|".join(f"(?:{a})" for a in regex.split("|"))
    return re.compile(rf"(?<![a-z])(?:{alternatives})(?![a-z])")


def candidates(source: Path = SOURCE) -> dict[str, list[str]]:
    """Files whose folder + name match each noun; links and byte-identical duplicates dropped.

    The package links (or copies) one file into several folders, sometimes from an excluded
    folder (an icon theme) into an object folder (``electronics/``): a file is a candidate when
    any of its names outside the excluded folders matches, and it is listed under its first
    real path (a regular file, in sorted order).
    """
    first: dict[str, str] = {}  # content digest -> listed path
    names: dict[str, list[str]] = {}  # listed path -> every name of that file (links, copies)
    by_target: dict[Path, str] = {}
    paths = sorted(source.rglob("*.png"))
    for path in paths:
        if path.is_symlink():
            continue
        rel = path.relative_to(source).as_posix()
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        listed = first.setdefault(digest, rel)
        names.setdefault(listed, []).append(rel)
        by_target[path.resolve()] = listed
    for path in paths:
        if path.is_symlink() and path.resolve() in by_target:
            names[by_target[path.resolve()]].append(path.relative_to(source).as_posix())
    out = {}
    for noun, (_, regex) in NOUNS.items():
        by_name = _pattern("|".join(a for a in regex.split("|") if "/" not in a))
        by_folder = [a for a in regex.split("|") if "/" in a]
        out[noun] = [
            f
            for f, aliases in names.items()
            if any(
                not a.startswith(EXCLUDED_FOLDERS)
                and (by_name.search(Path(a).stem.lower()) or any(re.search(b, a.lower()) for b in by_folder))
                for a in aliases
            )
        ]
    return out


def alpha_stats(path: Path) -> dict:
    """Bounding-box fill, largest-component share and aspect ratio of the opaque pixels."""
    with warnings.catch_warnings():  # the size is checked before any pixel is decoded
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    if im.width * im.height > MAX_PIXELS:
        return {"alpha": False}
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    alpha = np.asarray(im.convert("RGBA"))[..., 3] >= 128
    if not has_alpha or not alpha.any():
        return {"alpha": False}
    ys, xs = np.nonzero(alpha)
    box = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    labels, n = ndimage.label(box)
    largest = np.bincount(labels.ravel())[1:].max() / box.sum() if n else 0.0
    h, w = box.shape
    return {
        "alpha": True,
        "fill": float(box.mean()),
        "largest": float(largest),
        "aspect": float(min(h, w) / max(h, w)),
        "size": (w, h),
    }


def passes(stats: dict) -> bool:
    return (
        stats["alpha"]
        and 0.10 <= stats["fill"] <= 0.97
        and stats["largest"] >= 0.75
        and stats["aspect"] >= 0.25
        and max(stats["size"]) >= 48
    )


def contact_sheet(
    source: Path, files: list[str], title: str, failed: set[str] = frozenset(), cell: int = 128, cols: int = 8
) -> Image.Image:
    """Candidates on a checkerboard (so the alpha shows), numbered; ``failed`` ones framed in red."""
    rows = max(1, -(-len(files) // cols))
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 12) + 14), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), title, fill="black")
    checker = Image.fromarray(((np.indices((cell, cell)).sum(0) // 8 % 2) * 60 + 160).astype(np.uint8)).convert("RGB")
    for i, f in enumerate(files):
        im = Image.open(source / f).convert("RGBA")
        im.thumbnail((cell - 4, cell - 4))
        x, y = (i % cols) * cell, (i // cols) * (cell + 12) + 14
        tile = checker.copy()
        tile.paste(im, ((cell - im.width) // 2, (cell - im.height) // 2), im)
        sheet.paste(tile, (x, y))
        if f in failed:
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline="red", width=3)
        draw.text((x + 2, y + cell), f"{i}:{Path(f).stem[:18]}", fill="black")
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--sheets", type=Path, help="write one contact sheet per noun here")
    parser.add_argument("--all", action="store_true", help="sheets show rejected candidates too")
    parser.add_argument("--write", action="store_true", help=f"write {OUT}")
    parser.add_argument("--min-files", type=int, default=2, help="drop nouns with fewer clean files")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        sys.exit(f"{args.source} not found: apt-get install -y openclipart-png")

    vocabulary = {}
    for noun, files in candidates(args.source).items():
        stats = {f: alpha_stats(args.source / f) for f in files}
        auto = [f for f in files if passes(stats[f])]
        kept = [f for f in auto if f not in REJECT.get(noun, ())]
        print(f"{noun:12s} candidates {len(files):3d}  alpha-filter {len(auto):3d}  kept {len(kept):3d}")
        if args.sheets:
            args.sheets.mkdir(parents=True, exist_ok=True)
            shown = files if args.all else kept
            contact_sheet(args.source, shown, f"{noun}: {len(shown)}", set(files) - set(auto)).save(args.sheets / f"{noun}.png")
        if len(kept) >= args.min_files:
            vocabulary[noun] = {"synonyms": NOUNS[noun][0], "files": kept}
    print(f"{len(vocabulary)} nouns with ≥ {args.min_files} files, {sum(len(v['files']) for v in vocabulary.values())} files")
    if args.write:
        doc = {
            "source": {**PACKAGE, "root": str(SOURCE), "install": "apt-get install -y openclipart-png"},
            "curation": "scripts/curate_miniworld.py (name patterns, alpha filter, then by eye)",
            "nouns": vocabulary,
        }
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
