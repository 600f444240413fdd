"""Networks that an editing method runs and a trainer trains: the multitask model and the portrait MCDM.

They sit below :mod:`retouch.methods` (inference) and :mod:`retouch.train` (losses, training loops),
which both import them; nothing here imports either. Their saved folders name no module path
(``multitask.json``, ``portrait.json`` hold specs only), so where this code lives never reaches a file.
"""

from __future__ import annotations

import json
from pathlib import Path

from retouch.errors import RetouchError


def read_model_json(folder: Path, filename: str, kind: str) -> dict:
    """The ``filename`` (``multitask.json``, ``portrait.json``) of a saved ``kind`` model folder, parsed."""
    path = Path(folder) / filename
    if not path.is_file():
        raise RetouchError(f"'{folder}' is not a {kind} model folder (no {filename})")
    return json.loads(path.read_text())
