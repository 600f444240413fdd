"""One object holding a latent diffusion model's parts, from wherever they come.

A :class:`Backbone` is built from

* a named tiny configuration (``tiny-sd``, ``tiny-sd2-v``, ``tiny-sdxl``) with the shapes diffusers
  uses in its own fast tests and a CLIP tokenizer trained offline (for tests and benchmarks);
* a local diffusers folder (``model_index.json``), e.g. one saved by :meth:`Backbone.save`;
* a single ``.safetensors`` file: either retouch's self-describing file (diffusers-layout weights with
  the component configs in its metadata) or an original Stable Diffusion / SDXL checkpoint, which
  diffusers converts (it needs the matching diffusers config: pass ``config=`` a folder or repo id);
* a Hugging Face repo id, read from the local cache; downloaded only when online.

Weights load from safetensors only unless ``allow_pickle=True`` is passed explicitly.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from retouch.errors import RetouchError, first_line
from retouch.sampling import NoiseSchedule

FAMILIES = ("sd", "sdxl")
SINGLE_FILE_FORMAT = "retouch-backbone/1"
TINY_NAMES = ("tiny-sd", "tiny-sd2-v", "tiny-sdxl")
#: The shipped mini models trained on the mini world (``retouch train mini`` writes them).
MINI_NAME = "mini"
MINI_DIR = Path(__file__).resolve().parent / "assets" / "mini"


@dataclass
class Conditioning:
    """What the U-Net is conditioned on besides the latent and timestep.

    ``hidden_states`` (B, tokens, D) feed cross-attention; SDXL adds ``pooled`` (B, D₂) text embeddings
    and ``time_ids`` (B, 6) micro-conditioning (Podell et al. 2023, §2.2).
    """

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        def joined(name):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return Conditioning(joined("hidden_states"), joined("pooled"), joined("time_ids"))

    def repeat(self, n: int) -> "Conditioning":
        """Each row repeated ``n`` times in place (row i → rows i·n … i·n+n−1)."""

        def rep(x):
            return None if x is None else x.repeat_interleave(n, dim=0)

        return Conditioning(rep(self.hidden_states), rep(self.pooled), rep(self.time_ids))

    def select(self, index) -> "Conditioning":
        def pick(x):
            return None if x is None else x[index]

        return Conditioning(pick(self.hidden_states), pick(self.pooled), pick(self.time_ids))

    def with_hidden_states(self, hidden_states: torch.Tensor) -> "Conditioning":
        return replace(self, hidden_states=hidden_states)


@dataclass
class Backbone:
    """VAE + U-Net + text encoder(s) + tokenizer(s) + noise schedule of one latent diffusion model."""

    vae: Any
    unet: Any
    text_encoders: tuple
    tokenizers: tuple
    schedule: NoiseSchedule
    family: str = "sd"
    source: str = ""
    scheduler_config: dict = field(default_factory=dict)
    force_zeros_for_empty_prompt: bool = False
    #: where computation happens when the modules are offloaded (retouch.memory.enable_cpu_offload)
    execution_device: torch.device | None = None

    # ---- properties -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.execution_device if self.execution_device is not None else self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the U-Net's downsamplings."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def tokenizer(self):
        return self.tokenizers[0]

    @property
    def text_encoder(self):
        return self.text_encoders[0]

    def to(self, device=None, dtype=None) -> "Backbone":
        for module in (self.vae, self.unet, *self.text_encoders):
            if (device is not None and module.device != torch.device(device)) or (dtype is not None and module.dtype != dtype):
                module.to(device=device, dtype=dtype)
        return self

    def eval(self) -> "Backbone":
        for module in (self.vae, self.unet, *self.text_encoders):
            module.eval()
            module.requires_grad_(False)
        return self

    # ---- text ----------------------------------------------------------------------------
    def tokenize(self, prompts: list[str], tokenizer=None) -> torch.Tensor:
        tokenizer = tokenizer or self.tokenizer
        return tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    @torch.no_grad()
    def encode_text(self, prompts: list[str] | str) -> Conditioning:
        """Per-token text states for cross-attention, as Stable Diffusion's pipelines compute them.

        SD 1.x/2.x: the text encoder's last hidden state. SDXL: the penultimate hidden states of
        both encoders concatenated, plus the second encoder's pooled projection; empty prompts become
        zeros when the model's pipeline says so (``force_zeros_for_empty_prompt``).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if self.family == "sd":
            return Conditioning(self.text_encoder(self.tokenize(prompts))[0])
        states, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            out = encoder(self.tokenize(prompts, tokenizer), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]
        hidden = torch.cat(states, dim=-1)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=hidden.device)
            hidden = torch.where(empty[:, None, None], torch.zeros_like(hidden), hidden)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return Conditioning(hidden, pooled)

    # ---- images <-> latents ----------------------------------------------------------------
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None,
                      sample: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W) in [−1, 1] → scaled latents. The posterior mode unless ``sample``."""
        images = images.to(self.device, self.vae.dtype)
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mode()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images (B, 3, H, W) in [−1, 1] (not clamped)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        return self.vae.decode(latents).sample

    # ---- the denoiser ----------------------------------------------------------------------
    def added_conditions(self, latents: torch.Tensor, cond: Conditioning) -> dict | None:
        """SDXL's ``added_cond_kwargs`` (pooled text, micro-conditioning time ids); None for SD 1.x/2.x."""
        if self.family != "sdxl":
            return None
        time_ids = cond.time_ids
        if time_ids is None:
            size = [s * self.vae_scale_factor for s in latents.shape[-2:]]
            time_ids = torch.tensor([size + [0, 0] + size], dtype=latents.dtype, device=latents.device)
            time_ids = time_ids.expand(latents.shape[0], -1)
        return {"text_embeds": cond.pooled, "time_ids": time_ids}

    def denoise(self, latents: torch.Tensor, t: int | torch.Tensor, cond: Conditioning,
                residuals: tuple | None = None) -> torch.Tensor:
        """The raw network output (ε, v or x₀ per ``schedule.prediction_type``).

        ``residuals`` = (down-block residuals, mid-block residual) of a ControlNet (Zhang et al. 2023),
        added to the U-Net's skip connections and middle block.
        """
        down, mid = residuals if residuals is not None else (None, None)
        return self.unet(
            latents, t, encoder_hidden_states=cond.hidden_states,
            added_cond_kwargs=self.added_conditions(latents, cond),
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        ).sample

    # ---- persistence -----------------------------------------------------------------------
    def as_pipeline(self):
        """The matching diffusers text-to-image pipeline sharing these modules (for saving, parity)."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        if self.family == "sdxl":
            return StableDiffusionXLPipeline(
                vae=self.vae, text_encoder=self.text_encoders[0], text_encoder_2=self.text_encoders[1],
                tokenizer=self.tokenizers[0], tokenizer_2=self.tokenizers[1], unet=self.unet,
                scheduler=scheduler, force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
            )
        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    def save(self, path: str | Path, single_file: bool = False) -> Path:
        """Save as a diffusers folder, or as one self-describing ``.safetensors`` file."""
        path = Path(path)
        if not single_file:
            self.as_pipeline().save_pretrained(path, safe_serialization=True)
            return path
        _save_single_file(self, path)
        return path


def widen_conv_in(unet, in_channels: int):
    """A copy of ``unet`` taking ``in_channels`` inputs; the new input channels start with zero weights.

    So the widened network initially computes what the pretrained one does on z_t alone (the multitask paper §3.2,
    InstructPix2Pix, the MCDM §3.3: conditioning images concatenated to z_t, the U-Net initialised from a
    pretrained text-to-image model).
    """
    from diffusers import UNet2DConditionModel

    config = dict(unet.config)
    old = config["in_channels"]
    if in_channels < old:
        raise RetouchError(f"cannot narrow a U-Net from {old} to {in_channels} input channels")
    config["in_channels"] = in_channels
    wide = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], in_channels - old,
                                                                   *weight.shape[2:])], dim=1)
    wide.load_state_dict(state)
    return wide.to(weight.device, weight.dtype)


# ---------------------------------------------------------------------------------------------
# Building from diffusers pipelines
# ---------------------------------------------------------------------------------------------
def from_pipeline(pipe, source: str = "") -> Backbone:
    """Take the parts of a loaded diffusers Stable Diffusion (XL) pipeline."""
    components = pipe.components
    missing = [k for k in ("vae", "unet", "text_encoder", "tokenizer") if components.get(k) is None]
    if missing:
        raise RetouchError(f"model '{source}' lacks {', '.join(missing)}; retouch needs a Stable Diffusion-style model")
    sdxl = components.get("text_encoder_2") is not None
    encoders = (components["text_encoder"], components["text_encoder_2"]) if sdxl else (components["text_encoder"],)
    tokenizers = (components["tokenizer"], components["tokenizer_2"]) if sdxl else (components["tokenizer"],)
    scheduler_config = dict(pipe.scheduler.config)
    backbone = Backbone(
        vae=components["vae"], unet=components["unet"], text_encoders=encoders, tokenizers=tokenizers,
        schedule=NoiseSchedule.from_scheduler_config(pipe.scheduler.config),
        family="sdxl" if sdxl else "sd", source=source, scheduler_config=scheduler_config,
        force_zeros_for_empty_prompt=bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)) and sdxl,
    )
    return backbone.eval()


def load_backbone(
    source: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    offline: bool | None = None,
    config: str | None = None,
    prediction_type: str | None = None,
) -> Backbone:
    """Build a backbone from a tiny name, a diffusers folder, a single file or a hub repo id.

    ``offline`` defaults to the ``HF_HUB_OFFLINE`` setting; offline, a repo id must already be in
    the Hugging Face cache. ``config`` names the diffusers folder or repo id whose configs describe
    an original single-file checkpoint. ``prediction_type`` overrides the scheduler's (SD 2.x
    768-px checkpoints predict v but single files do not say so).
    """
    source_str = str(source)
    if source_str in TINY_NAMES:
        backbone = build_tiny(source_str)
    elif source_str == MINI_NAME:
        if not (MINI_DIR / "backbone" / "model_index.json").is_file():
            raise RetouchError(f"the mini models are not in this installation ({MINI_DIR}); "
                               "train them with `retouch train mini` or pick another --model")
        backbone = _load_folder(MINI_DIR / "backbone", allow_pickle=False)
        backbone.source = MINI_NAME
    else:
        path = Path(source_str).expanduser()
        if path.is_dir():
            backbone = _load_folder(path, allow_pickle=allow_pickle)
        elif path.is_file():
            backbone = _load_single_file(path, allow_pickle=allow_pickle, config=config, offline=_offline(offline))
        elif _looks_like_repo_id(source_str):
            backbone = _load_repo(source_str, allow_pickle=allow_pickle, offline=_offline(offline))
        else:
            raise RetouchError(
                f"model '{source_str}' not found: give a diffusers folder, a .safetensors file, a Hugging Face "
                f"repo id (owner/name) or one of {', '.join(TINY_NAMES)}"
            )
    if prediction_type is not None:
        backbone.schedule = replace(backbone.schedule, prediction_type=prediction_type)
        backbone.scheduler_config["prediction_type"] = prediction_type
    return backbone.to(device=device, dtype=dtype)


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not Path(parts[0]).exists()


def _pipeline_kwargs(allow_pickle: bool) -> dict:
    # safety_checker=None keeps us from loading (or needing) the NSFW classifier of SD 1.x repos.
    return {"use_safetensors": None if allow_pickle else True, "safety_checker": None, "requires_safety_checker": False}


def _load_folder(path: Path, *, allow_pickle: bool) -> Backbone:
    from diffusers import DiffusionPipeline

    if not (path / "model_index.json").is_file():
        raise RetouchError(f"'{path}' is not a diffusers model folder (no model_index.json)")
    try:
        pipe = DiffusionPipeline.from_pretrained(path, **_pipeline_kwargs(allow_pickle))
    except (OSError, EnvironmentError, ValueError) as err:
        if not allow_pickle and _has_pickle_weights(path):
            raise RetouchError(
                f"'{path}' has only pickle (.bin/.ckpt) weights; loading pickles can run arbitrary code, "
                "so pass --allow-pickle (allow_pickle=True) if you trust it"
            ) from err
        raise RetouchError(f"cannot load model folder '{path}': {first_line(err)}") from err
    return from_pipeline(pipe, source=str(path))


def _has_pickle_weights(path: Path) -> bool:
    return any(path.rglob("*.bin")) or any(path.rglob("*.ckpt")) or any(path.rglob("*.pt"))


def _load_repo(repo_id: str, *, allow_pickle: bool, offline: bool) -> Backbone:
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    kwargs = _pipeline_kwargs(allow_pickle)
    try:
        pipe = DiffusionPipeline.from_pretrained(repo_id, local_files_only=True, **kwargs)
    except (OSError, EnvironmentError, ValueError) as cached_err:
        if offline:
            raise RetouchError(
                f"model '{repo_id}' is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                f"retouch is offline: download it where there is internet (hf download {repo_id}) and copy "
                "the cache, or pass a local diffusers folder or .safetensors file"
            ) from cached_err
        try:
            pipe = DiffusionPipeline.from_pretrained(repo_id, **kwargs)
        except (OSError, EnvironmentError, ValueError) as err:
            raise RetouchError(
                f"cannot get model '{repo_id}' from the Hugging Face hub ({first_line(err)}); "
                "pass a local diffusers folder or .safetensors file instead"
            ) from err
    return from_pipeline(pipe, source=repo_id)


# ---------------------------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------------------------
def _save_single_file(backbone: Backbone, path: Path) -> None:
    """All weights in one safetensors file; configs and tokenizer files in its metadata."""
    from safetensors.torch import save_file

    tensors, metadata = {}, {"format": SINGLE_FILE_FORMAT, "family": backbone.family}
    modules = {"vae": backbone.vae, "unet": backbone.unet}
    for i, encoder in enumerate(backbone.text_encoders):
        modules["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = encoder
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
        config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
        metadata[f"{name}.config"] = json.dumps(config, default=str)
        metadata[f"{name}.class"] = type(module).__name__
    for i, tokenizer in enumerate(backbone.tokenizers):
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            files = {f.name: f.read_text(encoding="utf-8") for f in Path(tmp).iterdir() if f.is_file()}
        metadata["tokenizer" if i == 0 else f"tokenizer_{i + 1}"] = json.dumps(files)
    metadata["scheduler.config"] = json.dumps(backbone.scheduler_config, default=str)
    metadata["force_zeros_for_empty_prompt"] = json.dumps(backbone.force_zeros_for_empty_prompt)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def _load_single_file(path: Path, *, allow_pickle: bool, config: str | None, offline: bool) -> Backbone:
    suffix = path.suffix.lower()
    if suffix != ".safetensors":
        if suffix in (".ckpt", ".pt", ".pth", ".bin") and not allow_pickle:
            raise RetouchError(
                f"'{path}' is a pickle checkpoint; loading pickles can run arbitrary code, so pass "
                "--allow-pickle (allow_pickle=True) if you trust it, or convert it to .safetensors"
            )
        if suffix not in (".ckpt", ".pt", ".pth", ".bin"):
            raise RetouchError(f"'{path}' is not a checkpoint retouch reads (.safetensors, or .ckpt with --allow-pickle)")
        return _load_original_checkpoint(path, config=config, offline=offline)
    metadata = _safetensors_metadata(path)
    if metadata.get("format") == SINGLE_FILE_FORMAT:
        return _load_retouch_file(path, metadata)
    return _load_original_checkpoint(path, config=config, offline=offline)


def _safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise RetouchError(f"cannot read '{path}': not a valid safetensors file ({first_line(err)})") from err


def _load_retouch_file(path: Path, metadata: dict) -> Backbone:
    import diffusers
    import transformers
    from safetensors.torch import load_file

    state = load_file(str(path))
    modules = {}
    for name in ("vae", "unet", "text_encoder", "text_encoder_2"):
        if f"{name}.config" not in metadata:
            continue
        class_name, config = metadata[f"{name}.class"], json.loads(metadata[f"{name}.config"])
        if name.startswith("text_encoder"):
            cls = getattr(transformers, class_name)
            module = cls(cls.config_class.from_dict(config))
        else:
            cls = getattr(diffusers, class_name)
            module = cls.from_config(config)
        prefix = name + "."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(weights, strict=True)
        modules[name] = module.eval()
    tokenizers = []
    for key in ("tokenizer", "tokenizer_2"):
        if key in metadata:
            tokenizers.append(_tokenizer_from_files(json.loads(metadata[key])))
    scheduler_config = json.loads(metadata["scheduler.config"])
    sdxl = metadata.get("family") == "sdxl"
    encoders = (modules["text_encoder"], modules["text_encoder_2"]) if sdxl else (modules["text_encoder"],)
    from diffusers import DDIMScheduler

    backbone = Backbone(
        vae=modules["vae"], unet=modules["unet"], text_encoders=encoders, tokenizers=tuple(tokenizers),
        schedule=NoiseSchedule.from_scheduler_config(DDIMScheduler.from_config(scheduler_config).config),
        family="sdxl" if sdxl else "sd", source=str(path), scheduler_config=scheduler_config,
        force_zeros_for_empty_prompt=json.loads(metadata.get("force_zeros_for_empty_prompt", "false")),
    )
    return backbone.eval()


def _tokenizer_from_files(files: dict[str, str]):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            Path(tmp, name).write_text(text, encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp)


def _load_original_checkpoint(path: Path, *, config: str | None, offline: bool) -> Backbone:
    """An original (CompVis/Stability) checkpoint, converted by diffusers' single-file loader."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    keys = _checkpoint_keys(path)
    sdxl = any(k.startswith("conditioner.embedders.1") for k in keys)
    pipeline_cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"local_files_only": offline}
    if config is not None:
        kwargs["config"] = str(config)  # diffusers takes a str only, not a Path
    if not sdxl:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = pipeline_cls.from_single_file(str(path), **kwargs)
    except (OSError, EnvironmentError, ValueError, KeyError) as err:
        hint = "" if config else " (pass --config with a diffusers folder or repo id of the same architecture)"
        raise RetouchError(f"cannot load checkpoint '{path}': {first_line(err)}{hint}") from err
    return from_pipeline(pipe, source=str(path))


def _checkpoint_keys(path: Path) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    state = torch.load(str(path), map_location="cpu", weights_only=False)  # opt-in checked by the caller
    return list(state.get("state_dict", state).keys())


# ---------------------------------------------------------------------------------------------
# Tiny configurations (diffusers' fast-test shapes)
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _tiny_vocabulary() -> tuple[dict, list]:
    """The tiny tokenizer's BPE (vocab, merges), trained once per process.

    tokenizers' BPE trainer breaks ties between equally frequent pairs nondeterministically, so
    training it for every tiny model gave the models of one process different vocabularies, hence
    different text embeddings for the same prompt (and different text-encoder identities).
    """
    from retouch.tokenizer import TINY_CORPUS, train_clip_bpe

    return train_clip_bpe(TINY_CORPUS, vocab_size=1000)


def _tiny_tokenizer():
    from retouch.tokenizer import write_clip_tokenizer

    vocab, merges = _tiny_vocabulary()
    # A private folder per call: a shared one let concurrent processes read each other's half-written
    # files. The loaded tokenizer keeps everything in memory, so the folder can go at once.
    with tempfile.TemporaryDirectory(prefix="retouch-tiny-tokenizer-") as folder:
        return write_clip_tokenizer(vocab, merges, Path(folder))


def _tiny_text_encoder(tokenizer, projection_dim: int | None = None, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, vocab_size=1000, hidden_act=act,
        projection_dim=projection_dim or 512,
    )
    torch.manual_seed(0)
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


def model_folder(model: str) -> Path | None:
    """The local folder of a model name or path (the shipped ``mini`` backbone's for ``mini``), else None:
    where a model's own files beside its weights (``method_defaults.json``, its terminal prior) are found."""
    if model == MINI_NAME:
        return MINI_DIR / "backbone"
    return Path(model) if Path(model).is_dir() else None


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def build_tiny(name: str = "tiny-sd") -> Backbone:
    """Seeded random components with diffusers' fast-test shapes (each built after manual_seed(0))."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    if name not in TINY_NAMES:
        raise RetouchError(f"unknown tiny model '{name}'; choose one of {', '.join(TINY_NAMES)}")
    unet_kwargs = dict(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    # steps_offset=1 as in every released SD config (diffusers' pipelines rewrite 0 to 1 anyway).
    scheduler_kwargs = dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    if name == "tiny-sd2-v":
        unet_kwargs.update(attention_head_dim=(2, 4), use_linear_projection=True)
        scheduler_kwargs.update(prediction_type="v_prediction")
    if name == "tiny-sdxl":
        unet_kwargs.update(
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 time ids × 8 + 32 pooled text dims
            cross_attention_dim=64,
        )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_kwargs)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4,
    )
    scheduler = DDIMScheduler(**scheduler_kwargs)
    tokenizer = _tiny_tokenizer()
    if name == "tiny-sdxl":
        encoders = (_tiny_text_encoder(tokenizer), _tiny_text_encoder(tokenizer, projection_dim=32))
        tokenizers = (tokenizer, tokenizer)
    else:
        encoders = (_tiny_text_encoder(tokenizer, act="gelu" if name == "tiny-sd2-v" else "quick_gelu"),)
        tokenizers = (tokenizer,)
    backbone = Backbone(
        vae=vae, unet=unet, text_encoders=encoders, tokenizers=tokenizers,
        schedule=NoiseSchedule.from_scheduler_config(scheduler.config),
        family="sdxl" if name == "tiny-sdxl" else "sd", source=name, scheduler_config=dict(scheduler.config),
        force_zeros_for_empty_prompt=name == "tiny-sdxl",
    )
    return backbone.eval()
