"""Multi-task image-to-image diffusion with fine-grained control (the multitask paper, §3.2, Table 1),
as ``retouch edit --method multitask``.

One latent diffusion model learns five compositing effects at once (the network:
:mod:`retouch.networks.multitask`; its training and Eq. 2 loss: :mod:`retouch.train.multitask`). At
inference any combination of tasks can be switched on: DDIM from random noise, each example
conditioned on its own source latent, colour reference and editing vector C.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from retouch.errors import RetouchError, check_choice
from retouch.methods import steps_option, trained_model_folder
from retouch.networks.multitask import EditingVector, MultitaskModel, conditioning_inputs, decode
from retouch.options import check_options, option

#: Where sampling starts: random noise (the paper) or the DDIM inversion of the input.
STARTS = ("noise", "ddim-inversion")


@torch.no_grad()
def multitask_edit(model: MultitaskModel, images: torch.Tensor, vector: EditingVector, *,
                   reference: torch.Tensor | None = None, mask: torch.Tensor | None = None, num_steps: int = 50,
                   seed: int = 0, start: str = "noise", eta: float = 0.0, progress=None) -> torch.Tensor:
    """Edit images (B, 3, H, W) in [−1, 1] with any combination of tasks; DDIM from random noise.

    ``start="ddim-inversion"`` starts from the DDIM inversion of the source latents instead (the paper
    tried it and found it harder to edit; offered for comparison). ``eta`` > 0 samples stochastically
    (Song et al. 2021, Eq. 16; 1 = DDPM's posterior noise), its fresh noise seeded from ``seed`` too.
    """
    vector.validate()
    source, side, c = conditioning_inputs(model, images, vector, reference, mask)
    noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(seed)).to(source)
    fresh = torch.Generator().manual_seed(seed + 1) if eta > 0 else None
    return sample_conditioned(model, source, side, c, noise, num_steps=num_steps, start=start, progress=progress,
                              eta=eta, generator=fresh)


@torch.no_grad()
def sample_conditioned(model: MultitaskModel, source_latents: torch.Tensor, side: torch.Tensor,
                       vectors: torch.Tensor, noise: torch.Tensor, *, num_steps: int = 50, start: str = "noise",
                       progress=None, eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM sampling of z_0^B given each example's own conditions (z_0^A, the side conditions — I_ref
    small, and the hole map if the model takes one — and C), then decode.

    Every example of the batch may switch on different tasks; ``noise`` is the start for ``"noise"``. ``eta`` > 0
    adds fresh noise at every step (drawn from ``generator``), as DDPM does.
    """
    from retouch.sampling import NoiseSchedule, ddim_invert, ddim_sample, ddim_timesteps

    check_choice("--start", start, STARTS)
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)

    def denoise(latents, t, _cond):
        return model.denoiser(latents, torch.full((latents.shape[0],), t, device=latents.device), source_latents,
                              side, vectors)

    timesteps = ddim_timesteps(schedule, num_steps)
    if start == "noise":
        latents = noise
    else:
        latents = ddim_invert(denoise, schedule, source_latents, None, num_steps=num_steps)
    latents = ddim_sample(denoise, schedule, latents, timesteps, None, num_steps=num_steps, callback=progress, eta=eta,
                          generator=generator)
    return decode(model, latents)


# ---------------------------------------------------------------------------------------------
# The method, as `retouch edit --method multitask`
# ---------------------------------------------------------------------------------------------
#: Where the shipped multitask model lives (the default ``--model`` of ``--method multitask``).
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "mini" / "multitask"


@dataclass
class MultitaskConfig:
    """The effects to apply, with the option names of ``retouch effects``; a task is on when given."""

    blur: float | None = option(None, "β, motion-blur degree in [0, 1] (Table 1)")
    grain: float | None = option(None, "σ, film-grain size in [0, 0.1] (Table 1)")
    reference: str = option("", "colour reference image I_ref: turns colour transfer on")
    sharpen: str = option("", "λ,μ: sharpening amount [1, 3] and threshold [0, 0.1]")
    mask: str = option("", "inpainting mask image, white = hole: turns inpainting on")
    num_steps: int = steps_option(50, "DDIM steps")
    start: str = option("noise", "noise (the paper) or ddim-inversion of the input (which the paper found harder to "
                                 "edit)", choices=STARTS)
    eta: float = option(0.0, "η of the sampler: 0 = DDIM (the paper), 1 = fresh noise at each step as DDPM "
                             "(a model folder may ask for its own)", at_least=0.0, at_most=1.0)
    seed: int = option(0, "seed of the starting noise")

    def vector(self) -> EditingVector:
        from retouch.effects.sharpen import parse_sharpen

        return EditingVector(blur=self.blur, grain=self.grain, colour=bool(self.reference), inpaint=bool(self.mask),
                             sharpen=parse_sharpen(self.sharpen) if self.sharpen else None)

    def validate(self) -> None:
        vector = self.vector()
        vector.validate()
        if not any(vector.active):
            raise RetouchError("no task chosen: give at least one of --blur, --grain, --reference, --mask, --sharpen")
        check_options(self)

    def input_files(self) -> tuple[str, ...]:
        return tuple(path for path in (self.reference, self.mask) if path)


def load_multitask_inputs(config: MultitaskConfig, size: tuple[int, int], device, dtype) -> dict:
    """The CLI's ``prepare`` hook: the reference image and the hole mask files, by :func:`multitask_tensors`."""
    from retouch.imageio import load_image, load_map

    return multitask_tensors(size, device, dtype, reference=load_image(config.reference) if config.reference else None,
                             hole=load_map(config.mask, size=size) if config.mask else None)


def multitask_tensors(size: tuple[int, int], device, dtype, *, reference=None, hole=None) -> dict:
    """``prepare``'s result at ``size`` = (width, height): the colour ``reference`` (H, W, 3) in [0, 1] resized
    to it, and the keep-mask 1 − hole of a ``hole`` map already at ``size`` (values > 1/2 are the hole).
    The CLI reads them from files, the app hands them over in memory."""
    from retouch.imageio import resize_image, to_tensor

    inputs = {}
    if reference is not None:
        inputs["reference"] = to_tensor(resize_image(reference, size), device=device, dtype=dtype)
    if hole is not None:
        inputs["mask"] = torch.from_numpy(~(hole > 0.5)).to(device, dtype)[None, None]
    return inputs


def load_multitask_model(model: str, *, device="cpu", dtype=torch.float32, **_) -> MultitaskModel:
    """``--model`` for ``--method multitask``: a folder written by ``retouch train multitask``. Its sampler η
    (``loaded.eta``) is the folder's ``method_defaults.json`` value, which every edit of the CLI and the app
    also starts from; the evaluation samples each model at its own."""
    from retouch.methods import get_method, model_method_defaults

    folder = trained_model_folder(model, "multitask.json", SHIPPED_MODEL, "multitask",
                                  not_shipped="no multitask model is shipped yet")
    loaded = MultitaskModel.load(folder, device=device)
    loaded.eta = float(model_method_defaults(get_method("multitask"), str(folder)).get("eta", 0.0))
    if loaded.vae is not None:  # None: a pixel-space model
        loaded.vae.to(dtype)
    loaded.denoiser.to(dtype)
    return loaded


def _register() -> None:
    from retouch.methods import register

    @register("multitask", MultitaskConfig, "multi-task compositing: blur, grain, colour, inpaint, sharpen with "
              "sliders (multitask paper)", prepare=load_multitask_inputs, load_model=load_multitask_model,
              default_model=str(SHIPPED_MODEL))
    def multitask(model: MultitaskModel, images: torch.Tensor, config: MultitaskConfig, progress=None, *,
                  reference=None, mask=None) -> torch.Tensor:
        return multitask_edit(model, images, config.vector(), reference=reference, mask=mask,
                              num_steps=config.num_steps, seed=config.seed, start=config.start, eta=config.eta,
                              progress=progress)


_register()

