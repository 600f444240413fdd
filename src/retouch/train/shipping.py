"""Copying a trained model into the package's assets, as the default ``--model`` of its method."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable


def ship_folder(save: Callable[[Path], None], trained: Path, destination: Path) -> Path:
    """``save(folder)`` into a staging folder beside ``destination``, then swap it in, so a failed save
    never leaves a half-written default model. The run's ``report.json`` (beside ``trained``, a
    ``…/final`` folder) goes along as ``training_report.json``; a hand-written ``MODEL_CARD.md`` already in
    ``destination`` (provenance and results) survives the reship."""
    trained, destination = Path(trained), Path(destination)
    staging = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    save(staging)
    report = trained.parent / "report.json"
    if report.is_file():
        shutil.copyfile(report, staging / "training_report.json")
    if (destination / "MODEL_CARD.md").is_file():
        shutil.copyfile(destination / "MODEL_CARD.md", staging / "MODEL_CARD.md")
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination
