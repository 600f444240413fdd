"""The compositing benchmark of the multi-task paper (§4.1, "Datasets"), built from any images, offline.

Every sample is one square crop with its single-task targets (the paper's five tasks):

* ``blur`` — motion blur of degree β ∈ [0.1, 1] at a random angle;
* ``grain_010`` … ``grain_100`` — film grain (Newson et al. 2017) at the paper's five radii
  {0.010, 0.025, 0.050, 0.075, 0.100};
* ``colour`` — Reinhard colour transfer towards another crop of the *same split*, the reference
  (its key is in the parameters, its pixels are stored as ``reference``);
* ``mask`` — a free-form inpainting mask (Yu et al. 2019; the task's input is the crop times 1 − M and
  its target is the crop itself);
* ``sharpen`` — unsharp masking with amount λ ∈ [1, 3] and threshold μ ∈ [0, 0.1];

and, on the ``test`` and ``photos`` splits, the multi-task targets of the paper's Table 3 plus one
more, made with :func:`retouch.effects.apply_effects` (its fixed order: blur → colour → sharpen →
grain) and the sample's own parameters at one of the five grain radii: ``blur+grain``,
``grain+colour``, ``blur+grain+colour``, ``grain+colour+sharpen``.

With ``train_combinations`` K > 0 (not in the paper, which trains on single tasks only), each ``train``
crop also gets K multi-task targets ``combo0`` … ``combo{K-1}``: a random subset of two or three of the
five tasks each (:data:`COMBINATIONS`), made the same way, the inpainting hole left out of the target as
in the single task (the model's input is masked at training time). Which tasks and grain radius each
uses is in the sample's parameters (``combinations``). K = 0 writes the same shards as before.

Sources: a folder of the user's images (random crops), mini-world scenes (their own train/val/test
split) and dead-leaves images (natural-image statistics), and scikit-image's photographs, which
form a split of their own (``photos``) that no model trains on: the unseen distribution.

Storage streams: per split, tar shards of PNG records ``{key}.{name}.png`` plus ``{key}.json`` (the
sample's parameters), in key order; ``manifest.jsonl`` lists every sample with its shard and
parameters, and ``dataset.json`` (written last) the build config and counts. The whole folder is
built under a temporary name and renamed when complete, so an interrupted build leaves nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from retouch.effects import (
    GRAIN_RADII,
    EffectsRecipe,
    apply_effects,
    film_grain,
    free_form_mask,
    motion_blur,
    reinhard_color_transfer,
    unsharp_mask,
)
from retouch.errors import RetouchError
from retouch.imageio import image_from_png_bytes, load_image, png_bytes, resize_image
from retouch.options import check_options, option

SPLITS = ("train", "val", "test", "photos")
GRAIN_NAMES = {radius: f"grain_{round(radius * 1000):03d}" for radius in GRAIN_RADII}
MULTI_TASKS = {  # name → the tasks it turns on (Table 3's combinations, and grain+colour+sharpen)
    "blur+grain": ("blur", "grain"),
    "grain+colour": ("grain", "colour"),
    "blur+grain+colour": ("blur", "grain", "colour"),
    "grain+colour+sharpen": ("grain", "colour", "sharpen"),
}
#: Every set of two or three of the five tasks: what ``train_combinations`` draws from (the test split's
#: four combinations are among them; its crops are not).
COMBINATIONS = tuple(tuple(c) for size in (2, 3) for c in itertools.combinations(
    ("blur", "grain", "colour", "inpaint", "sharpen"), size))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat", "coins", "camera")


@dataclass
class CompositingConfig:
    """What ``retouch data compositing`` builds."""

    images: str | None = option(None, "folder of your own images (searched recursively)")
    world_scenes: int = option(400, "mini-world scenes (the world's own split)", at_least=0)
    dead_leaves: int = option(400, "dead-leaves images (hash split)", at_least=0)
    photos: bool = option(True, "scikit-image's photographs as the held-out 'photos' split")
    crop: int = option(64, "side of the square crops in pixels", at_least=16)
    crops_per_image: int = option(4, "random crops per folder image or photograph", at_least=1)
    split: tuple[float, float, float] = option((0.8, 0.1, 0.1), "train, val, test fractions for folder and "
                                                                "dead-leaves images")
    seed: int = 0
    grain_samples: int = option(800, "Monte-Carlo samples per grain pixel (Newson: 800)", at_least=1)
    shard_size: int = option(256, "samples per tar shard", at_least=1)
    workers: int = option(1, "processes rendering targets (the output is the same)", at_least=1)
    train_combinations: int = option(0, "multi-task targets per training crop (random 2–3-task sets; not in "
                                        "the paper, which trains on single tasks)", at_least=0)

    def validate(self) -> None:
        check_options(self)
        if len(self.split) != 3 or min(self.split) < 0 or not abs(sum(self.split) - 1) < 1e-6:
            raise RetouchError(f"--split takes three non-negative fractions summing to 1; got {self.split}")
        if self.images is not None and not Path(self.images).is_dir():
            raise RetouchError(f"--images: no folder '{self.images}'")


@dataclass
class Crop:
    key: str
    split: str
    origin: str
    image: np.ndarray  # (crop, crop, 3) float32 in [0, 1], on the 8-bit grid

    def __post_init__(self):
        # The stored source PNG must be exactly the image the targets were made from (the sharpening
        # threshold, for one, flips on sub-8-bit differences), so crops are quantized up front.
        self.image = (np.round(np.clip(self.image, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sources and splits
# ---------------------------------------------------------------------------------------------
def hash_split(name: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """train/val/test for an image by a stable hash of its name: adding images never moves others."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def random_crops(image: np.ndarray, side: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` random square crops; an image smaller than ``side`` is first scaled up to it."""
    height, width = image.shape[:2]
    if min(height, width) < side:
        scale = side / min(height, width)
        image = resize_image(image, (max(side, round(width * scale)), max(side, round(height * scale))))
        height, width = image.shape[:2]
    crops = []
    for _ in range(count):
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crops.append(np.ascontiguousarray(image[top:top + side, left:left + side], np.float32))
    return crops


def collect_crops(config: CompositingConfig) -> list[Crop]:
    """Every crop of the build with its split, in a deterministic order."""
    from retouch.data.dead_leaves import dead_leaves
    from retouch.world import World

    crops: list[Crop] = []
    rng = np.random.default_rng([config.seed, 0xC0])
    if config.images is not None:
        folder = Path(config.images)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise RetouchError(f"--images: no PNG, JPEG or WebP files under '{folder}'")
        for path in files:
            name = path.relative_to(folder).as_posix()
            split = hash_split(name, config.seed, config.split)
            for k, crop in enumerate(random_crops(load_image(path), config.crop, config.crops_per_image, rng)):
                crops.append(Crop(f"folder-{len(crops):06d}", split, f"folder:{name}#{k}", crop))
    if config.world_scenes:
        world = World(seed=config.seed, size=config.crop)
        for index in range(config.world_scenes):
            _, rendered, _ = world.scene(index)
            crops.append(Crop(f"world-{index:06d}", world.split(index), f"world:{index}", rendered.image))
    for index in range(config.dead_leaves):
        image = dead_leaves(config.crop, seed=config.seed * 1_000_003 + index)
        crops.append(Crop(f"leaves-{index:06d}", hash_split(f"leaves:{index}", config.seed, config.split),
                          f"dead-leaves:{index}", image))
    if config.photos:
        from skimage import data

        for name in PHOTOS:
            photo = getattr(data, name)()
            photo = np.repeat(photo[..., None], 3, axis=-1) if photo.ndim == 2 else photo[..., :3]
            for k, crop in enumerate(random_crops(photo.astype(np.float32) / 255.0, config.crop,
                                                  config.crops_per_image, rng)):
                crops.append(Crop(f"photo-{name}-{k}", "photos", f"skimage:{name}#{k}", crop))
    return crops


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------
def sample_parameters(key: str, split_keys: list[str], config: CompositingConfig) -> dict:
    """The random effect parameters of one crop (a pure function of the seed, its key and its split's keys).

    The colour reference is another crop of the same split (the paper: "another sharp image randomly
    selected from the training set"), or the crop itself in a split of one.
    """
    rng = np.random.default_rng([config.seed, int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)])
    pick = int(rng.integers(0, max(1, len(split_keys) - 1)))
    others = [k for k in split_keys if k != key]
    return {
        "blur": round(float(rng.uniform(0.1, 1.0)), 4),
        "blur_angle": round(float(rng.uniform(0.0, 180.0)), 2),
        "grain_seed": int(rng.integers(0, 2**31 - 1)),
        "reference": others[pick] if others else key,
        "mask_seed": int(rng.integers(0, 2**31 - 1)),
        "sharpen": [round(float(rng.uniform(1.0, 3.0)), 4), round(float(rng.uniform(0.0, 0.1)), 4)],
        "multi_grain": float(GRAIN_RADII[int(rng.integers(0, len(GRAIN_RADII)))]),
    }


def sample_combinations(key: str, count: int, seed: int) -> list[dict]:
    """``count`` random task sets of :data:`COMBINATIONS` for one training crop, each with its grain radius
    (a stream of its own, so the crop's other parameters are those of a build without combinations)."""
    rng = np.random.default_rng([seed, int(hashlib.sha256(f"{key}:combinations".encode()).hexdigest()[:12], 16)])
    return [{"tasks": list(COMBINATIONS[int(rng.integers(0, len(COMBINATIONS)))]),
             "grain": float(GRAIN_RADII[int(rng.integers(0, len(GRAIN_RADII)))])} for _ in range(count)]


def combination_recipe(params: dict, tasks, grain: float | None, reference: np.ndarray | None) -> EffectsRecipe:
    """The effects of a set of tasks with one crop's parameters (inpainting adds no effect: its target is the
    crop, its input the masked crop)."""
    return EffectsRecipe(blur=params["blur"] if "blur" in tasks else None, blur_angle=params["blur_angle"],
                         grain=grain if "grain" in tasks else None,
                         reference=reference if "colour" in tasks else None,
                         sharpen=tuple(params["sharpen"]) if "sharpen" in tasks else None, seed=params["grain_seed"])


def render_targets(image: np.ndarray, reference: np.ndarray, params: dict, *, multi: bool,
                   grain_samples: int) -> dict[str, np.ndarray]:
    """The source, its single-task targets and (when ``multi``) the multi-task targets."""
    side = image.shape[0]
    grain = dict(seed=params["grain_seed"], n_samples=grain_samples)
    out = {"source": image, "reference": reference,
           "blur": motion_blur(image, params["blur"], angle=params["blur_angle"]),
           "colour": reinhard_color_transfer(image, reference),
           "mask": free_form_mask(side, side, seed=params["mask_seed"]).astype(np.float32),
           "sharpen": unsharp_mask(image, *params["sharpen"])}
    for radius, name in GRAIN_NAMES.items():
        out[name] = film_grain(image, radius, **grain)
    combinations = {name: (tasks, params["multi_grain"]) for name, tasks in MULTI_TASKS.items()} if multi else {}
    combinations.update({f"combo{k}": (c["tasks"], c["grain"]) for k, c in enumerate(params.get("combinations", ()))})
    for name, (tasks, radius) in combinations.items():
        out[name] = apply_effects(image, combination_recipe(params, tasks, radius, reference), grain_samples=grain_samples)
    return {name: np.clip(np.asarray(value, np.float32), 0.0, 1.0) for name, value in out.items()}


# ---------------------------------------------------------------------------------------------
# Build and read
# ---------------------------------------------------------------------------------------------
def build_compositing_dataset(config: CompositingConfig, output: Path, progress=None) -> dict:
    """Build the dataset into ``output`` (which must not exist, or be an empty folder); returns the summary."""
    config.validate()
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise RetouchError(f"'{output}' already exists and is not an empty folder; choose a new output folder")
    parent = output.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RetouchError(f"cannot write the dataset: folder '{parent}' does not exist or is not writable")
    crops = collect_crops(config)
    by_split = {split: [c for c in crops if c.split == split] for split in SPLITS}
    images = {c.key: c.image for c in crops}
    jobs = []  # (split, shard, crop, params) in storage order
    for split, members in by_split.items():
        keys = [c.key for c in members]
        for index, crop in enumerate(members):
            params = sample_parameters(crop.key, keys, config)
            if split == "train" and config.train_combinations:
                params["combinations"] = sample_combinations(crop.key, config.train_combinations, config.seed)
            jobs.append((split, f"{split}-{index // config.shard_size:05d}.tar", crop, params))
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=parent))
    pool = None
    try:
        renders = ((crop.image, images[params["reference"]], params, split in ("test", "photos"),
                    config.grain_samples) for split, _, crop, params in jobs)
        # Film grain's compiled loops thread over strips of 64 columns, so a 64² crop keeps one thread per
        # channel, and the other effects are GIL-bound numpy: processes, not threads, fill the cores.
        if config.workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(config.workers)
            rendered = pool.map(_render_job, renders, chunksize=4)
        else:
            rendered = map(_render_job, renders)
        manifest, archive, open_shard = [], None, None
        for done, ((split, shard, crop, params), targets) in enumerate(zip(jobs, rendered), start=1):
            if shard != open_shard:
                if archive is not None:
                    archive.close()
                archive, open_shard = tarfile.open(staging / shard, "w"), shard
            record = {"key": crop.key, "split": split, "shard": shard, "origin": crop.origin,
                      "params": params, "images": sorted(targets)}
            _add(archive, f"{crop.key}.json", json.dumps(record).encode())
            for name, target in targets.items():
                _add(archive, f"{crop.key}.{name}.png", png_bytes(target))
            manifest.append(record)
            if progress is not None:
                progress(done, len(crops))
        if archive is not None:
            archive.close()
        counts = {split: len(members) for split, members in by_split.items()}
        (staging / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest))
        summary = {"config": asdict(config), "counts": counts, "grain_radii": list(GRAIN_RADII),
                   "multi_tasks": list(MULTI_TASKS), "format": "tar shards of {key}.{name}.png + {key}.json"}
        (staging / "dataset.json").write_text(json.dumps(summary, indent=2))
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
    except BaseException:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if pool is not None:
        pool.shutdown()
    return summary


def _render_job(job) -> dict[str, np.ndarray]:
    image, reference, params, multi, grain_samples = job
    return render_targets(image, reference, params, multi=multi, grain_samples=grain_samples)


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


@dataclass
class CompositingSample:
    key: str
    split: str
    params: dict
    images: dict[str, np.ndarray]  # name → (H, W, 3) float32, "mask" (H, W)


def read_summary(folder: Path) -> dict:
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise RetouchError(f"'{folder}' is not a compositing dataset (no dataset.json); build one with "
                           "`retouch data compositing`")
    return json.loads(path.read_text())


def iter_compositing(folder: Path, split: str) -> Iterator[CompositingSample]:
    """Stream one split's samples shard by shard, in build order (one sample in memory at a time)."""
    folder = Path(folder)
    read_summary(folder)
    if split not in SPLITS:
        raise RetouchError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    for shard in sorted(folder.glob(f"{split}-*.tar")):
        with tarfile.open(shard, "r") as archive:
            record, images = None, {}
            for member in archive:
                payload = archive.extractfile(member).read()
                key, _, rest = member.name.partition(".")
                if rest == "json":
                    if record is not None:
                        yield CompositingSample(record["key"], split, record["params"], images)
                    record, images = json.loads(payload), {}
                else:
                    images[rest.removesuffix(".png")] = image_from_png_bytes(payload, f"{shard.name}:{member.name}")
            if record is not None:
                yield CompositingSample(record["key"], split, record["params"], images)
