"""The tests' one helper module: the tiny CLIP shape, tiny random models, image-text pairs, manifests, shards,
and the driver that replays many CLI cases in one subprocess (``replay``, ``check_cases``)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ttd
from ttd.models.clip import CLIPConfig

torch.set_num_threads(1)  # 2 shared cores: extra threads only contend

TINY = CLIPConfig(
    embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=2,
    text_width=64, text_layers=2, text_heads=2,
)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "stripe", "dot")


def tiny_model(dense: str = "maskclip", seed: int = 0, **overrides):
    """A tiny random dense model in eval mode, the same weights for the same seed."""
    torch.manual_seed(seed)
    return ttd.create_model(TINY, dense=dense, **overrides).eval()


def make_pairs(n: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """``n`` small JPEGs (a coloured shape on a coloured ground) with a caption naming both."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        fg, bg = rng.sample(sorted(COLOURS), 2)
        shape = rng.choice(SHAPES)
        arr = np.zeros((40, 48, 3), np.uint8) + np.array(COLOURS[bg], np.uint8)
        y, x = rng.randrange(0, 20), rng.randrange(0, 24)
        arr[y : y + 16, x : x + (24 if shape == "stripe" else 16)] = COLOURS[fg]
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        pairs.append((buf.getvalue(), f"a {fg} {shape} on a {bg} background."))
    return pairs


def write_manifest(root: Path, pairs, corrupt: tuple[int, ...] = ()) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (jpeg, caption) in enumerate(pairs):
        path = root / "images" / f"{i:04d}.jpg"
        path.write_bytes(jpeg[: len(jpeg) // 3] if i in corrupt else jpeg)
        lines.append(json.dumps({"image": f"images/{i:04d}.jpg", "caption": caption}))
    manifest = root / "pairs.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def write_shards(root: Path, pairs, per_shard: int, corrupt: tuple[int, ...] = (), caption_as: str = "txt") -> Path:
    """img2dataset's layout: ``00000.tar`` … with ``KEY.jpg`` + ``KEY.txt`` (or ``KEY.json``)."""
    root.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(pairs), per_shard):
        with tarfile.open(root / f"{start // per_shard:05d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, len(pairs))):
                jpeg, caption = pairs[i]
                key = f"{i:09d}"
                if i in corrupt:
                    jpeg = b"not a jpeg at all"
                text = caption.encode() if caption_as == "txt" else json.dumps({"caption": caption}).encode()
                for name, data in ((f"{key}.jpg", jpeg), (f"{key}.{caption_as}", text)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


# --- the CLI driver ---------------------------------------------------------------------------------
SRC = Path(__file__).parent.parent / "src"
_PROGRESS = re.compile(r"\[\d+:\d\d")  # a progress bar's elapsed time, e.g. "[00:03, 1.2img/s]"

# Runs each case of argv[1] (JSON) through ttd.cli.main; writes [{rc, err, traceback}] to argv[2].
# A case may set "env" (a variable → its value, or null to unset it) and "seam", a fault:
# "enospc" (a full disk), "readonly" (creating anything under case["readonly"] fails as on a
# read-only mount), "nohome" (no home folder: the user is missing from the password database).
_DRIVER = r"""
import contextlib, errno, io, json, os, sys, traceback
from unittest import mock
from ttd.cli import main

def refuse(code, path="/fake/disk/file"):
    raise OSError(code, os.strerror(code), path)

def enospc(*args, **kwargs):
    refuse(errno.ENOSPC)

def readonly(root):
    real_open, real_mkdir = os.open, os.mkdir
    def guard(path):
        if os.path.abspath(path).startswith(root):
            refuse(errno.EROFS, os.fspath(path))
    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            guard(path)
        return real_open(path, flags, *args, **kwargs)
    def mkdir(path, *args, **kwargs):
        guard(path)
        return real_mkdir(path, *args, **kwargs)
    return [mock.patch("os.open", open_), mock.patch("os.mkdir", mkdir)]

SEAMS = {
    "enospc": lambda case: [mock.patch("tempfile.mkstemp", enospc), mock.patch("PIL.Image.Image.save", enospc)],
    "readonly": lambda case: readonly(case["readonly"]),
    "nohome": lambda case: [mock.patch("pwd.getpwuid", side_effect=KeyError("uid not in the password database"))],
}

@contextlib.contextmanager
def environ(changes):
    with mock.patch.dict(os.environ):
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield

os.umask(0o022)
cases, results = json.load(open(sys.argv[1])), []
for case in cases:
    err, out, tb = io.StringIO(), io.StringIO(), None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(environ(case.get("env", {})))
            for patch in SEAMS[case["seam"]](case) if "seam" in case else []:
                stack.enter_context(patch)
            stack.enter_context(contextlib.redirect_stderr(err))
            stack.enter_context(contextlib.redirect_stdout(out))
            rc = main(case["argv"])
    except SystemExit as exit:
        rc = exit.code
    except BaseException:
        rc, tb = None, traceback.format_exc()
    results.append({"rc": rc, "err": err.getvalue(), "out": out.getvalue(), "traceback": tb})
json.dump(results, open(sys.argv[2], "w"))
"""


def cli_env(tmp: Path, **changes: str | None) -> dict[str, str]:
    """The environment of a ``ttd`` subprocess: this checkout, offline, a text cache in ``tmp``;
    ``changes`` set variables (``None`` unsets one)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "TTD_CACHE": str(tmp / "cache"),
           "OMP_NUM_THREADS": "1", **changes}
    return {k: v for k, v in env.items() if v is not None}


def replay(tmp: Path, cases: list[dict], **env: str | None) -> list[dict]:
    """Each case's exit code, stderr and stdout, from one subprocess (environment :func:`cli_env`)
    that runs them in turn."""
    (tmp / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(tmp / "cases.json"), str(tmp / "results.json")],
                          cwd=tmp, env=cli_env(tmp, **env), capture_output=True, text=True, timeout=1200)  # a guard against hangs on a loaded machine
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp / "results.json").read_text())


def check_cases(cases: list[dict], results: list[dict]) -> None:
    """Every case's exit code, one error line, no traceback; all mismatches reported at once."""
    wrong = []
    for case, got in zip(cases, results, strict=True):
        name = " ".join(case["argv"][:2]) + f" ({case['why']})"
        lines = [line for line in got["err"].replace("\r", "\n").splitlines() if line.strip() and not _PROGRESS.search(line)]
        if got["traceback"] or "Traceback" in got["err"]:
            wrong.append(f"{name}: {got['traceback'] or got['err']}")
        elif got["rc"] != case["rc"]:
            wrong.append(f"{name}: rc {got['rc']}, stderr {got['err']!r}")
        elif case["rc"] != 0 and not (len(lines) == 1 and ": error: " in lines[0]):
            wrong.append(f"{name}: not one error line: {got['err']!r}")
        elif case.get("says", "") not in got["err"]:
            wrong.append(f"{name}: {case['says']!r} not in {got['err']!r}")
    assert not wrong, "\n".join(wrong)


def digest(root: Path) -> dict[str, str]:
    """Every file below ``root`` → a hash of its bytes: inputs must come out of a case unchanged."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
