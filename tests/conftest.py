import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub

from retouch._quiet import quiet_third_party  # noqa: E402

quiet_third_party()
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_backbones():
    """Built once per session: the tiny seeded backbones are deterministic and read-only in tests."""
    from retouch.backbone import TINY_NAMES, build_tiny

    return {name: build_tiny(name) for name in TINY_NAMES}
