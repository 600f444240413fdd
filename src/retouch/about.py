"""``retouch info``: versions, compute device, models and methods, cache location."""

from __future__ import annotations

import sys


def environment_report() -> str:
    """The lines ``retouch info`` prints."""
    import diffusers
    import torch
    import transformers
    from huggingface_hub import constants

    from retouch import __version__
    from retouch.backbone import MINI_NAME, TINY_NAMES
    from retouch.methods import available_methods

    cuda = torch.cuda.is_available()
    lines = [
        f"retouch       {__version__}",
        f"python        {sys.version.split()[0]}",
        f"torch         {torch.__version__} ({'CUDA ' + torch.version.cuda if cuda else 'CPU only'})",
        f"diffusers     {diffusers.__version__}",
        f"transformers  {transformers.__version__}",
        f"device        {torch.cuda.get_device_name(0) if cuda else 'cpu'} ({torch.get_num_threads()} CPU threads)",
        f"hub cache     {constants.HF_HUB_CACHE} ({'offline' if constants.HF_HUB_OFFLINE else 'online allowed'})",
        f"models        {MINI_NAME} (shipped, the default), {', '.join(TINY_NAMES)} (random, for tests), any diffusers "
        "folder, .safetensors file or cached repo id",
        "methods       " + ", ".join(sorted(available_methods())),
    ]
    return "\n".join(lines)
