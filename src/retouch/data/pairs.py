"""Paired-data generation of the portrait paper (MCDM, Chen et al. 2024, §3.2, Eq. 2), on the mini world.

x = [x_A, x_B] ∈ ℝ^{H×2W×3} comes from *one* DDIM denoising of a latent z_T ∈ ℝ^{h×2w×c}: at every step
the noise is Eq. 2, a composable-diffusion mix (Liu et al. 2022) of three classifier-free guided
predictions — the shared prompt p on the whole latent, the source prompt p_a on the left half and the
target prompt p_b on the right half (:func:`pair_noise`). Two optional conditions follow the paper:

* design (2), pose: a ControlNet whose condition image is the same image on both halves (the paper
  uses an OpenPose image; :class:`PairControl`);
* design (3), identity: an image encoder's output as k extra text tokens c_id appended to every
  prompt's context (:class:`PairIdentity`, :class:`JudgeIdentityTokens`).

On the mini world the prompts are a pair's captions (``World.pair``): p = "the same red circle on the
left and right on grass", p_a / p_b the canonical captions of each half, for an edit direction of
:data:`DIRECTIONS`. ``--source renderer`` writes the world's rendered ground-truth pairs instead (the
"oracle" pairs that separate data-generation quality from the editing model).

A filter keeps pairs whose halves agree (:func:`pair_agreement`): the mini judge names the same colour
on both halves and the object's pixel footprints have the same horizontal centre and size. Of rendered
pairs 96–97 % pass, of shuffled ones (left of pair i, right of pair i+1) 1–2 % (see :class:`PairFilter`).

On the shipped mini U-Net (trained on 64² single scenes, never on 64×128 canvases) 3 of 32 generated
hat pairs pass (``retouch data pairs --direction hat --count 32``, seed 0): it paints the prompted
background over both halves but mostly one object, often across the seam, and no visible hat.
Other strengths (s_d, s_a, s_b) = (0.2, 0.8, 0.8) or (0, 1, 1) keep 1 and 2 of the same 32.

Dataset layout (``retouch data pairs``): ``left/{index}.png`` and ``right/{index}.png`` hold the kept
pairs, ``rejected/left|right/`` the filtered-out ones, ``manifest.jsonl`` one row per pair (index,
split, direction, prompts, seeds, strengths, kept, filter scores, image paths) and ``dataset.json``
(written last) the config and the kept fraction. The folder is built under a temporary name and renamed
when complete, so an interrupted build leaves nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from retouch.errors import RetouchError
from retouch.options import check_options, option

#: Edit directions on the mini world: name → (change of the right object, fixed attributes of the left).
DIRECTIONS = {
    "striped": ({"pattern": "striped"}, {"pattern": "plain"}),
    "hat": ({"accessory": "hat"}, {"accessory": "none"}),
}
SOURCES = ("generate", "renderer")
SPLITS = ("train", "val", "test")
DATASET_FORMAT = "retouch-pairs/1"


# ---------------------------------------------------------------------------------------------
# Eq. 2
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairGuidance:
    """The weights of Eq. 2. The paper's main text gives no values ("see supplementary").

    With s_d = s_a = s_b = 0.5 each half's weights sum to 1, so ε̄ stays a mixture of ε̃'s there.
    """

    #: CFG scale of each ε̃ (Eq. 1 with one condition); 5 is the mini model's sampling scale
    guidance_scale: float = 5.0
    shared_strength: float = 0.5  #: s_d, weight of ε̃(z_t, t, {c_p, c_id}) on the whole latent
    source_strength: float = 0.5  #: s_a, weight of ε̃(z_t, t, {c_pa, c_id}) on the left half (M_a = [1, 0])
    target_strength: float = 0.5  #: s_b, weight of ε̃(z_t, t, {c_pb, c_id}) on the right half (M_b = [0, 1])


def pair_noise(denoise: Callable, schedule, latents: torch.Tensor, t: int, conditions: Sequence,
               guidance: PairGuidance = PairGuidance()) -> torch.Tensor:
    """ε̄ of Eq. 2 (portrait paper §3.2) for latents (B, C, h, 2w), as ε whatever the model predicts.

    ε̄ = s_d·ε̃(z_t, t, {c_p, c_id}) + s_a·M_a⊙ε̃(z_t, t, {c_pa, c_id}) + s_b·M_b⊙ε̃(z_t, t, {c_pb, c_id}),
    each ε̃ = ε(∅) + g·(ε(c) − ε(∅)) (Ho & Salimans 2022), M_a = [1, 0] and M_b = [0, 1] over the width.
    ``conditions`` = (null, shared, source, target) conditionings of B rows each (anything with a
    ``cat`` static method, e.g. :class:`retouch.backbone.Conditioning`); the four predictions run as
    one batch of 4B rows through ``denoise(latents, t, conditioning)``.
    """
    from retouch.sampling import classifier_free_guidance, to_epsilon

    null = conditions[0]
    rows = latents.repeat(4, 1, 1, 1)
    output = denoise(rows, t, type(null).cat(list(conditions)))
    eps_null, eps_shared, eps_source, eps_target = to_epsilon(rows, output, schedule.alpha(t),
                                                              schedule.prediction_type).chunk(4)

    def guided(eps):
        return classifier_free_guidance(eps_null, eps, guidance.guidance_scale)

    mask_a = torch.zeros_like(latents[:1, :1])  # (1, 1, h, 2w)
    mask_a[..., : latents.shape[-1] // 2] = 1
    return (guidance.shared_strength * guided(eps_shared)
            + guidance.source_strength * mask_a * guided(eps_source)
            + guidance.target_strength * (1 - mask_a) * guided(eps_target))


# ---------------------------------------------------------------------------------------------
# Plug-ins: pose (ControlNet) and identity (c_id)
# ---------------------------------------------------------------------------------------------
@dataclass
class PairControl:
    """Design (2): a diffusers ``ControlNetModel`` guided by one condition image per pair, on both halves.

    ``image`` (3, H, W) or (B, 3, H, W) in [0, 1] is one half's condition (the paper: an OpenPose image);
    it is placed on the left and on the right, so both halves get the same layout.
    """

    model: Any
    image: torch.Tensor
    scale: float = 1.0  #: ControlNet conditioning scale (diffusers' ``controlnet_conditioning_scale``)


def controlled_denoiser(backbone, control: PairControl, pairs: int) -> Callable:
    """``backbone.denoise`` with the ControlNet's residuals added, for batches of ``k·pairs`` rows."""
    image = control.image if control.image.dim() == 4 else control.image[None]
    image = torch.cat([image, image], dim=-1).expand(pairs, -1, -1, -1)  # (B, 3, H, 2W)
    image = image.to(backbone.device, control.model.dtype)

    def denoise(latents, t, cond):
        condition = image.repeat(latents.shape[0] // pairs, 1, 1, 1)
        down, mid = control.model(latents, t, encoder_hidden_states=cond.hidden_states, controlnet_cond=condition,
                                  conditioning_scale=control.scale,
                                  added_cond_kwargs=backbone.added_conditions(latents, cond), return_dict=False)
        return backbone.denoise(latents, t, cond, residuals=(down, mid))

    return denoise


#: An identity encoder: images (B, 3, H, W) in [0, 1] → c_id tokens (B, k, text width).
IdentityEncoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PairIdentity:
    """Design (3): c_id = ``encoder(images)`` appended to every prompt's tokens (one identity image per pair).

    The null condition of classifier-free guidance gets ``encoder`` of a black image, the paper's ∅
    for an image condition (§3.1).
    """

    encoder: IdentityEncoder
    images: torch.Tensor  # (3, H, W) or (B, 3, H, W) in [0, 1]


class JudgeIdentityTokens:
    """An :data:`IdentityEncoder`: the mini judge's CLIP image embedding through a linear map to k tokens.

    The paper uses an ELITE-style encoder trained on FFHQ (Wei et al. 2023) that turns a face into
    text-token embeddings. This one has the same shape but an UNTRAINED map: a seeded Gaussian
    matrix on the unit-norm image embedding, so each token entry is ≈ N(0, 1) like the layer-normed
    text states. It is a plug-in point (load trained weights into ``projection``), not an identity
    model: its tokens carry the image's information into cross-attention, which a U-Net never trained
    with them does not know how to read.
    """

    def __init__(self, judge, width: int, tokens: int = 4, seed: int = 0):
        self.judge, self.width, self.tokens, self.seed = judge, int(width), int(tokens), int(seed)
        self.projection: torch.Tensor | None = None  # (tokens·width, embedding dim), made on first use

    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        embedding = torch.nn.functional.normalize(self.judge.encode_images(images01).float(), dim=-1)
        if self.projection is None:
            generator = torch.Generator().manual_seed(self.seed)
            self.projection = torch.randn((self.tokens * self.width, embedding.shape[-1]), generator=generator)
        return (embedding.cpu() @ self.projection.T).view(-1, self.tokens, self.width)


def _with_tokens(cond, tokens: torch.Tensor):
    """``cond`` with ``tokens`` (B, k, D) appended after its text tokens."""
    tokens = tokens.to(cond.hidden_states.device, cond.hidden_states.dtype)
    return cond.with_hidden_states(torch.cat([cond.hidden_states, tokens], dim=1))


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_pairs(backbone, prompts: Sequence, *, steps: int = 25, seed: int | Sequence[int] = 0,
                   control: PairControl | None = None, identity: PairIdentity | None = None,
                   guidance: PairGuidance = PairGuidance(), size: int | None = None, prior=None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right) halves (B, 3, H, W) in [0, 1] from one DDIM denoising of (B, C, h, 2w) latents.

    ``prompts``: one per pair, with ``shared``, ``left`` and ``right`` fields (p, p_a, p_b; e.g.
    :class:`retouch.world.PairCaptions`). ``seed``: pair k's z_T is drawn from a generator seeded with
    ``seed + k`` (an int) or ``seed[k]`` (a sequence), so a pair does not depend on its batch.
    ``size`` is H = W (default: the U-Net's native resolution). Deterministic DDIM (η = 0). ``prior``: a
    :class:`retouch.terminal_prior.TerminalPrior`; z_T then carries the channel means the shared prompt p
    implies (both halves share the scene's background), its spread drawn from the same per-pair seed.
    """
    from retouch.sampling import ddim_sample, ddim_timesteps

    count = len(prompts)
    seeds = [seed + k for k in range(count)] if isinstance(seed, int) else [int(s) for s in seed]
    size = size or backbone.unet.config.sample_size * backbone.vae_scale_factor
    side = size // backbone.vae_scale_factor
    latents = torch.stack([torch.randn((backbone.latent_channels, side, 2 * side),
                                       generator=torch.Generator().manual_seed(s)) for s in seeds])
    latents = latents.to(backbone.device, backbone.dtype)
    conditions = [backbone.encode_text([""] * count),
                  *(backbone.encode_text([getattr(p, name) for p in prompts]) for name in ("shared", "left", "right"))]
    if identity is not None:
        images = identity.images if identity.images.dim() == 4 else identity.images[None]
        images = images.expand(count, -1, -1, -1)
        tokens, null_tokens = identity.encoder(images), identity.encoder(torch.zeros_like(images))
        conditions = [_with_tokens(conditions[0], null_tokens)] + [_with_tokens(c, tokens) for c in conditions[1:]]
    denoise = backbone.denoise if control is None else controlled_denoiser(backbone, control, count)
    schedule = backbone.schedule
    if prior is not None:
        alpha_T = schedule.alpha(ddim_timesteps(schedule, steps)[0])
        latents = torch.cat([prior.start(latents[k:k + 1].cpu(), conditions[1].hidden_states[k:k + 1], alpha_T,
                                         torch.Generator().manual_seed(s + 1)) for k, s in enumerate(seeds)])
        latents = latents.to(backbone.device, backbone.dtype)

    def mixed(x, t, _):
        return pair_noise(denoise, schedule, x, t, conditions, guidance)

    # pair_noise returns ε, so the sampler steps an ε-prediction over the model's own ᾱ schedule.
    latents = ddim_sample(mixed, dataclasses.replace(schedule, prediction_type="epsilon"), latents,
                          ddim_timesteps(schedule, steps), None, num_steps=steps)
    images = ((backbone.decode_latents(latents).float() + 1) / 2).clamp(0, 1).cpu()
    return images[..., :size], images[..., size:]


# ---------------------------------------------------------------------------------------------
# The filter
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairFilter:
    """When a pair's halves agree enough to keep it (not in the paper, which trains on all pairs).

    Identity: the mini judge's zero-shot colour, among the colours the world draws, is the same on both
    halves (it names v2 colours 100 % right). Layout: the object's footprint — pixels farther than
    ``foreground_distance`` (RGB) from every colour of the half's outer ``frame`` pixels (the 5th
    nearest, so a few object pixels there do not count), closed, hole-filled and opened — has the same
    horizontal centre and nearly the same √area on both halves. A hat or stripes do not move the
    centre; a hat grows √area by up to ≈ 21 % of a star's (0.03 of the side at v1's sizes, 0.09 at v2's),
    so the size test is relative to the larger footprint.

    Measured with the shipped (v2) judge on the first 300 rendered train-split pairs per direction of the
    v2 world (seed 0), striped / hat: colour agreement 100 % / 100 %, kept 100 % / 100 %; with each left
    half shuffled against the next pair's right half: colour 14.7 % / 14.7 %, kept 5.0 % / 5.7 %. (The v1
    world's ten colours are not the v2 judge's: there it keeps 67 % / 70 %.)
    """

    foreground_distance: float = 0.15  #: RGB distance (in [0, √3]) from the frame's colours that counts as object
    frame: int = 2  #: width of the border (pixels at 64²) whose colours define the background
    max_centre_shift: float = 0.08  #: largest |Δx| of the footprints' centres, as a fraction of the side
    max_size_change: float = 0.25  #: largest |Δ√area| of the footprints, as a fraction of the larger √area
    min_area: float = 0.003  #: smaller footprints (fraction of the half's area) count as "no object found"


def object_footprint(half: np.ndarray, config: PairFilter = PairFilter()) -> np.ndarray:
    """Boolean (H, W) mask of what differs from the background colours of ``half`` (H, W, 3) in [0, 1]."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    side = half.shape[0]
    f = max(1, round(config.frame * side / 64))
    frame = np.concatenate([half[:f].reshape(-1, 3), half[-f:].reshape(-1, 3),
                            half[f:-f, :f].reshape(-1, 3), half[f:-f, -f:].reshape(-1, 3)])
    distance, _ = cKDTree(frame).query(half.reshape(-1, 3), k=[5])
    far = distance.reshape(half.shape[:2]) > config.foreground_distance
    # closing joins the 1-pixel outline around a body of background colour, which filling then makes solid
    return ndimage.binary_opening(ndimage.binary_fill_holes(ndimage.binary_closing(far)))


def footprint_stats(mask: np.ndarray, config: PairFilter = PairFilter()) -> list[float] | None:
    """[centre x, centre y, √area] of a footprint as fractions of the side, or None when too small."""
    ys, xs = np.nonzero(mask)
    side = mask.shape[0]
    if len(xs) < config.min_area * mask.size:
        return None
    return [round(float(xs.mean()) / side, 4), round(float(ys.mean()) / side, 4),
            round(float(np.sqrt(len(xs))) / side, 4)]


@dataclass
class HalfDescription:
    """What the filter measures on one half: the judge's colour, its image embedding, the footprint."""

    colour: str
    embedding: torch.Tensor  # (D,) unit norm
    footprint: list[float] | None  # footprint_stats


@torch.no_grad()
def describe_halves(judge, images: torch.Tensor, config: PairFilter = PairFilter(), *,
                    vocabularies: dict | None = None) -> list[HalfDescription]:
    """:class:`HalfDescription` of each half (B, 3, H, W) in [0, 1]; the judge embeds each image once and
    names its colour among ``vocabularies``' (a world's, e.g. ``World.vocabularies``; default every colour)."""
    from retouch.world.heldout import zero_shot_prompts

    prompts = zero_shot_prompts("colour", vocabularies)  # the zero-shot classification of evaluate_mini.classify
    texts = torch.nn.functional.normalize(judge.encode_texts(list(prompts.values())).float(), dim=-1)
    embeddings = torch.nn.functional.normalize(judge.encode_images(images).float(), dim=-1)
    colours = [list(prompts)[i] for i in (embeddings @ texts.to(embeddings.device).T).argmax(-1).tolist()]
    return [HalfDescription(colour, embedding.cpu(),
                            footprint_stats(object_footprint(image.permute(1, 2, 0).numpy(), config), config))
            for colour, embedding, image in zip(colours, embeddings, images)]


def halves_agree(left: HalfDescription, right: HalfDescription, config: PairFilter = PairFilter()) -> dict:
    """The filter's verdict ``kept`` and its ``scores`` for one pair of described halves.

    ``clip_cosine``, the judge's image-embedding cosine between the halves, is reported but does not
    decide: it is dominated by the shared background.
    """
    a, b = left.footprint, right.footprint
    shift = size = None
    if a is not None and b is not None:
        shift, size = round(abs(a[0] - b[0]), 4), round(abs(a[2] - b[2]) / max(a[2], b[2]), 4)
    scores = {"colour_left": left.colour, "colour_right": right.colour, "footprint_left": a, "footprint_right": b,
              "centre_shift": shift, "size_change": size, "clip_cosine": round(float(left.embedding @ right.embedding), 4)}
    return {"kept": scores_agree(scores, config), "scores": scores}


def scores_agree(scores: dict, config: PairFilter = PairFilter()) -> bool:
    """The filter's verdict from a pair's stored ``scores``: the same colour, an object found on both halves, and
    its footprints within the centre-shift and size limits.

    A half with no object found fails: every pair of this world has one object, and where none is found it was
    drawn across the seam between the halves (its colour then reaches the frame and reads as background) or
    not drawn at all — 63 of the 191 generated hat pairs the first rule ("none on either half agrees") kept.
    """
    if scores["footprint_left"] is None or scores["footprint_right"] is None:
        return False
    return bool(scores["colour_left"] == scores["colour_right"] and scores["centre_shift"] <= config.max_centre_shift
                and scores["size_change"] <= config.max_size_change)


def refilter_pairs(folder: Path, config: PairFilter = PairFilter()) -> dict:
    """Apply the filter again to a pairs dataset from its stored scores (no judge, no generation): each pair's
    ``kept``, where its halves lie (``left/`` or ``rejected/left/``, the same for ``right``), and the summary's
    counts. The manifest and summary are replaced whole; returns the new summary."""
    folder = Path(folder)
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        row["kept"] = scores_agree(row["scores"], config)
        for side in ("left", "right"):
            name = ("" if row["kept"] else "rejected/") + f"{side}/{Path(row[side]).name}"
            if name != row[side]:
                os.replace(folder / row[side], folder / name)
                row[side] = name
    summary = json.loads((folder / "dataset.json").read_text())
    kept = sum(row["kept"] for row in rows)
    summary.update(kept=kept, kept_fraction=round(kept / max(1, len(rows)), 4), filter=asdict(config))
    for name, text in (("manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
                       ("dataset.json", json.dumps(summary, indent=2))):
        (folder / f"{name}.partial").write_text(text)
        os.replace(folder / f"{name}.partial", folder / name)
    return summary


def pair_agreement(judge, left: torch.Tensor, right: torch.Tensor, config: PairFilter = PairFilter(), *,
                   vocabularies: dict | None = None) -> list[dict]:
    """:func:`halves_agree` for each pair of halves (B, 3, H, W) in [0, 1]."""
    describe = functools.partial(describe_halves, judge, config=config, vocabularies=vocabularies)
    return [halves_agree(a, b, config) for a, b in zip(describe(left), describe(right))]


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------
@dataclass
class PairsConfig:
    """What ``retouch data pairs`` builds."""

    direction: str = "striped"  #: an edit direction of DIRECTIONS
    count: int = option(64, at_least=1, at_most=1_000_000)  #: pairs to make (kept or not)
    source: str = "generate"  #: "generate" (Eq. 2 with ``model``) or "renderer" (the world's ground-truth pairs)
    model: str = "mini"  #: the backbone that generates (not used by the renderer)
    steps: int = option(25, at_least=1)  #: DDIM steps
    seed: int = 0  #: world seed (which scenes and prompts) and base of the per-pair noise seeds
    split: str = "train"  #: the world split the pairs' indices come from
    guidance: PairGuidance = field(default_factory=PairGuidance)
    batch: int = option(8, at_least=1)  #: pairs per denoising batch (each is 4 U-Net rows)
    terminal_prior: bool = False  #: start z_T from ``model``'s terminal prior (retouch/terminal_prior.py)
    device: str = "cpu"
    overwrite: bool = False  #: replace an existing pairs dataset in the output folder

    def validate(self) -> None:
        if self.direction not in DIRECTIONS:
            raise RetouchError(f"unknown direction {self.direction!r}; choose from {', '.join(DIRECTIONS)}")
        if self.source not in SOURCES:
            raise RetouchError(f"unknown source {self.source!r}; choose from {', '.join(SOURCES)}")
        if self.split not in SPLITS:
            raise RetouchError(f"unknown split {self.split!r}; choose from {', '.join(SPLITS)}")
        check_options(self)
        g = self.guidance
        if not all(np.isfinite(v) and v >= 0 for v in asdict(g).values()):
            raise RetouchError("--guidance-scale and --strengths must be finite and non-negative")


def noise_seed(seed: int, index: int) -> int:
    """The seed of pair ``index``'s z_T: distinct per (world seed, index), independent of batching."""
    return int(seed) * 1_000_003 + int(index)


def split_indices(split: str, count: int, start: int = 0) -> list[int]:
    """The first ``count`` pair indices ≥ ``start`` that belong to ``split`` (``World.split``)."""
    from retouch.world import World

    indices, index = [], start
    while len(indices) < count:
        if World.split(index) == split:
            indices.append(index)
        index += 1
    return indices


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists():
        if not output.is_dir():
            raise RetouchError(f"'{output}' exists and is not a folder; choose a new output folder")
        if any(output.iterdir()):
            if not overwrite:
                raise RetouchError(f"'{output}' already exists and is not an empty folder; choose a new output "
                                   "folder or pass --overwrite")
            if not (output / "dataset.json").is_file() or (
                    json.loads((output / "dataset.json").read_text()).get("format") != DATASET_FORMAT):
                raise RetouchError(f"'{output}' is not a pairs dataset; --overwrite replaces only those")
    parent = output.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RetouchError(f"cannot write the dataset: folder '{parent}' does not exist or is not writable")


def _spec(spec) -> dict:
    return {"background": spec.background, "objects": [dataclasses.asdict(o) for o in spec.objects]}


def build_pairs_dataset(config: PairsConfig, output: Path, progress=None, *, backbone=None, judge=None) -> dict:
    """Make ``config.count`` pairs into ``output`` (new, empty, or a pairs dataset with ``overwrite``).

    ``backbone`` / ``judge`` may be passed already loaded (else ``config.model`` and the mini judge).
    Returns the summary that ``dataset.json`` holds.
    """
    from retouch.imageio import png_bytes
    from retouch.world import World

    config.validate()
    output = Path(output)
    _check_output(output, config.overwrite)
    prior = None
    if config.terminal_prior and config.source == "generate":
        from retouch.backbone import model_folder
        from retouch.terminal_prior import load_terminal_prior

        prior = load_terminal_prior(model_folder(config.model))
        if prior is None:
            raise RetouchError(f"--terminal-prior: model '{config.model}' carries no terminal prior "
                               "(make one with `retouch train terminal-prior`)")
    size = 64
    if config.source == "generate":
        if backbone is None:
            from retouch.backbone import load_backbone

            backbone = load_backbone(config.model, device=config.device)
        size = backbone.unet.config.sample_size * backbone.vae_scale_factor
    if judge is None:
        from retouch.backbone import MINI_DIR
        from retouch.metrics import TransformersCLIPJudge

        judge = TransformersCLIPJudge(MINI_DIR / "judge", device=config.device)
    world = World(seed=config.seed, size=size)
    change, fixed = DIRECTIONS[config.direction]
    indices = split_indices(config.split, config.count)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.resolve().parent))
    try:
        for folder in ("left", "right", "rejected/left", "rejected/right"):
            (staging / folder).mkdir(parents=True)
        rows = []
        for start in range(0, len(indices), config.batch):
            chunk = indices[start:start + config.batch]
            pairs = [world.pair(i, change, **fixed) for i in chunk]
            captions = [p[3] for p in pairs]
            if config.source == "generate":
                seeds = [noise_seed(config.seed, i) for i in chunk]
                left, right = generate_pairs(backbone, captions, steps=config.steps, seed=seeds,
                                             guidance=config.guidance, prior=prior)
            else:
                seeds = [None] * len(chunk)
                rendered = torch.from_numpy(np.stack([p[2].image for p in pairs])).permute(0, 3, 1, 2)
                left, right = rendered[..., :size], rendered[..., size:]
            verdicts = pair_agreement(judge, left, right, vocabularies=world.vocabularies)
            for k, index in enumerate(chunk):
                folder = "" if verdicts[k]["kept"] else "rejected/"
                names = {side: f"{folder}{side}/{index:06d}.png" for side in ("left", "right")}
                for side, half in (("left", left[k]), ("right", right[k])):
                    (staging / names[side]).write_bytes(png_bytes(half.permute(1, 2, 0).numpy()))
                generated = config.source == "generate"
                rows.append({
                    "index": index, "split": config.split, "direction": config.direction, "source": config.source,
                    "prompts": {"shared": captions[k].shared, "source": captions[k].left, "target": captions[k].right},
                    "seeds": {"world": config.seed, "noise": seeds[k]},
                    "strengths": ({"guidance_scale": config.guidance.guidance_scale,
                                   "s_d": config.guidance.shared_strength, "s_a": config.guidance.source_strength,
                                   "s_b": config.guidance.target_strength, "steps": config.steps}
                                  if generated else None),
                    "kept": verdicts[k]["kept"], "scores": verdicts[k]["scores"],
                    "left": names["left"], "right": names["right"],
                    "scene": {"left": _spec(pairs[k][0]), "right": _spec(pairs[k][1])},
                })
            if progress is not None:
                progress(len(rows), len(indices))
        kept = sum(r["kept"] for r in rows)
        (staging / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        settings = asdict(config)
        settings["model"] = getattr(backbone, "source", config.model) if config.source == "generate" else None
        summary = {"format": DATASET_FORMAT, "config": settings, "pairs": len(rows), "kept": kept,
                   "kept_fraction": round(kept / len(rows), 4), "filter": asdict(PairFilter()),
                   "image_size": size}
        (staging / "dataset.json").write_text(json.dumps(summary, indent=2))
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _move_into_place(staging: Path, output: Path) -> None:
    """Rename the finished dataset to ``output``; an old dataset there is removed only afterwards."""
    old = None
    if output.exists():
        if any(output.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.resolve().parent))
            os.replace(output, old / "dataset")
        else:
            output.rmdir()
    os.replace(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
