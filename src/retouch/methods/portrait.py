"""The Multi-Conditioned Diffusion Model (MCDM) of "Learning Feature-Preserving Portrait Editing from
Generated Pairs" (Chen et al. 2024), §3.3–3.4, as ``retouch edit --method portrait``.

ε_θ(z_t, t, {c_s, c_im, c_pb}) takes three conditions, each through its own pathway (§3.3, Fig. 5):

* spatial embeddings c_s = E(x_A), concatenated with z_t: the U-Net's first layer takes 8 channels,
  the 4 new ones zero-initialised so the network starts as the pretrained one;
* text embeddings c_pb of the target prompt p_b, fed to cross-attention as in Stable Diffusion;
* image embeddings c_im = MLP([E(x_A), CLIP_im(x_A)]), a few tokens appended to c_pb in cross-attention.

Inference (§3.4) runs DDIM from random noise with nested multi-condition classifier-free guidance
(Eq. 1, conditions in the order c_s, c_im, c_p); optionally it derives a DiffEdit-style mask from the
trained model itself — the difference of its noise predictions under p_b and p_a — and denoises with
ε̂ = ε̃(p_b)⊙M + ε̃(p_a)⊙(1 − M) (Eq. 3), so everything outside the mask follows the reconstruction.

Deviations, all because the paper leaves them open or works at one fixed size: E(x_A) enters the MLP
area-pooled to ``pool × pool`` cells (the paper flattens a 64² SD latent; pooling keeps the MLP's size
independent of the image size), and null conditions are zeros (c_s, c_im) or the empty prompt (c_p).
The paper gives no guidance scales; ours (c_s 6, c_im 1.5, c_p 10) were chosen on 16 validation
scenes of the mini world's hat edit (docs/portrait.md): below c_s ≈ 6 sampling from noise redraws
the background, above it the edit weakens.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retouch.errors import RetouchError
from retouch.methods import register

#: The order of nested guidance (Eq. 1): spatial c_s, image c_im, text c_p.
CONDITIONS = ("spatial", "image", "text")

#: Edit directions on the mini world: (p_a, p_b), the source and target prompts (§3.2's "a woman, normal
#: costume" → "a woman, santa claus costume" in the world's words).
MINI_DIRECTIONS = {
    "striped": ("a photo of a plain object", "a photo of a striped object"),
    "hat": ("a photo of an object", "a photo of an object wearing a hat"),
}

#: The mini world's CLIP image encoder (the judge), named in saved models instead of copied.
SHIPPED_JUDGE = Path(__file__).resolve().parent.parent / "assets" / "mini" / "judge"
SHIPPED_JUDGE_NAME = "mini-judge"

#: The shipped MCDM on the mini world (``--method portrait``'s default ``--model``): directions striped
#: and hat, trained on rendered pairs (its MODEL_CARD.md says how and why).
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "mini" / "portrait"


@dataclass
class PortraitSpec:
    """What a saved MCDM is (``portrait.json``); the flags are the paper's ablations (Fig. 6)."""

    directions: dict = field(default_factory=lambda: dict(MINI_DIRECTIONS))
    spatial: bool = True  # c_s through the input ("w/o Spt" when False)
    image_embedding: bool = True  # c_im through cross-attention ("w/o Iemb" when False)
    image_tokens: int = 4
    pool: int = 8  # E(x_A) area-pooled to pool × pool before the MLP
    clip_dim: int = 0  # width of CLIP_im(x_A); 0: the MLP sees E(x_A) only
    image_encoder: str = ""  # a local CLIP-style folder, or "mini-judge"
    latent_channels: int = 4
    #: factor on c_s before the U-Net: an equalised learning rate for its zero-initialised weights
    #: (docs/multitask.md); 1 is the paper's plain concatenation.
    input_gain: float = 1.0

    def validate(self) -> None:
        if not self.directions:
            raise RetouchError("an MCDM needs at least one edit direction")
        for name, prompts in self.directions.items():
            if len(prompts) != 2 or not all(isinstance(p, str) and p for p in prompts):
                raise RetouchError(f"direction {name!r} needs a (source prompt, target prompt) pair")
        if self.image_embedding and self.image_tokens < 1:
            raise RetouchError("image embeddings need at least one token")

    def prompts(self, direction: str) -> tuple[str, str]:
        if direction not in self.directions:
            raise RetouchError(f"unknown edit {direction!r}; this model knows {', '.join(sorted(self.directions))}")
        return tuple(self.directions[direction])


class ImageEmbeddingMLP(nn.Module):
    """c_im = MLP([E(x_A), CLIP_im(x_A)]) → ``tokens`` vectors of the text width (§3.3)."""

    def __init__(self, spec: PortraitSpec, width: int):
        super().__init__()
        in_features = spec.latent_channels * spec.pool**2 + spec.clip_dim
        self.pool, self.tokens, self.width = spec.pool, spec.image_tokens, width
        self.net = nn.Sequential(nn.Linear(in_features, width), nn.SiLU(), nn.Linear(width, spec.image_tokens * width))

    def forward(self, source_latents: torch.Tensor, clip: torch.Tensor | None) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(source_latents.float(), self.pool).flatten(1)
        features = pooled if clip is None else torch.cat([pooled, clip.float()], dim=1)
        return self.net(features.to(self.net[0].weight.dtype)).view(-1, self.tokens, self.width)


class MCDMDenoiser(nn.Module):
    """ε_θ(z_t, t, {c_s, c_im, c_p}) with per-row switches for each condition (null = off)."""

    def __init__(self, unet, image_mlp: ImageEmbeddingMLP | None, spec: PortraitSpec):
        super().__init__()
        expected = spec.latent_channels * (2 if spec.spatial else 1)
        if unet.config.in_channels != expected:
            raise RetouchError(f"the U-Net takes {unet.config.in_channels} input channels; this MCDM needs {expected}")
        self.unet, self.image_mlp, self.spec = unet, image_mlp, spec

    def forward(self, noisy, t, source_latents, clip, text_states, use_spatial, use_image, added=None):
        """``use_spatial``/``use_image`` (B,) booleans; text nulls are the empty prompt's states in ``text_states``."""
        inputs = noisy
        if self.spec.spatial:
            spatial = source_latents.to(noisy.dtype) * use_spatial.to(noisy.dtype)[:, None, None, None]
            inputs = torch.cat([noisy, spatial * self.spec.input_gain], dim=1)
        context = text_states.to(noisy.dtype)
        if self.image_mlp is not None:
            tokens = self.image_mlp(source_latents, clip).to(noisy.dtype)
            context = torch.cat([context, tokens * use_image.to(noisy.dtype)[:, None, None]], dim=1)
        return self.unet(inputs, t, encoder_hidden_states=context, added_cond_kwargs=added).sample


@dataclass
class PortraitModel:
    """A backbone whose U-Net is the MCDM's, the c_im MLP, the CLIP image encoder and the spec."""

    backbone: object
    denoiser: MCDMDenoiser
    image_encoder: object | None  # has encode_images(images01) -> (B, clip_dim)

    @property
    def spec(self) -> PortraitSpec:
        return self.denoiser.spec

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    @property
    def size_multiple(self) -> int:
        return self.backbone.size_multiple

    @classmethod
    def from_backbone(cls, backbone, spec: PortraitSpec, image_encoder=None, *, scratch: bool = False):
        """§3.3: initialise from a pretrained text-to-image model (c_s's channels zero-initialised);
        ``scratch`` re-initialises the U-Net instead (the paper's "w/o Prt" ablation)."""
        from dataclasses import replace

        from retouch.backbone import widen_conv_in

        spec = replace(spec, directions=dict(spec.directions))  # the caller's spec stays as given
        spec.validate()
        spec.latent_channels = backbone.latent_channels
        if spec.image_embedding and image_encoder is not None and not spec.clip_dim:
            spec.clip_dim = int(image_encoder.encode_images(torch.zeros(1, 3, 32, 32)).shape[-1])
        unet = backbone.unet
        if scratch:
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel.from_config(unet.config).to(unet.device, unet.dtype)
        if spec.spatial:
            unet = widen_conv_in(unet, 2 * spec.latent_channels)
        width = unet.config.cross_attention_dim
        mlp = ImageEmbeddingMLP(spec, width).to(unet.device) if spec.image_embedding else None
        return cls(replace(backbone, unet=unet), MCDMDenoiser(unet, mlp, spec),
                   image_encoder if spec.image_embedding else None)

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: Path, *, base: str | None = None) -> None:
        """The trained parts and ``portrait.json``; with ``base`` (a backbone name such as ``mini``) only
        the U-Net is written and the frozen autoencoder, text encoder, tokenizer and scheduler are read
        from ``base`` on load — the shipped layout, refused unless those parts equal ``base``'s."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if base is None:
            self.backbone.save(folder / "backbone")
        else:
            _check_frozen_parts_match(self.backbone, base)
            self.backbone.unet.save_pretrained(folder / "unet", safe_serialization=True)
        if self.denoiser.image_mlp is not None:
            state = {k: v.contiguous() for k, v in self.denoiser.image_mlp.state_dict().items()}
            save_file(state, str(folder / "image_mlp.safetensors"))
        spec = asdict(self.spec)
        encoder = self.spec.image_encoder
        if encoder and encoder != SHIPPED_JUDGE_NAME and Path(encoder).is_dir():
            shutil.copytree(encoder, folder / "image_encoder", dirs_exist_ok=True)
            spec["image_encoder"] = "image_encoder"
        meta = {"spec": spec} if base is None else {"spec": spec, "base": base}
        (folder / "portrait.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path, device="cpu", dtype=torch.float32) -> "PortraitModel":
        from safetensors.torch import load_file

        from retouch.backbone import load_backbone

        folder = Path(folder)
        meta_path = folder / "portrait.json"
        if not meta_path.is_file():
            raise RetouchError(f"'{folder}' is not a portrait (MCDM) model folder (no portrait.json)")
        meta = json.loads(meta_path.read_text())
        spec = PortraitSpec(**meta["spec"])
        if meta.get("base"):  # the shipped layout: only the U-Net is stored (see save)
            from dataclasses import replace

            from diffusers import UNet2DConditionModel

            backbone = load_backbone(meta["base"], device=device, dtype=dtype).eval()
            try:
                unet = UNet2DConditionModel.from_pretrained(folder / "unet")
            except (OSError, ValueError) as error:
                raise RetouchError(f"cannot load the MCDM's U-Net in '{folder}': {str(error).splitlines()[0]}") from None
            backbone = replace(backbone, unet=unet.to(device, dtype).eval().requires_grad_(False))
        else:
            backbone = load_backbone(str(folder / "backbone"), device=device, dtype=dtype).eval()
        mlp = None
        if spec.image_embedding:
            try:
                weights = load_file(str(folder / "image_mlp.safetensors"))
            except (OSError, ValueError) as error:
                raise RetouchError(f"cannot load the MCDM's image MLP in '{folder}': {str(error).splitlines()[0]}") from None
            mlp = ImageEmbeddingMLP(spec, backbone.unet.config.cross_attention_dim)
            mlp.load_state_dict(weights)
            mlp.to(device, dtype).eval().requires_grad_(False)
        encoder = load_image_encoder(spec.image_encoder, folder, device) if spec.image_embedding and spec.clip_dim else None
        return cls(backbone, MCDMDenoiser(backbone.unet, mlp, spec), encoder)


def _check_frozen_parts_match(backbone, base: str) -> None:
    """Refuse to drop the autoencoder or text encoder from a saved MCDM unless ``base`` has the very same
    weights (the MCDM trains only the U-Net and the MLP; a model from another init must keep its own)."""
    from retouch.backbone import load_backbone

    reference = load_backbone(base)
    pairs = [("autoencoder", backbone.vae, reference.vae)]
    pairs += [("text encoder", mine, theirs) for mine, theirs in zip(backbone.text_encoders, reference.text_encoders)]
    for name, mine, theirs in pairs:
        ours, others = mine.state_dict(), theirs.state_dict()
        if ours.keys() != others.keys() or any(not torch.equal(ours[k].float().cpu(), others[k].float().cpu())
                                               for k in ours):
            raise RetouchError(f"this MCDM's {name} differs from {base!r}'s; save it without base=")


def load_image_encoder(name: str, base: Path | None = None, device="cpu"):
    """CLIP_im: the mini world's judge (``mini-judge``) or a local CLIP-style folder."""
    from retouch.metrics.semantic import TransformersCLIPJudge

    if not name:
        return None
    path = SHIPPED_JUDGE if name == SHIPPED_JUDGE_NAME else Path(name)
    if not path.is_absolute() and base is not None and (base / path).is_dir():
        path = base / path
    return TransformersCLIPJudge(path, device=device)


# ---------------------------------------------------------------------------------------------
# Conditions, training loss, guidance
# ---------------------------------------------------------------------------------------------
@dataclass
class Conditions:
    """Everything but z_t and t for a batch: c_s = E(x_A), CLIP_im(x_A), and the prompt states."""

    source_latents: torch.Tensor  # (B, 4, h, w)
    clip: torch.Tensor | None  # (B, clip_dim)
    text_states: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor | None = None  # SDXL's pooled text embedding
    time_ids: torch.Tensor | None = None

    def to(self, device) -> "Conditions":
        """Moved to ``device`` (the training loop sends batches to the model's device this way)."""
        def move(x):
            return None if x is None else x.to(device)

        return Conditions(*(move(getattr(self, name)) for name in ("source_latents", "clip", "text_states",
                                                                     "pooled", "time_ids")))


def source_conditions(model: PortraitModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(E(x_A), CLIP_im(x_A)) for images (B, 3, H, W) in [−1, 1]."""
    latents = model.backbone.encode_images(images)
    clip = None
    if model.image_encoder is not None:
        clip = model.image_encoder.encode_images(((images.float() + 1) / 2).clamp(0, 1)).to(latents.device)
    return latents, clip


def added_conditioning(backbone, latents: torch.Tensor, pooled, time_ids):
    """SDXL's added conditioning (pooled text + size time ids) for these rows, or None for SD 1.x/2.x."""
    from retouch.backbone import Conditioning

    return backbone.added_conditions(latents, Conditioning(None, pooled, time_ids))


def draw_dropout(batch: int, generator: torch.Generator, probability: float = 0.2) -> torch.Tensor:
    """(B, 3) booleans, True = keep, for (c_s, c_im, c_p): each dropped independently with ``probability``,
    so every combination — none, any subset, all three — is dropped at some rate (§3.3, after [22])."""
    return torch.rand(batch, len(CONDITIONS), generator=generator) >= probability


def mcdm_loss(model: PortraitModel, denoiser: MCDMDenoiser, target_latents: torch.Tensor, conditions: Conditions,
              null_text: torch.Tensor, generator: torch.Generator, *, dropout: float = 0.2) -> torch.Tensor:
    """‖ε_θ(z_t, t, {c_s, c_im, c_p}) − ε‖² with t uniform and each condition dropped independently
    with ``dropout`` (its null: zeros for c_s and c_im, the empty prompt's states for c_p). The 5 %
    identity pairs are the batch builder's job (:func:`identity_swap`)."""
    from retouch.sampling import add_noise, velocity

    schedule = model.backbone.schedule
    batch = target_latents.shape[0]
    t = torch.randint(0, len(schedule.alphas_cumprod), (batch,), generator=generator)
    noise = torch.randn(target_latents.shape, generator=generator).to(target_latents)
    alpha = schedule.alphas_cumprod[t].to(target_latents)
    noisy = add_noise(target_latents, noise, alpha)
    keep = draw_dropout(batch, generator, dropout).to(target_latents.device)
    text = torch.where(keep[:, 2, None, None], conditions.text_states, null_text.expand_as(conditions.text_states))
    added = added_conditioning(model.backbone, noisy, conditions.pooled, conditions.time_ids)
    prediction = denoiser(noisy, t.to(noisy.device), conditions.source_latents, conditions.clip, text,
                          keep[:, 0], keep[:, 1], added)
    target = velocity(target_latents, noise, alpha) if schedule.prediction_type == "v_prediction" else noise
    return F.mse_loss(prediction.float(), target.float())


def identity_swap(generator: torch.Generator, batch: int, probability: float = 0.05) -> torch.Tensor:
    """(B,) booleans: rows whose pair is replaced by the identity pair (p_b → p_a, x_B → x_A), §3.3 (1)."""
    return torch.rand(batch, generator=generator) < probability


@dataclass
class GuidanceScales:
    """One scale per condition of Eq. 1's nested guidance, in the order c_s, c_im, c_p."""

    spatial: float = 6.0
    image: float = 1.5
    text: float = 10.0

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.spatial, self.image, self.text)


def guided_predictions(model: PortraitModel, latents: torch.Tensor, t: int, conditions: Conditions,
                       prompt_states: list[torch.Tensor], null_text: torch.Tensor, scales: GuidanceScales,
                       pooled: list | None = None) -> list[torch.Tensor]:
    """ε̃(z_t, t, {c_s, c_im, c_p}) by Eq. 1 for each prompt's states in ``prompt_states``, in one U-Net call.

    The nested terms ε(∅,∅,∅), ε(c_s,∅,∅), ε(c_s,c_im,∅) are shared by all prompts, so n prompts cost
    3 + n rows per image rather than 4n. A condition the model lacks (an ablation) has its term dropped.
    """
    from retouch.sampling import multi_condition_guidance, to_epsilon

    spec = model.spec
    batch = latents.shape[0]
    present = [spec.spatial, spec.image_embedding and model.denoiser.image_mlp is not None, True]
    # rows: the nested prefix settings for the shared terms, then (c_s, c_im, prompt) per prompt
    settings = [(False, False, None)]
    if present[0]:
        settings.append((True, False, None))
    if present[1]:
        settings.append((present[0], True, None))
    settings += [(present[0], present[1], k) for k in range(len(prompt_states))]
    rows = len(settings)
    texts = [null_text.expand(batch, -1, -1) if k is None else prompt_states[k] for _s, _i, k in settings]
    pooled_rows = None
    if model.backbone.family == "sdxl":
        pooled_rows = torch.cat([pooled[-1] if k is None else pooled[k] for _s, _i, k in settings])
    use_spatial = torch.tensor([s for s, _i, _k in settings], device=latents.device).repeat_interleave(batch)
    use_image = torch.tensor([i for _s, i, _k in settings], device=latents.device).repeat_interleave(batch)
    noisy = latents.repeat(rows, 1, 1, 1)
    clip = None if conditions.clip is None else conditions.clip.repeat(rows, 1)
    added = added_conditioning(model.backbone, noisy, pooled_rows, None)
    out = model.denoiser(noisy, torch.full((rows * batch,), t, device=latents.device),
                         conditions.source_latents.repeat(rows, 1, 1, 1), clip, torch.cat(texts),
                         use_spatial, use_image, added)
    schedule = model.backbone.schedule
    out = to_epsilon(noisy, out, schedule.alpha(t).to(noisy), schedule.prediction_type).chunk(rows)
    shared = list(out[: rows - len(prompt_states)])
    scale_list = [s for s, on in zip(scales.as_tuple(), present) if on]
    return [multi_condition_guidance(shared + [eps], scale_list) for eps in out[rows - len(prompt_states):]]


# ---------------------------------------------------------------------------------------------
# Editing (§3.4)
# ---------------------------------------------------------------------------------------------
@dataclass
class PortraitConfig:
    edit: str = field(default="", metadata={"help": "edit direction the model was trained on, e.g. striped or hat"})
    num_steps: int = field(default=50, metadata={"help": "DDIM steps from random noise (§3.4)"})
    spatial_scale: float = field(default=6.0, metadata={
        "help": "guidance scale of c_s = E(x_A) (Eq. 1; not given by the paper, chosen on val scenes)"})
    image_scale: float = field(default=1.5, metadata={"help": "guidance scale of c_im (Eq. 1)"})
    text_scale: float = field(default=10.0, metadata={"help": "guidance scale of the target prompt c_pb (Eq. 1)"})
    mask_guidance: bool = field(default=True, metadata={
        "help": "derive the edit mask from the MCDM and denoise with Eq. 3 (else plain guided sampling)"})
    mask_strength: float = field(default=0.5, metadata={"help": "noise level t/T of the mask's predictions (DiffEdit)"})
    mask_draws: int = field(default=10, metadata={"help": "noise draws averaged for the mask (DiffEdit)"})
    mask_threshold: float = field(default=0.5, metadata={"help": "binarisation threshold of the normalised mask"})
    seed: int = field(default=0, metadata={"help": "seed of the starting noise and the mask's noise"})

    def validate(self) -> None:
        if not self.edit:
            raise RetouchError("--method portrait needs --edit, the direction to apply (e.g. --edit striped)")
        if self.num_steps < 1:
            raise RetouchError(f"--num-steps must be positive; got {self.num_steps}")
        if not 0.0 < self.mask_strength < 1.0:
            raise RetouchError(f"--mask-strength must be in (0, 1); got {self.mask_strength}")
        if self.mask_draws < 1:
            raise RetouchError(f"--mask-draws must be positive; got {self.mask_draws}")
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise RetouchError(f"--mask-threshold must be in [0, 1]; got {self.mask_threshold}")

    @property
    def scales(self) -> GuidanceScales:
        return GuidanceScales(self.spatial_scale, self.image_scale, self.text_scale)


@dataclass
class PortraitResult:
    images: torch.Tensor  # (B, 3, H, W) in [−1, 1]
    mask: torch.Tensor | None  # (B, 1, h, w) latent-size binary mask used by Eq. 3
    soft_mask: torch.Tensor | None


def _prompt_states(model: PortraitModel, prompts: list[str], batch: int):
    encoded = model.backbone.encode_text(prompts)
    states = [encoded.hidden_states[k:k + 1].expand(batch, -1, -1) for k in range(len(prompts))]
    pooled = None if encoded.pooled is None else [encoded.pooled[k:k + 1].expand(batch, -1) for k in range(len(prompts))]
    return states, pooled


@torch.no_grad()
def portrait_edit(model: PortraitModel, images: torch.Tensor, config: PortraitConfig, progress=None, *,
                  mask: torch.Tensor | None = None) -> PortraitResult:
    """x̂_B from x_A: DDIM from random noise with Eq. 1 guidance, and with Eq. 3 when ``mask_guidance``.

    ``mask`` (B or 1, 1, h, w at latent size, 1 = edit) replaces the mask the model would derive.
    """
    from retouch.methods.diffedit import difference_mask
    from retouch.sampling import ddim_sample, ddim_timesteps

    config.validate()
    source_prompt, target_prompt = model.spec.prompts(config.edit)
    backbone = model.backbone
    images = images.to(backbone.device, backbone.dtype)
    batch = images.shape[0]
    source_latents, clip = source_conditions(model, images)
    conditions = Conditions(source_latents, clip, None)
    (target_states, source_states, null_text), pooled = _prompt_states(model, [target_prompt, source_prompt, ""], batch)
    soft = None
    if mask is not None:
        mask = mask.to(source_latents)
    elif config.mask_guidance:
        def predict_noise(noisy, t, which):
            states = target_states if which == "target" else source_states
            pick = None if pooled is None else [pooled[0] if which == "target" else pooled[1], pooled[2]]
            return guided_predictions(model, noisy, t, conditions, [states], null_text, config.scales, pick)[0]

        soft, mask = difference_mask(predict_noise, source_latents, backbone.schedule, strength=config.mask_strength,
                                     draws=config.mask_draws, seed=config.seed, threshold=config.mask_threshold)
        mask = mask.to(source_latents)
    prompts = [target_states] if mask is None else [target_states, source_states]
    pick = None if pooled is None else ([pooled[0], pooled[2]] if mask is None else [pooled[0], pooled[1], pooled[2]])

    def denoise(latents, t, _):
        eps = guided_predictions(model, latents, t, conditions, prompts, null_text, config.scales, pick)
        return eps[0] if mask is None else eps[0] * mask + eps[1] * (1 - mask)  # Eq. 3

    schedule = replace(backbone.schedule, prediction_type="epsilon")  # guided_predictions returns ε
    noise = torch.randn(source_latents.shape, generator=torch.Generator().manual_seed(config.seed)).to(source_latents)
    latents = ddim_sample(denoise, schedule, noise, ddim_timesteps(schedule, config.num_steps), None,
                          num_steps=config.num_steps, callback=progress)
    return PortraitResult(backbone.decode_latents(latents).float(), mask, soft)


def load_portrait_model(model: str, *, device="cpu", dtype=torch.float32, **_) -> PortraitModel:
    """``--model`` for ``--method portrait``: a folder written by ``retouch train portrait``."""
    folder = Path(model)
    if not (folder / "portrait.json").is_file():
        if folder == SHIPPED_MODEL:
            raise RetouchError("the shipped portrait model is missing from this installation; train one with "
                               "`retouch train portrait` and pass its folder with --model")
        raise RetouchError(f"--model '{model}' is not a portrait (MCDM) model folder (no portrait.json); "
                           "train one with `retouch train portrait`")
    return PortraitModel.load(folder, device=device, dtype=dtype)


def _register() -> None:
    @register("portrait", PortraitConfig,
              "MCDM: feature-preserving editing learnt from generated pairs (Chen et al. 2024)",
              load_model=load_portrait_model, default_model=str(SHIPPED_MODEL))
    def portrait(model: PortraitModel, images: torch.Tensor, config: PortraitConfig, progress=None) -> torch.Tensor:
        return portrait_edit(model, images, config, progress).images


_register()
