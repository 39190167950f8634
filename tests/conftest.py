import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from helpers import TINY, make_pairs, write_manifest, tiny_model as _tiny_model  # noqa: E402
from ttd.models import CLIPConfig, load_model  # noqa: E402
from ttd.models.lora import LoRAConfig, base_fingerprint, inject_lora, save_adapter, set_trainable  # noqa: E402
from ttd.models.weights import save_weights  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> CLIPConfig:
    return TINY


@pytest.fixture
def tiny_model():
    """A factory of tiny random dense models in eval mode (deterministic per seed)."""
    return _tiny_model


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict:
    """The inputs every case reads: tiny weights, an adapter, image-text pairs, a segmentation set."""
    root = tmp_path_factory.mktemp("inputs")
    weights = save_weights(_tiny_model(), root / "tiny.safetensors")
    model = load_model(str(weights), dense="maskclip")
    model.base_fingerprint = base_fingerprint(model)
    inject_lora(model, LoRAConfig(rank=2))
    set_trainable(model, "lora")
    adapter = save_adapter(model, root / "adapter")
    tensors = load_file(str(adapter))
    meta = {"ttd": json.dumps(json.loads((root / "adapter" / "adapter.json").read_text()))}
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(root / "nan.safetensors"), metadata=meta)
    save_file(tensors, str(root / "badmeta.safetensors"), metadata={"ttd": "{not json"})
    pairs = write_manifest(root / "pairs", make_pairs(6))
    unreadable = write_manifest(root / "unreadable", make_pairs(4), corrupt=(0, 1, 2, 3))
    (root / "latin1.jsonl").write_bytes('{"image": "a.jpg", "caption": "caf\xe9"}\n'.encode("latin-1"))
    with zipfile.ZipFile(root / "broken.pt", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02K\x05.")  # a pickled int, not a module
    seg = root / "seg"
    for name in ("images", "masks"):
        (seg / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, suffix in (("a", ".jpg"), ("b", ".PNG"), ("c", ".png")):
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(seg / "images" / f"{stem}{suffix}")
        Image.fromarray(rng.integers(0, 3, (32, 40), dtype=np.uint8)).save(seg / "masks" / f"{stem}.png")
    (seg / "classes.txt").write_text("background\ncat\ndog\n")
    image = seg / "images" / "a.jpg"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "pixel.png")
    return {"root": root, "weights": str(weights), "adapter": str(adapter), "pairs": str(pairs),
            "unreadable": str(unreadable), "seg": str(seg), "image": str(image)}
