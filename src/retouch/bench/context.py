"""What every paper table shares: the models folder, loaded lazily, the world, the cache and the run size."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from retouch.bench.harness import RowCache


@dataclass
class Run:
    """One run of ``retouch bench paper``.

    ``scenes`` is the length of each table's fixed scene list (the first ``scenes`` held-out scenes that
    fit the table, never picked), ``steps`` the sampler steps of every system, ``quick`` marks a smoke
    run. Models are loaded only when a row has to be computed, so a fully cached run loads only the backbone
    (PIXELS Fig. 1 is drawn on every run).
    """

    models: Path
    cache: RowCache
    docs: Path
    scenes: int = 100
    steps: int = 50
    seed: int = 0
    quick: bool = False
    batch: int = 25
    log: object = print
    command: str = "retouch bench paper"
    trained: Path = Path("out")  #: where trained, unshipped models live (bench.portrait, bench.distill)
    extra_settings: dict = field(default_factory=dict)

    def model_files(self, *names: str) -> dict[str, Path]:
        return {name: self.models / name for name in names}

    @cached_property
    def backbone(self):
        from retouch.backbone import load_backbone

        return load_backbone(str(self.models / "backbone"))

    @cached_property
    def judge(self):
        from retouch.metrics import TransformersCLIPJudge

        return TransformersCLIPJudge(self.models / "judge")

    @cached_property
    def structure(self):
        from retouch.metrics.structure import TransformersViTSpatial

        return TransformersViTSpatial(self.models / "judge")

    @cached_property
    def probes(self):
        from retouch.world.probe import load_probes

        return load_probes(self.models / "probes")

    @cached_property
    def world(self):
        from retouch.world import World

        return World(seed=self.seed, size=64)
