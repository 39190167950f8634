"""The mini-world's drawings: clip-art PNG files and iconify emoji sets, as RGBA cut-outs.

A vocabulary names each drawing by a *reference*: a path under the clip-art folder
(``animals/cat.png``, Debian's ``openclipart-png``), or ``SET:NAME`` for the icon ``NAME`` of an
iconify emoji set (``noto:dog``). The part before the colon is the drawing's *style*; the
mini-world holds whole styles out of training (:mod:`ttd.data.miniworld`).

Iconify publishes every set as one JSON file (``icons``: SVG bodies, ``aliases``, ``width`` /
``height``; its licence in ``info`` or in the package's ``info.json``), one npm package per set:
``npm pack @iconify-json/noto`` writes ``iconify-json-noto-<version>.tgz``. A folder of those
archives (or of their unpacked ``icons.json`` files) is an emoji source; nothing here touches the
network. SVGs are rasterised with ``resvg-py``, a self-contained wheel (the ``world`` extra).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import TTDError

__all__ = ["CLIPART_STYLE", "IconSet", "drawing_style", "find_icon_sets", "render_svg", "NPM_HINT"]

CLIPART_STYLE = "openclipart"
NPM_HINT = "fetch each set with `npm pack @iconify-json/NAME` into that folder (docs/miniworld.md)"


def drawing_style(ref: str) -> str:
    """``"noto:dog"`` → ``"noto"``; a clip-art path → ``"openclipart"``."""
    style, sep, _ = ref.partition(":")
    return style if sep else CLIPART_STYLE


@dataclass
class IconSet:
    """One iconify set: its icons' SVG bodies, aliases, default box and licence."""

    prefix: str
    icons: dict[str, dict]
    aliases: dict[str, dict]
    width: float = 16.0
    height: float = 16.0
    licence: dict = field(default_factory=dict)  # {"title", "spdx", "url"}
    author: dict = field(default_factory=dict)  # {"name", "url"}
    version: str = ""
    origin: str = ""  # the file it was read from

    def resolve(self, name: str) -> tuple[dict, dict]:
        """The icon ``name`` (following aliases) and the alias transforms met on the way."""
        transforms: dict = {}
        seen = set()
        while name in self.aliases and name not in self.icons:
            if name in seen:
                raise TTDError(f"emoji set {self.prefix!r}: alias loop at {name!r}")
            seen.add(name)
            alias = self.aliases[name]
            for flip in ("hFlip", "vFlip"):
                if alias.get(flip):
                    transforms[flip] = not transforms.get(flip, False)
            transforms["rotate"] = (transforms.get("rotate", 0) + int(alias.get("rotate", 0))) % 4
            name = alias.get("parent", "")
        if name not in self.icons:
            raise TTDError(f"emoji set {self.prefix!r} ({self.origin}) has no icon {name!r}")
        return self.icons[name], transforms

    def svg(self, name: str) -> tuple[str, dict]:
        """A standalone SVG document of the icon, and its alias transforms."""
        icon, transforms = self.resolve(name)
        left, top = icon.get("left", 0), icon.get("top", 0)
        width, height = icon.get("width", self.width), icon.get("height", self.height)
        for flip in ("hFlip", "vFlip"):
            if icon.get(flip):
                transforms[flip] = not transforms.get(flip, False)
        transforms["rotate"] = (transforms.get("rotate", 0) + int(icon.get("rotate", 0))) % 4
        doc = (
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {width} {height}" width="{width}" height="{height}">{icon["body"]}</svg>'
        )
        return doc, transforms

    def render(self, name: str, longer_side: int) -> np.ndarray:
        """The icon as an RGBA array whose longer side is ``longer_side`` pixels (before cropping)."""
        doc, transforms = self.svg(name)
        icon, _ = self.resolve(name)
        width, height = icon.get("width", self.width), icon.get("height", self.height)
        scale = longer_side / max(width, height)
        rgba = render_svg(doc, max(1, round(width * scale)), max(1, round(height * scale)), f"{self.prefix}:{name}")
        if transforms.get("hFlip"):
            rgba = rgba[:, ::-1]
        if transforms.get("vFlip"):
            rgba = rgba[::-1]
        return np.ascontiguousarray(np.rot90(rgba, -transforms.get("rotate", 0)))


def render_svg(svg: str, width: int, height: int, what: str = "SVG") -> np.ndarray:
    """An SVG document rasterised to (height, width, 4) uint8 RGBA."""
    try:
        import resvg_py
    except ImportError:
        raise TTDError("rendering emoji needs resvg-py: pip install 'ttd[world]' (or pip install resvg-py)") from None
    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, width=width, height=height, skip_system_fonts=True)
    except (ValueError, RuntimeError) as err:
        raise TTDError(f"cannot render {what}: {err}") from None
    with Image.open(io.BytesIO(bytes(png))) as im:
        return np.asarray(im.convert("RGBA"))


def _licence_of(doc: dict, package: dict | None, info: dict | None) -> tuple[dict, dict, str]:
    meta = doc.get("info") or info or {}
    licence = dict(meta.get("license") or {})
    if not licence and package and package.get("license"):
        licence = {"spdx": str(package["license"]), "title": str(package["license"])}
    version = str((package or {}).get("version") or meta.get("version") or "")
    return licence, dict(meta.get("author") or {}), version


def _icon_set(doc, origin: str, package: dict | None = None, info: dict | None = None) -> IconSet | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("prefix"), str) or not isinstance(doc.get("icons"), dict):
        return None
    licence, author, version = _licence_of(doc, package, info)
    return IconSet(
        prefix=doc["prefix"],
        icons=doc["icons"],
        aliases=doc.get("aliases") or {},
        width=float(doc.get("width", 16)),
        height=float(doc.get("height", 16)),
        licence=licence,
        author=author,
        version=version,
        origin=origin,
    )


def _read_json_bytes(data: bytes, origin: str):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TTDError(f"emoji source {origin} is not valid JSON ({err}); fetch it again with npm pack") from None


def _from_archive(path: Path, wanted: set[str] | None) -> IconSet | None:
    """An ``npm pack`` archive: ``package/icons.json`` beside ``package/info.json`` and ``package.json``."""
    name = path.name.removeprefix("iconify-json-").rsplit("-", 1)[0]  # iconify-json-noto-v1-1.2.5.tgz → noto-v1
    if wanted is not None and name not in wanted:
        return None
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            if "icons.json" not in members:
                return None

            def read(member: str):
                return _read_json_bytes(tar.extractfile(members[member]).read(), f"{path}:{member}") if member in members else None

            return _icon_set(read("icons.json"), str(path), read("package.json"), read("info.json"))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise TTDError(f"emoji source {path} is not a readable npm archive ({err}); fetch it again with npm pack") from None


def _from_json(path: Path) -> IconSet | None:
    doc = _read_json_bytes(path.read_bytes(), str(path))
    siblings = [path.parent / n for n in ("package.json", "info.json")]
    package, info = (_read_json_bytes(p.read_bytes(), str(p)) if p.is_file() else None for p in siblings)
    return _icon_set(doc, str(path), package, info)


def find_icon_sets(folder: str | Path, wanted: set[str] | None = None) -> dict[str, IconSet]:
    """Every iconify set under ``folder`` (``*.tgz`` from ``npm pack``, or ``icons.json`` / ``NAME.json``
    files, unpacked), by prefix; ``wanted`` restricts which are read (the big sets are slow to parse)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TTDError(f"emoji folder not found: {folder}; {NPM_HINT}")
    sets: dict[str, IconSet] = {}
    candidates = sorted(folder.rglob("*.tgz")) + sorted(folder.rglob("*.json"))
    for path in candidates:
        if path.suffix == ".json":
            if path.name in ("package.json", "info.json", "chars.json", "metadata.json"):
                continue
            found = _from_json(path)
        else:
            found = _from_archive(path, wanted)
        if found is not None and found.prefix not in sets and (wanted is None or found.prefix in wanted):
            sets[found.prefix] = found
    return sets
