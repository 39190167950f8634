"""The trainer's checkpoint files: one step folder written whole or not at all, RNG states, seeds.

``OUT/checkpoints/step_XXXXXXXX/`` holds ``trainer.pt`` (trainable parameters, optimiser,
scheduler, configuration; main process), ``rankR.pt`` per process (RNG states, data position,
log interval), ``config.yaml`` and the adapter. It is written as ``step_XXXXXXXX.tmp`` and
renamed, so a crash never leaves a half checkpoint that ``resume`` would read.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import TTDError
from .io import atomic_write_bytes

__all__ = [
    "CHECKPOINTS",
    "step_dir",
    "latest_checkpoint",
    "complete_checkpoints",
    "publish_checkpoint",
    "rng_state",
    "set_rng_state",
    "seed_everything",
    "save_torch",
    "load_torch",
]

CHECKPOINTS = "checkpoints"


def step_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step_{step:08d}"


def complete_checkpoints(out: str | os.PathLike) -> list[Path]:
    """The complete checkpoint folders under ``out``, newest first (resume falls back along it)."""
    root = Path(out) / CHECKPOINTS
    return sorted((p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")), reverse=True)


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``out`` (None when there is none)."""
    done = complete_checkpoints(out)
    return done[0] if done else None


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_torch(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch(path: Path):
    if not path.is_file():
        raise TTDError(f"checkpoint file missing: {path} (was the run written by a different number of processes?)")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TTDError(f"checkpoint file {path} holds objects other than tensors (refused, nothing run)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = str(err).strip().split(".")[0] or type(err).__name__
        raise TTDError(f"checkpoint file {path} is damaged ({reason[:120]})") from None


def publish_checkpoint(tmp: Path, final: Path, keep: int) -> None:
    """Rename the written ``tmp`` folder to ``final``, then keep only the newest ``keep`` ones."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    done = sorted(p for p in final.parent.glob("step_*") if not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
