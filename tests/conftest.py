import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import TINY, tiny_model as _tiny_model  # noqa: E402
from ttd.models import CLIPConfig  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> CLIPConfig:
    return TINY


@pytest.fixture
def tiny_model():
    """A factory of tiny random dense models in eval mode (deterministic per seed)."""
    return _tiny_model
