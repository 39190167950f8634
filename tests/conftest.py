import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from ttd.models import CLIPConfig, create_model  # noqa: E402

torch.set_num_threads(1)

TINY = CLIPConfig(
    embed_dim=32,
    image_size=32,
    patch_size=8,
    vision_width=64,
    vision_layers=2,
    vision_heads=2,
    text_width=64,
    text_layers=2,
    text_heads=2,
)


@pytest.fixture
def tiny_config() -> CLIPConfig:
    return TINY


@pytest.fixture
def tiny_model():
    """A factory of tiny random dense models in eval mode (deterministic per seed)."""

    def make(dense: str = "maskclip", seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return create_model(TINY, dense=dense, **overrides).eval()

    return make
