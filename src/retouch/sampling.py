"""The sampling core: plain functions over tensors.

Every method composes these; none re-implements a DDIM step or loop. :func:`ddim_loop` is the one
loop (in the spirit of k-diffusion's samplers): sampling and inversion are lists of :class:`DDIMStep`,
and a method changes what happens inside a step through named hooks (``correct`` x_t before the
network, ``regularize`` its ε, ``solve_noise`` for a stochastic step's z, ``blend`` the result,
``callback`` to observe) rather than by copying the loop. The functions assume valid tensors
(latents ``(B, C, h, w)``, integer timesteps) and a :class:`NoiseSchedule`; they never touch a model.
A *denoiser* is any callable ``model_output = denoise(latents, t, conditioning)``; guidance is a
wrapper around it (``classifier_free_guidance``/``multi_condition_guidance`` below).

Conventions follow diffusers' ``DDIMScheduler``/``DDIMInverseScheduler`` exactly, so results agree
with diffusers on the same model (tested to 1e-5): ᾱ_t is ``alphas_cumprod[t]``; the step below
timestep 0 uses ᾱ = 1 when ``set_alpha_to_one`` (the "final alpha"), else ᾱ_0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class NoiseSchedule:
    """The discrete variance-preserving schedule a model was trained with.

    ``alphas_cumprod[t]`` is ᾱ_t of DDPM (Ho et al. 2020, Eq. 4); ``prediction_type`` says what the
    network predicts (ε, v of Salimans & Ho 2022, or x₀); the spacing fields say how inference
    timesteps are chosen (the three options of Lin et al. 2024, Table 2, as diffusers names them).
    """

    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) float64 for exactness, cast on use
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @classmethod
    def from_scheduler_config(cls, config) -> "NoiseSchedule":
        """Build from any diffusers scheduler config (DDIM, PNDM, Euler, … share these fields)."""
        from diffusers import DDIMScheduler

        # DDIMScheduler computes ᾱ from beta_schedule/trained_betas exactly as the model's own
        # scheduler does; we keep only the numbers.
        ddim = DDIMScheduler.from_config(config)
        spacing = getattr(ddim.config, "timestep_spacing", "leading")
        return cls(
            alphas_cumprod=ddim.alphas_cumprod.to(torch.float32).clone(),
            prediction_type=ddim.config.prediction_type,
            timestep_spacing=spacing,
            steps_offset=int(ddim.config.steps_offset),
            set_alpha_to_one=bool(getattr(config, "set_alpha_to_one", ddim.config.set_alpha_to_one)),
        )

    def alpha(self, t: int) -> torch.Tensor:
        """ᾱ_t, with t < 0 meaning "past the last step" (clean data)."""
        if t < 0:
            return torch.tensor(1.0) if self.set_alpha_to_one else self.alphas_cumprod[0]
        return self.alphas_cumprod[t]


def scheduler_config_json(config) -> str:
    """A scheduler config as JSON for a file of its own, without diffusers' private keys: its
    ``_use_default_values`` would reset the fields it names to their defaults on load, undoing any value
    set after construction (e.g. a prediction type changed on a loaded backbone)."""
    import json

    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, indent=2, default=str)


def ddim_timesteps(schedule: NoiseSchedule, num_steps: int) -> list[int]:
    """Inference timesteps, noisiest first, for ``num_steps`` DDIM steps (Song et al. 2021, §4.2)."""
    n_train = schedule.num_train_timesteps
    if schedule.timestep_spacing == "linspace":
        steps = np.linspace(0, n_train - 1, num_steps).round()[::-1]
    elif schedule.timestep_spacing == "leading":
        steps = (np.arange(0, num_steps) * (n_train // num_steps)).round()[::-1] + schedule.steps_offset
    elif schedule.timestep_spacing == "trailing":
        steps = np.round(np.arange(n_train, 0, -n_train / num_steps)) - 1
    else:
        raise ValueError(f"unknown timestep spacing {schedule.timestep_spacing!r}")
    return [int(t) for t in steps]


def previous_timestep(schedule: NoiseSchedule, t: int, num_steps: int) -> int:
    """The timestep one DDIM step below ``t`` (negative past the end), as diffusers' DDIM computes it."""
    return t - schedule.num_train_timesteps // num_steps


def img2img_timesteps(schedule: NoiseSchedule, num_steps: int, strength: float) -> list[int]:
    """The tail of the schedule that starts at ``strength`` (SDEdit, Meng et al. 2022, §3).

    ``strength`` 1 keeps every step (pure generation), 0 keeps none. Rounds like diffusers' img2img.
    """
    timesteps = ddim_timesteps(schedule, num_steps)
    kept = min(int(num_steps * strength), num_steps)
    return timesteps[num_steps - kept :]


def _broadcast(alpha_t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ as a scalar or one value per batch row, shaped to broadcast over ``like`` (B, C, h, w)."""
    alpha_t = torch.as_tensor(alpha_t).to(device=like.device, dtype=like.dtype)
    return alpha_t.reshape(-1, *([1] * (like.dim() - 1))) if alpha_t.dim() > 0 else alpha_t


def split_prediction(
    sample: torch.Tensor, model_output: torch.Tensor, alpha_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂₀, ε̂) from a network output at noise level ᾱ_t.

    ε-prediction: x̂₀ = (x_t − √(1−ᾱ)ε)/√ᾱ (DDIM, Song et al. 2021, Eq. 12);
    v-prediction: v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022, §4), so x̂₀ = √ᾱ x_t − √(1−ᾱ) v and
    ε̂ = √ᾱ v + √(1−ᾱ) x_t; x₀-prediction: ε̂ = (x_t − √ᾱ x̂₀)/√(1−ᾱ), and ε̂ = 0 at ᾱ = 1, where a sample
    holds no noise (the first step of a DDIM inversion reads the output there; 0/0 would be NaN).
    """
    alpha_t = _broadcast(alpha_t, sample)
    sqrt_a, sqrt_1ma = alpha_t.sqrt(), (1 - alpha_t).sqrt()
    if prediction_type == "epsilon":
        return (sample - sqrt_1ma * model_output) / sqrt_a, model_output
    if prediction_type == "v_prediction":
        return sqrt_a * sample - sqrt_1ma * model_output, sqrt_a * model_output + sqrt_1ma * sample
    if prediction_type == "sample":
        noiseless = sqrt_1ma == 0
        epsilon = (sample - sqrt_a * model_output) / torch.where(noiseless, torch.ones_like(sqrt_1ma), sqrt_1ma)
        return model_output, torch.where(noiseless, torch.zeros_like(epsilon), epsilon)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def to_epsilon(sample, model_output, alpha_t, prediction_type) -> torch.Tensor:
    """ε̂ from any network output (see :func:`split_prediction`)."""
    return split_prediction(sample, model_output, alpha_t, prediction_type)[1]


def velocity(x0: torch.Tensor, noise: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """The v-prediction target v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022, §4)."""
    alpha_t = _broadcast(alpha_t, x0)
    return alpha_t.sqrt() * noise - (1 - alpha_t).sqrt() * x0


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x₀): x_t = √ᾱ x₀ + √(1−ᾱ) ε (DDPM, Ho et al. 2020, Eq. 4)."""
    alpha_t = _broadcast(alpha_t, x0)
    return alpha_t.sqrt() * x0 + (1 - alpha_t).sqrt() * noise


def ddim_sigma(alpha_from: torch.Tensor, alpha_to: torch.Tensor, eta: float) -> torch.Tensor:
    """σ = η √((1−ᾱ_to)/(1−ᾱ_from)) √(1 − ᾱ_from/ᾱ_to) of a DDIM step (Song et al. 2021, Eq. 16).

    η = 1 gives the DDPM posterior standard deviation √β̃_t (Ho et al. 2020, Eq. 7).
    """
    return eta * ((1 - alpha_to) / (1 - alpha_from) * (1 - alpha_from / alpha_to)).sqrt()


def ddim_transition(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_from: torch.Tensor,
    alpha_to: torch.Tensor,
    prediction_type: str = "epsilon",
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move ``sample`` from noise level ᾱ_from to ᾱ_to along the DDIM update (Song et al. 2021, Eq. 12).

    x_to = √ᾱ_to x̂₀ + √(1 − ᾱ_to − σ²) ε̂ + σ z, with σ = η √((1−ᾱ_to)/(1−ᾱ_from)) √(1 − ᾱ_from/ᾱ_to).
    Going down (ᾱ_to > ᾱ_from) this is a DDIM sampling step (η = 1 gives DDPM); going up with η = 0
    it is the deterministic DDIM inversion step. x̂₀, ε̂ are read from the output at ᾱ_from, which is
    also what diffusers' inverse scheduler does even though it evaluates the network at the target
    timestep.
    """
    x0, eps = split_prediction(sample, model_output, alpha_from, prediction_type)
    alpha_to, alpha_from = _broadcast(alpha_to, sample), _broadcast(alpha_from, sample)
    if eta > 0:
        sigma = ddim_sigma(alpha_from, alpha_to, eta)
        if noise is None:
            raise ValueError("a stochastic DDIM step (eta > 0) needs its noise tensor")
        return alpha_to.sqrt() * x0 + (1 - alpha_to - sigma**2).sqrt() * eps + sigma * noise
    return alpha_to.sqrt() * x0 + (1 - alpha_to).sqrt() * eps


def ddim_step(
    schedule: NoiseSchedule,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    t: int,
    t_prev: int,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM sampling step x_t → x_{t_prev} (``t_prev < 0`` lands on clean data)."""
    return ddim_transition(
        sample,
        model_output,
        schedule.alpha(t),
        schedule.alpha(t_prev),
        schedule.prediction_type,
        eta=eta,
        noise=noise,
    )


Denoiser = Callable[[torch.Tensor, int, object], torch.Tensor]
#: ``hook(i, t, latents) -> latents``: an extension point of :func:`ddim_loop` at step i (timestep t).
LatentHook = Callable[[int, int, torch.Tensor], torch.Tensor]
#: ``callback(i, t, latents)`` after step i: progress bars, recording. Every method reports this way.
Callback = Callable[[int, int, torch.Tensor], None]
#: ``solve_noise(i, t, latents, model_output) -> z``: step i's z, chosen once the network's output is known.
NoiseHook = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]


class DDIMStep(NamedTuple):
    """One step of :func:`ddim_loop`: the network sees ``t``, its output is read at the noise level of
    ``t_from`` and the latents move to the level of ``t_to`` (negative: clean data)."""

    t: int
    t_from: int
    t_to: int


def sampling_steps(schedule: NoiseSchedule, timesteps: Sequence[int], num_steps: int) -> list[DDIMStep]:
    """DDIM sampling over ``timesteps`` (noisiest first) of a ``num_steps`` schedule: t → one grid step below."""
    return [DDIMStep(t, t, previous_timestep(schedule, t, num_steps)) for t in timesteps]


def inversion_steps(schedule: NoiseSchedule, num_steps: int, until_step: int | None = None) -> list[DDIMStep]:
    """Deterministic DDIM inversion x₀ → x_T (Song et al. 2021, Eq. 13) on the grid :func:`ddim_timesteps`
    samples on, the first ``until_step`` steps (all if None).

    As in diffusers' ``DDIMInverseScheduler``, the network runs at the step's target t on the latents
    still one level below (the usual x_t ≈ x_{t−1} approximation) and its output is read at that lower
    level: the level of t − N/num_steps, ᾱ = 1 for the first step when ``set_alpha_to_one``.
    """
    ratio, n_train = schedule.num_train_timesteps // num_steps, schedule.num_train_timesteps
    return [DDIMStep(t, min(t - ratio, n_train - 1), t) for t in ddim_timesteps(schedule, num_steps)[::-1][:until_step]]


def ddim_loop(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    latents: torch.Tensor,
    steps: Sequence[DDIMStep],
    conditioning=None,
    *,
    eta: float = 0.0,
    noises: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    correct: LatentHook | None = None,
    regularize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    solve_noise: NoiseHook | None = None,
    blend: LatentHook | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The one DDIM loop: sampling, inversion and every method's editing pass are this with hooks.

    Step i, (t, t_from, t_to) = ``steps[i]``, in this order:

    1. ``correct(i, t, latents)`` moves x_t before the network sees it (pix2pix-zero's cross-attention
       guidance, zeroCon's contrastive term: x_t ← x_t − λ∇L);
    2. ``model_output = denoise(latents, t, conditioning)``; guidance wraps the denoiser;
    3. ``regularize(ε)`` replaces the prediction, first read as ε at ᾱ_{t_from} (pix2pix-zero's noise
       regularization of the inversion);
    4. the DDIM transition ᾱ_{t_from} → ᾱ_{t_to} (:func:`ddim_transition`); with η > 0 it adds σ z,
       z = ``solve_noise(i, t, latents, model_output)`` (edit-friendly inversion solves z from the step's
       mean), else ``noises[i]``, else drawn from ``generator`` on the CPU;
    5. ``blend(i, t, latents)`` overwrites parts of the result, which now sits at the level of step
       i + 1 (PIXELS' per-pixel start, DiffEdit's mask-guided decoding);
    6. ``callback(i, t, latents)`` observes it.
    """
    for i, (t, t_from, t_to) in enumerate(steps):
        if correct is not None:
            latents = correct(i, t, latents)
        model_output = denoise(latents, t, conditioning)
        alpha_from, prediction_type = schedule.alpha(t_from), schedule.prediction_type
        if regularize is not None:
            model_output = regularize(to_epsilon(latents, model_output, alpha_from, prediction_type))
            prediction_type = "epsilon"
        noise = None
        if solve_noise is not None:
            noise = solve_noise(i, t, latents, model_output)
        elif eta > 0:
            noise = noises[i] if noises is not None else torch.randn(
                latents.shape, generator=generator, dtype=latents.dtype, device="cpu").to(latents.device)
        latents = ddim_transition(latents, model_output, alpha_from, schedule.alpha(t_to), prediction_type,
                                  eta=eta, noise=noise)
        if blend is not None:
            latents = blend(i, t, latents)
        if callback is not None:
            callback(i, t, latents)
    return latents


def ddim_sample(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    latents: torch.Tensor,
    timesteps: Sequence[int],
    conditioning,
    *,
    num_steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noises: Sequence[torch.Tensor] | None = None,
    correct: LatentHook | None = None,
    blend: LatentHook | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run DDIM over ``timesteps`` (noisiest first); ``num_steps`` is the full schedule's length.

    With η > 0 each step adds σ_t z_t; ``noises[i]`` is step i's z (e.g. the edit-friendly noise
    maps of :func:`edit_friendly_inversion`), else z is drawn from ``generator``. ``correct``,
    ``blend`` and ``callback(i, t, latents)`` are the hooks of :func:`ddim_loop`.
    """
    return ddim_loop(denoise, schedule, latents, sampling_steps(schedule, timesteps, num_steps), conditioning,
                     eta=eta, noises=noises, generator=generator, correct=correct, blend=blend, callback=callback)


def ddim_invert(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    latents: torch.Tensor,
    conditioning,
    *,
    num_steps: int,
    until_step: int | None = None,
    regularize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion x₀ → x_T over the same grid :func:`ddim_timesteps` samples on.

    ``until_step`` stops after that many steps (inversion to an intermediate strength); ``regularize``
    replaces each predicted ε (see :func:`ddim_loop` and :mod:`retouch.inversion`).
    """
    return ddim_loop(denoise, schedule, latents, inversion_steps(schedule, num_steps, until_step), conditioning,
                     regularize=regularize, callback=callback)


def edit_friendly_inversion(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    latents: torch.Tensor,
    timesteps: Sequence[int],
    conditioning,
    forward_noises: Sequence[torch.Tensor],
    *,
    num_steps: int,
    eta: float = 1.0,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Edit-friendly DDPM noise-space inversion (Huberman-Spiegelglas, Kulikov & Michaeli, CVPR 2024, Alg. 1).

    Every x_t, t ∈ ``timesteps``, is drawn *independently* from q(x_t | x₀):
    x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε̃_t with ε̃_t = ``forward_noises[i]`` (DDPM Eq. 4). Walking down, each
    step's noise map is then solved from the stochastic DDIM update x_{t−1} = μ̂_t(x_t) + σ_t z_t
    (Song et al. 2021, Eq. 12; η = 1 is the DDPM sampler):  z_t = (x_{t−1} − μ̂_t(x_t)) / σ_t.
    Returns (x at ``timesteps[0]``, [z_t per step]). ``ddim_sample(..., eta=eta, noises=zs)`` with the
    same denoiser then lands on ``latents`` up to float rounding; another prompt gives the edit.

    Exactness needs σ_t > 0 at every step; the last step has σ = 0 only when the schedule's final
    ᾱ is 1 (``set_alpha_to_one``), where z is set to 0 and that step stays deterministic.
    """
    noisy = [add_noise(latents, eps, schedule.alpha(t)) for t, eps in zip(timesteps, forward_noises)]
    targets = noisy[1:] + [latents]  # x_{t−1} of each step, x₀ for the last
    steps, zs = sampling_steps(schedule, timesteps, num_steps), []

    def solve(i, t, sample, model_output):
        t_prev = steps[i].t_to
        mean = ddim_step(schedule, sample, model_output, t, t_prev, eta=eta, noise=torch.zeros_like(sample))
        sigma = ddim_sigma(schedule.alpha(t), schedule.alpha(t_prev), eta).item()
        zs.append((targets[i] - mean) / sigma if sigma > 0 else torch.zeros_like(sample))
        return zs[-1]

    # The loop continues from the value the sampler will compute rather than the drawn x_{t−1}, so the
    # per-step rounding of μ̂ + σz never accumulates into a drift between inversion and sampling.
    ddim_loop(denoise, schedule, noisy[0], steps, conditioning, eta=eta, solve_noise=solve, callback=callback)
    return noisy[0], zs


def classifier_free_guidance(
    uncond: torch.Tensor, cond: torch.Tensor, scale: float
) -> torch.Tensor:
    """ε̃ = ε(∅) + s·(ε(c) − ε(∅)) (Ho & Salimans 2022, Eq. 6)."""
    return uncond + scale * (cond - uncond)


def multi_condition_guidance(outputs: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
    """Nested classifier-free guidance over several conditions (portrait paper, Eq. 1).

    ``outputs[k]`` is the prediction with the first k conditions on and the rest null:
    outputs = [ε(∅,∅,…), ε(c₁,∅,…), ε(c₁,c₂,…), …]. Returns
    ε(∅,…) + Σ_k s_k·(ε(c₁..c_k) − ε(c₁..c_{k−1})), which for one condition is plain CFG.
    """
    if len(outputs) != len(scales) + 1:
        raise ValueError(f"{len(scales)} guidance scales need {len(scales) + 1} predictions, got {len(outputs)}")
    guided = outputs[0]
    for k, scale in enumerate(scales, start=1):
        guided = guided + scale * (outputs[k] - outputs[k - 1])
    return guided


def guided_denoiser(denoise: Denoiser, cond, uncond, scale: float) -> Denoiser:
    """Wrap ``denoise`` with classifier-free guidance between ``uncond`` and ``cond``.

    Both branches run as one batch (``uncond`` rows first). Conditioning objects only need a
    ``cat`` static method (see ``retouch.backbone.Conditioning``). Scale 1 skips the null branch.
    The returned callable ignores its third argument so it plugs into :func:`ddim_sample`.
    """
    if scale == 1.0:
        return lambda latents, t, _=None: denoise(latents, t, cond)
    both = type(cond).cat([uncond, cond])

    def guided(latents, t, _=None):
        out_uncond, out_cond = denoise(torch.cat([latents, latents]), t, both).chunk(2)
        return classifier_free_guidance(out_uncond, out_cond, scale)

    return guided
