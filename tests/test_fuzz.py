"""Issue 21's new classes of hostile input through the ``ttd`` CLI: images, text, adapters, the
environment (a read-only disk, a file-size limit, no home folder, ``LC_ALL=C``) and signals.

The cheap cases run in one driver subprocess (``helpers.replay``) and assert exit code, one
error line, no traceback and untouched inputs; the signals need real processes of their own.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from helpers import check_cases, cli_env, digest, make_pairs, replay, write_manifest
from safetensors.torch import load_file

from ttd.data.layouts import load_dataset
from ttd.models.weights import embedded_adapter

ORIENTATIONS = (3, 6, 8)  # 180°, 90° clockwise, 90° counter-clockwise


def _exif_photo(path: Path, orientation: int) -> np.ndarray:
    """A 40×24 stored picture, red on its left third, with an EXIF orientation; returns where red is."""
    pixels = np.zeros((24, 40, 3), np.uint8) + np.array([30, 40, 220], np.uint8)
    pixels[:, :13] = (220, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return pixels[..., 0] > 128


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """Hostile images and adapters, written once."""
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "photo.png")
    (root / "truncated.png").write_bytes((root / "photo.png").read_bytes()[:300])
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (48, 56), dtype=np.uint16)).save(root / "deep.png")  # 16-bit grey
    frames = [Image.fromarray(np.roll(rgb, k, axis=1)).convert("P") for k in range(3)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("1", (14000, 13000)).save(root / "bomb.png")  # 182 million pixels in a few kilobytes
    (root / "loop.png").symlink_to(root / "loop.png")
    _exif_photo(root / "turned.jpg", 6)
    (root / "ça va 🐱\nnext line.png").write_bytes((root / "photo.png").read_bytes())

    class Evil:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {root / 'pwned'}",))

    (root / "pickle.safetensors").write_bytes(pickle.dumps(Evil()))
    return root


def test_hostile_images_text_adapters_and_environment(world, hostile, tmp_path):
    w, h = world, hostile
    before = {**digest(w["root"]), **{f"hostile/{k}": v for k, v in digest(h).items()}}
    seg = ["segment", "--model", w["weights"], "--classes", "cat,dog", "--out", str(tmp_path / "o.png")]
    tags = ["tags", w["image"], "--model", w["weights"]]
    adapter = Path(w["adapter"]).read_bytes()
    (tmp_path / "half.safetensors").write_bytes(adapter[: len(adapter) // 2])
    words = " ".join(f"word{k}" for k in range(300))
    ro = str(tmp_path / "ro")
    readonly = dict(seam="readonly", readonly=ro, rc=2, says="Read-only file system; choose a writable --out")
    cases = [
        dict(argv=[*seg, str(h / "truncated.png")], rc=2, why="truncated PNG", says="is it a complete image file?"),
        dict(argv=[*seg, str(h / "cmyk.jpg")], rc=0, why="CMYK JPEG"),
        dict(argv=[*seg, str(h / "deep.png")], rc=0, why="16-bit PNG"),
        dict(argv=[*seg, str(h / "animated.gif")], rc=0, why="animated GIF: its first frame"),
        dict(argv=[*seg, str(h / "turned.jpg")], rc=0, why="EXIF rotation"),
        dict(argv=[*seg, str(h / "bomb.png")], rc=2, why="decompression bomb", says="too large to decode safely"),
        dict(argv=[*seg, str(h)], rc=2, why="a folder as image", says="is a folder, not an image"),
        dict(argv=[*seg, str(h / "loop.png")], rc=2, why="a symlink loop", says="is a symbolic link to nothing (a loop, or a missing target)"),
        dict(argv=[*seg[:-1], str(tmp_path / "ünï 🐱\nout.png"), str(h / "ça va 🐱\nnext line.png")], rc=0,
             why="unicode and a newline in file names"),
        dict(argv=[*seg, str(h / "missing 🐱\nfile.png")], rc=2, why="a newline in a missing name",
             says="image not found: " + str(h / "missing 🐱\\nfile.png")),
        dict(argv=[*tags, " ".join(["a red square on a blue background"] * 715)], rc=0, why="5,000-word caption",
             says="cut"),
        dict(argv=[*tags, "a red\x00 square"], rc=0, why="NUL byte in a caption"),
        dict(argv=[*seg, w["image"], "--classes", "cat\x00dog"], rc=0, why="NUL byte in class names"),
        dict(argv=[*tags, "🐱🐶🌳"], rc=0, why="only emoji: one candidate"),
        dict(argv=[*tags, words], rc=0, why="300 candidate tags"),
        dict(argv=[*seg, w["image"], "--adapter", str(h / "pickle.safetensors")], rc=2,
             why="a pickle named .safetensors", says="is it a safetensors file?"),
        dict(argv=[*seg, w["image"], "--adapter", str(tmp_path / "half.safetensors")], rc=2,
             why="a truncated adapter", says="incomplete metadata, file not fully covered"),
        dict(argv=["segment", w["image"], "--model", "miniworld-clip", "--classes", "cat", "--out",
                   str(tmp_path / "o2.png"), "--adapter", str(embedded_adapter("miniworld"))], rc=2,
             why="an adapter of the other embedded model", says="pass --dense maskclip"),
        dict(argv=["segment", w["image"], "--model", "miniworld-clip", "--dense", "maskclip", "--classes", "cat",
                   "--out", str(tmp_path / "o2.png"), "--adapter", str(embedded_adapter("miniworld"))], rc=2,
             why="... and on its dense variant", says="(trained on 'miniworld')"),
        dict(argv=[*seg[:-1], f"{ro}/o.png", w["image"]], **readonly, why="read-only --out (segment)"),
        dict(argv=["train", "--data", w["pairs"], "--model", w["weights"], "--steps", "1", "--image-size", "32",
                   "--out", f"{ro}/run"], **readonly, why="read-only --out (train)"),
        dict(argv=["eval", "seg", "--dataset", "generic", "--root", w["seg"], "--model", w["weights"], "--out",
                   f"{ro}/eval"], **readonly, why="read-only --out (eval seg)"),
        dict(argv=["data", "prune", "--data", w["pairs"], "--model", w["weights"], "--out", f"{ro}/kept.jsonl"],
             **readonly, why="read-only --out (prune)"),
        dict(argv=[*seg, w["image"]], rc=0, why="a read-only text cache", seam="readonly", readonly=ro,
             env={"TTD_CACHE": f"{ro}/cache"}, says="warning: text cache not written"),
        dict(argv=[*seg, w["image"]], rc=0, why="HOME unset, no home folder", seam="nohome",
             env={"HOME": None, "TTD_CACHE": None}),
    ]
    results = replay(tmp_path, cases, LC_ALL="C", LANG=None)  # every case in the C locale
    check_cases(cases, results)
    assert {**digest(w["root"]), **{f"hostile/{k}": v for k, v in digest(h).items()}} == before
    assert not (h / "pwned").exists()
    assert not Path(ro).exists()
    assert results[11]["out"].count("\nred ") == 1 and "\x00" not in results[11]["out"]  # NUL stripped from the tag
    assert "🐱🐶🌳 " in results[13]["out"]
    assert len([line for line in results[14]["out"].splitlines() if line.startswith("word")]) == 1 + 300
    assert Image.open(tmp_path / "ünï 🐱\nout.png").format == "PNG"


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_exif_rotation_turns_image_and_mask_alike(tmp_path, orientation):
    for name in ("images", "masks"):
        (tmp_path / name).mkdir()
    red = _exif_photo(tmp_path / "images" / "a.jpg", orientation)
    Image.fromarray(red.astype(np.uint8)).save(tmp_path / "masks" / "a.png")  # drawn on the stored pixels
    (tmp_path / "classes.txt").write_text("background\nred\n")
    sample = load_dataset("generic", tmp_path)[0]
    assert sample.image.size != (40, 24) or orientation == 3
    assert np.array_equal(np.asarray(sample.image)[..., 0] > 128, sample.label.numpy() == 1)


def test_a_file_size_limit_leaves_no_half_written_file(world, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(big)
    out = tmp_path / "out" / "overlay.png"
    limit = 64 * 1024  # the overlay of 256×256 noise is larger
    proc = subprocess.run(
        [sys.executable, "-m", "ttd", "segment", str(big), "--model", world["weights"], "--classes", "cat",
         "--out", str(out)], env=cli_env(tmp_path), capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"ttd segment: error: {out}: File too large"], proc.stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no half PNG, no temporary


# --- signals ------------------------------------------------------------------------------------------
def _interrupted(argv: list[str], tmp: Path, signum: int, ready) -> subprocess.CompletedProcess:
    """``ttd ARGV`` sent ``signum`` once ``ready()`` says it has finished some work."""
    proc = subprocess.Popen([sys.executable, "-m", "ttd", *argv], env=cli_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _run(argv: list[str], tmp: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ttd", *argv], env=cli_env(tmp), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*.tmp")], "a half-written file was left"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_train_resumes_to_the_same_adapter(world, tmp_path, signum):
    def run(out: Path, *extra: str) -> list[str]:
        return ["train", "--data", world["pairs"], "--model", world["weights"], "--steps", "100", "--batch-size", "2",
                "--image-size", "32", "--workers", "0", "--no-progress", "--no-tensorboard", "--log-every", "1",
                "--save-every", "1000", "--out", str(out), *extra]

    _run(run(tmp_path / "whole"), tmp_path)
    cut = tmp_path / "cut"
    stopped = _interrupted(run(cut), tmp_path, signum, lambda: (cut / "log.jsonl").is_file()
                           and (cut / "log.jsonl").read_text().count("\n") >= 2)
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert "continue with: ttd train" in stopped.stdout and "Traceback" not in stopped.stderr
    assert not (cut / "adapter.safetensors").exists()
    _no_temporaries(cut)
    _run(run(cut, "--resume"), tmp_path)
    whole, resumed = load_file(tmp_path / "whole" / "adapter.safetensors"), load_file(cut / "adapter.safetensors")
    assert whole.keys() == resumed.keys()
    assert all((whole[k] == resumed[k]).all() for k in whole)


def _stop_and_rerun(argv: list[str], tmp: Path, signum: int, result: Path, ready) -> None:
    """``ttd ARGV`` stopped by ``signum``: exit 128 + signum, one line saying how to resume, no
    result and no half-written file; then the same command run to its end."""
    stopped = _interrupted(argv, tmp, signum, ready)
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert stopped.stderr.strip().splitlines() == [f"ttd {argv[0]}: interrupted; rerun the same command to resume"]
    assert not result.exists()
    _no_temporaries(tmp)
    _run(argv, tmp)


def test_an_interrupted_prune_and_eval_exit_128_plus_the_signal_and_rerun_to_the_same_result(world, tmp_path):
    pairs = write_manifest(tmp_path / "pairs", make_pairs(400))
    prune = ["data", "prune", "--data", str(pairs), "--model", world["weights"], "--image-size", "32", "--workers",
             "0", "--batch-size", "2", "--quiet"]
    _run([*prune, "--out", str(tmp_path / "whole.jsonl")], tmp_path)
    cut = tmp_path / "cut.jsonl"
    _stop_and_rerun([*prune, "--out", str(cut)], tmp_path, signal.SIGTERM, cut,
                    lambda: (tmp_path / "cut.jsonl.scores" / ".ttd.lock").is_file())
    assert cut.read_text() == (tmp_path / "whole.jsonl").read_text()

    seg = tmp_path / "seg"
    for name in ("images", "masks"):
        (seg / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(600):
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(seg / "images" / f"{k:03d}.png")
        Image.fromarray(rng.integers(0, 3, (32, 40), dtype=np.uint8)).save(seg / "masks" / f"{k:03d}.png")
    (seg / "classes.txt").write_text("background\ncat\ndog\n")
    evaluate = ["eval", "seg", "--dataset", "generic", "--root", str(seg), "--model", world["weights"],
                "--figures", "0", "--quiet", "--protocol", "miniworld"]
    _run([*evaluate, "--out", str(tmp_path / "e-whole")], tmp_path)
    out = tmp_path / "e-cut"
    _stop_and_rerun([*evaluate, "--out", str(out)], tmp_path, signal.SIGINT, out / "results.json",
                    lambda: (out / ".state").is_dir())  # 25 of 600 images done
    whole, resumed = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "e-whole", out))
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in whole.items() if k != "seconds"}
