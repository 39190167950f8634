"""Replays the hostile inputs and faults of issue 14 through the ``ttd`` CLI, in subprocesses.

Each case asserts its exit code (0 success, 1 failure, 2 usage error), at most one line on stderr
for an error, never a traceback, and that the inputs are unchanged. To stay fast, one subprocess
runs many cases (``helpers.replay``: ``ttd.cli.main`` per case, with optional fault seams); the
inputs are conftest's ``world``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from helpers import check_cases, digest, replay

def test_bad_inputs_give_one_line_and_the_right_exit_code(world, tmp_path):
    w, root = world, world["root"]
    before = digest(root)
    model = ["--model", w["weights"]]
    seg = ["segment", w["image"], *model, "--out", str(tmp_path / "o.png")]
    train = ["train", "--data", w["pairs"], *model, "--steps", "2", "--batch-size", "2", "--image-size", "32",
             "--workers", "0", "--no-progress", "--no-tensorboard", "--log-every", "1"]
    evalseg = ["eval", "seg", "--dataset", "generic", "--root", w["seg"], *model, "--figures", "0", "--no-cache"]
    many = ",".join(f"class{k}" for k in range(40))  # 289 characters: never tried as a path
    dup = tmp_path / "dup"
    (dup / "images").mkdir(parents=True)
    (dup / "masks").mkdir()
    (dup / "classes.txt").write_text("background\ncat\n")
    for name in ("x.jpg", "x.png"):
        Image.new("RGB", (8, 8)).save(dup / "images" / name)
    Image.new("L", (8, 8)).save(dup / "masks" / "x.png")
    cases = [
        dict(argv=[*seg, "--classes", many], rc=0, why="long comma list"),
        dict(argv=["data", "miniworld", "--out", str(tmp_path / "w"), "--size", "x"], rc=2, why="usage error",
             says="invalid int value: 'x' (see ttd data miniworld --help)"),
        dict(argv=["train", "--bogus"], rc=2, why="unknown flag", says="unrecognized arguments: --bogus"),
        dict(argv=[*seg, "--classes", ""], rc=2, why="empty classes", says="names no class"),
        dict(argv=[*seg, "--classes", ","], rc=2, why="only a comma", says="names no class"),
        dict(argv=[*seg, "--text", ""], rc=2, why="empty text", says="--text is empty"),
        dict(argv=[*seg, "--classes", "nofile.txt"], rc=2, why="missing classes file", says="not found"),
        dict(argv=[*seg[:-1], str(tmp_path), "--classes", "cat"], rc=2, why="--out a folder", says="is a folder"),
        dict(argv=[*seg[:-1], str(tmp_path / "o.txt"), "--classes", "cat"], rc=2, why="--out .txt"),
        dict(argv=["segment", str(root / "pixel.png"), *seg[2:], "--classes", "cat"], rc=0, why="a 1×1 image"),
        dict(argv=["segment", w["seg"], *seg[2:], "--classes", "cat"], rc=2, why="a folder as image", says="is a folder"),
        dict(argv=[*seg, "--classes", "cat", "--device", "tpu"], rc=2, why="unknown device", says="unknown device"),
        dict(argv=[*seg, "--classes", "cat", "--device", "cuda:99"], rc=2, why="absent device", says="not available"),
        dict(argv=[*seg, "--classes", "cat", "--adapter", str(root / "nan.safetensors")], rc=2, why="NaN adapter",
             says="NaN"),
        dict(argv=[*seg, "--classes", "cat", "--adapter", str(root / "badmeta.safetensors")], rc=2,
             why="adapter metadata not JSON", says="not a ttd adapter"),
        dict(argv=["segment", w["image"], "--model", str(root / "broken.pt"), "--classes", "cat"], rc=2,
             why="malformed TorchScript"),
        dict(argv=[*evalseg, "--out", str(tmp_path / "e1"), "--limit", "-1"], rc=2, why="negative limit"),
        dict(argv=[*evalseg, "--out", str(tmp_path / "e1"), "--workers", "-1"], rc=2, why="negative workers"),
        dict(argv=["eval", "caption", "--data", w["pairs"], "--out", str(tmp_path / "c"), "--threshold", "1.5"], rc=2,
             why="threshold above 1"),
        dict(argv=["quickstart", "--tau", "5", "--out", str(tmp_path / "q")], rc=2, why="tau above 1"),
        dict(argv=[*train, "--out", str(tmp_path / "t1"), "--image-size", "7"], rc=2, why="image below a patch"),
        dict(argv=[*train, "--out", str(tmp_path / "t2"), "--beta1", "1.5"], rc=2, why="beta1 above 1"),
        dict(argv=["data", "prune", "--data", w["pairs"], "--out", str(tmp_path / "p.jsonl"), *model, "--image-size", "0"],
             rc=2, why="image size 0"),
        dict(argv=[*train[:2], str(root / "latin1.jsonl"), *train[3:], "--out", str(tmp_path / "t3")], rc=2,
             why="non-UTF-8 manifest", says="UTF-8"),
        dict(argv=[*evalseg[:5], str(dup), *evalseg[6:], "--out", str(tmp_path / "e2")], rc=2,
             why="a.jpg and a.png", says="share the mask"),
        dict(argv=[*train, "--out", str(tmp_path / "nan"), "--lr", "10000", "--grad-clip", "0", "--steps", "6",
                   "--warmup-steps", "0"], rc=1, why="diverging run", says="diverged"),
        dict(argv=[*train[:2], w["unreadable"], *train[3:], "--out", str(tmp_path / "t4")], rc=1,
             why="every image unreadable", says="no readable sample"),
        dict(argv=["data", "prune", "--data", w["unreadable"], "--out", str(tmp_path / "p2.jsonl"), *model, "--image-size",
                   "32", "--workers", "0"], rc=1, why="prune: every image unreadable", says="no readable pairs"),
        dict(argv=[*train, "--out", str(tmp_path / "full")], rc=1, why="disk full in train", seam="enospc",
             says="No space left on device"),
        dict(argv=[*seg, "--classes", "cat"], rc=1, why="disk full in segment", seam="enospc", says="No space"),
        dict(argv=[*evalseg, "--out", str(tmp_path / "e3"), "--limit", "1"], rc=1, why="disk full in eval seg",
             seam="enospc"),
        dict(argv=[*evalseg, "--out", str(tmp_path / "e4")], rc=0, why="generic set with .PNG"),
    ]
    results = replay(tmp_path, cases)
    check_cases(cases, results)
    assert digest(root) == before  # no input was touched
    assert not (tmp_path / "nan" / "adapter.safetensors").exists()
    for line in (tmp_path / "nan" / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    result = json.loads((tmp_path / "e4" / "results.json").read_text())
    assert result["images"] == 3  # b.PNG counted
    assert (tmp_path / "e4" / "results.json").stat().st_mode & 0o777 == 0o644  # the umask, not 0600


def _run_for(tmp: Path, w: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", w["pairs"], "--model", w["weights"], "--steps", "4", "--batch-size", "2",
            "--image-size", "32", "--workers", "0", "--no-progress", "--no-tensorboard", "--save-every", "1",
            "--log-every", "1", "--keep-checkpoints", "3", "--out", str(out), *extra]


def test_runs_are_never_lost(world, tmp_path):
    """Locks, resume after damage, keyed prune scores, the long-caption warning, stale temporaries."""
    w = world
    live = tmp_path / "live"
    live.mkdir()
    (live / ".ttd.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "train"}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / ".ttd.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    hurt = tmp_path / "hurt"
    lines = Path(w["pairs"]).read_text().splitlines()
    reordered = tmp_path / "reordered.jsonl"
    reordered.write_text("\n".join(reversed(lines)) + "\n")
    shorter = tmp_path / "shorter.jsonl"
    shorter.write_text("\n".join(lines[:2]) + "\n")
    for path in (reordered, shorter):  # the manifests name images relative to their own folder
        path.write_text(path.read_text().replace('"images/', f'"{Path(w["pairs"]).parent}/images/'))
    prune = ["data", "prune", "--model", w["weights"], "--image-size", "32", "--workers", "0", "--out",
             str(tmp_path / "kept.jsonl")]
    evalout = tmp_path / "ev"
    evalout.mkdir()
    (evalout / ".results.json.abc123.tmp").write_text("left by a kill -9")
    long = " ".join(["a red square on a blue background"] * 12)
    cases = [
        dict(argv=_run_for(tmp_path, w, live), rc=2, why="a live writer", says=f"pid {os.getpid()}"),
        dict(argv=_run_for(tmp_path, w, stale), rc=0, why="a stale lock"),
        dict(argv=_run_for(tmp_path, w, hurt, "--stop-after", "3"), rc=0, why="first part"),
        dict(argv=[*prune, "--data", w["pairs"]], rc=0, why="prune"),
        dict(argv=[*prune, "--data", str(reordered)], rc=0, why="prune a reordered manifest", says="rescoring"),
        dict(argv=[*prune, "--data", str(shorter)], rc=0, why="prune a shorter manifest", says="rescoring"),
        dict(argv=["eval", "seg", "--dataset", "generic", "--root", w["seg"], "--model", w["weights"], "--figures", "0",
                   "--out", str(evalout)], rc=0, why="stale temporary"),
        dict(argv=["tags", w["image"], long, "--model", w["weights"]], rc=0, why="a caption over 77 tokens",
             says="cut"),
    ]
    results = replay(tmp_path, cases)
    check_cases(cases, results)
    assert "taking over the stale lock" in results[1]["err"] and not (stale / ".ttd.lock").exists()
    assert not (evalout / ".results.json.abc123.tmp").exists()
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == 1  # half of the shorter manifest, scored afresh

    newest = hurt / "checkpoints" / "step_00000003"
    (newest / "trainer.pt").write_bytes((newest / "trainer.pt").read_bytes()[:200])  # truncated
    with open(hurt / "log.jsonl", "a") as log:
        log.write('{"step": 4, "lo')  # torn
    only = tmp_path / "only"
    cases = [
        dict(argv=_run_for(tmp_path, w, hurt, "--resume"), rc=0, why="resume after damage", says="step_00000002"),
        dict(argv=_run_for(tmp_path, w, only, "--stop-after", "1"), rc=0, why="one checkpoint"),
    ]
    results = replay(tmp_path, cases)
    check_cases(cases, results)
    assert (hurt / "adapter.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (hurt / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (only / "checkpoints" / "step_00000001" / "trainer.pt").write_bytes(pickle.dumps(Evil()))
    cases = [dict(argv=_run_for(tmp_path, w, only, "--resume"), rc=1, why="a malicious trainer.pt",
                  says="no intact checkpoint")]
    check_cases(cases, replay(tmp_path, cases))
    assert not (tmp_path / "pwned").exists()
