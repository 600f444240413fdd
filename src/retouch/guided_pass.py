"""Guided DDIM passes: what a reconstruction pass records steers an edited pass (pix2pix-zero Algorithm 1).

A guidance *term* hooks some U-Net layers, hands over the features they recorded in the last call and
scores the edited pass's features against the reconstruction's. :func:`guided_edit_latents` runs both
passes from one inverted latent; at every step the edited x_t takes x_t ← x_t − λ ∇ Σ weight·loss
(pix2pix-zero Eq. 5 with L_xa alone; pix2pix-zeroCon Eq. 17–18 adds its contrastive term), then the
classifier-free-guided DDIM step with the edit's conditioning.

The two passes run interleaved, step by step: the reconstruction never depends on the edit, so the
result is the same as running them one after the other, but only one step's maps are ever held
(the official code keeps every step's maps of every layer). Only the chosen layers are hooked; all
others keep fused attention.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from retouch.attention import CrossAttentionRecorder, Gate, HookGroup, hooked_attention, select_layers
from retouch.errors import RetouchError
from retouch.guidance import cross_attention_loss
from retouch.sampling import (
    Callback,
    classifier_free_guidance,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    previous_timestep,
)

#: U-Net parts a term may hook: the encoder, the middle block, the decoder.
PLACES = ("down", "mid", "up")


# ---------------------------------------------------------------------------------------------
# Guidance terms: a loss between what the edited pass and the reconstruction pass record
# ---------------------------------------------------------------------------------------------
class CrossAttentionTerm:
    """L_xa (Eq. 5) on the cross-attention maps of the chosen layers."""

    name = "xa"

    def __init__(self, unet, places: Sequence[str] = PLACES, weight: float = 1.0):
        self.layers = select_layers(unet, cross=True, places=tuple(places))
        if not self.layers:
            raise RetouchError(f"this U-Net has no cross-attention layers in {', '.join(places)}")
        self.hook = CrossAttentionRecorder()
        self.weight = weight

    def forward_hooks(self, gate: Gate):
        return nullcontext()

    def features(self) -> dict[str, torch.Tensor]:
        """The maps recorded by the last U-Net call, (rows, heads, queries, tokens) per layer."""
        maps = dict(self.hook.maps)
        self.hook.clear()
        return maps

    def loss(self, edited: dict, reference: dict) -> torch.Tensor:
        return cross_attention_loss(edited, reference)


# ---------------------------------------------------------------------------------------------
# Local blending: outside where the edit departs, the edited pass follows the reconstruction
# ---------------------------------------------------------------------------------------------
class DepartureBlend:
    """Prompt-to-Prompt's local blending (Hertz et al. 2022, §3.2) on the reconstruction pass; not in pix2pix-zero.

    P2P: after every step z_{t−1} ← M ⊙ z*_{t−1} + (1 − M) ⊙ z_{t−1}, with M the edited words' cross-attention
    maps, max-pooled and thresholded at k times their maximum. pix2pix-zero's Δc moves every token state, so
    there is no word to take maps from; here M is where the edited pass has departed from the reconstruction
    so far, D = Σ_{steps so far} mean_channels |x_t^edit − x_t^rec|, max-pooled 3×3 as in P2P, M = D ≥ k·max D
    (per image). The reconstruction pass is the one pix2pix-zero already runs for its reference maps; outside
    M the result is its x₀.
    """

    def __init__(self, threshold: float):
        if not 0 < threshold < 1:
            raise RetouchError(f"the local-blend threshold k must lie in (0, 1); got {threshold}")
        self.threshold = threshold
        self.departure: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None  # the last step's M, (rows, 1, h, w) bool

    def __call__(self, edited: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        step = (edited - reconstruction).abs().float().mean(1, keepdim=True)
        self.departure = step if self.departure is None else self.departure + step
        pooled = F.max_pool2d(self.departure, 3, stride=1, padding=1)
        self.mask = pooled >= self.threshold * pooled.amax(dim=(2, 3), keepdim=True)
        return torch.where(self.mask, edited, reconstruction)


@contextmanager
def recording(unet, terms) -> Iterator[Gate]:
    """Install every term's attention hooks (one processor set) and forward hooks; always remove them.

    Yields the :class:`~retouch.attention.Gate` in front of them: U-Net calls made under
    ``gate.closed()`` run as if nothing were installed.
    """
    layers = list({layer.name: layer for term in terms for layer in term.layers}.values())
    gate = Gate(HookGroup(*(term.hook for term in terms)))
    with ExitStack() as stack:
        stack.enter_context(hooked_attention(unet, gate, layers))
        for term in terms:
            stack.enter_context(term.forward_hooks(gate))
        yield gate


def guided_edit_latents(
    backbone,
    latents: torch.Tensor,
    cond,
    edit_cond,
    uncond,
    *,
    num_steps: int,
    guidance_scale: float,
    step_size: float,
    terms: Sequence = (),
    branches: str = "conditional",
    callback: Callback | None = None,
    trace: list | None = None,
    blend: DepartureBlend | None = None,
) -> torch.Tensor:
    """Algorithm 1 of pix2pix-zero from x_inv = ``latents``: the guided edited pass, x₀ returned.

    At each DDIM step the reconstruction pass (condition ``cond``, negative ``uncond``) records what
    the ``terms`` need, then the edited pass takes x_t ← x_t − ``step_size``·∇ Σ weight·loss and the
    classifier-free-guided DDIM step with ``edit_cond``. ``branches`` says which CFG branches are
    guided (see the module docstring). ``trace``, if given, receives each step's term losses
    ``{name: (rows,)}`` measured before the gradient step (also when ``step_size`` is 0). ``blend``, if
    given, overwrites the edited x_{t−1} outside its mask with the reconstruction's after every step
    (:class:`DepartureBlend`; not in the paper).

    The edited pass is :func:`~retouch.sampling.ddim_sample` whose ``correct`` hook first steps the
    reconstruction (recording the references), then takes the guidance step on the edited x_t.
    """
    schedule, batch = backbone.schedule, latents.shape[0]
    use_cfg = guidance_scale != 1.0
    both = use_cfg and branches == "both"
    pair = type(cond).cat
    # With the caption as negative prompt (the official real-image setting) the reconstruction's two
    # CFG branches are the same call and ε_u + s(ε_c − ε_u) = ε_c: one branch does, exactly.
    single_reference = not use_cfg or _same_conditioning(cond, uncond)
    reference_cond = cond if single_reference else pair([uncond, cond])
    sampling_cond = pair([uncond, edit_cond]) if use_cfg else edit_cond
    guided_cond = sampling_cond if both else edit_cond
    steer = bool(terms) and (step_size > 0 or trace is not None)
    follow = steer or blend is not None  # the reconstruction pass runs only when something reads it
    reconstruction = latents

    def combine(output):
        return classifier_free_guidance(*output.chunk(2), guidance_scale) if use_cfg else output

    def doubled(x):
        return torch.cat([x, x]) if use_cfg else x

    def reference_rows(feature):
        """The reconstruction's rows matching the guided rows of the edited pass."""
        if single_reference:
            return torch.cat([feature, feature]) if both else feature
        return feature if both else feature[batch:]

    def correct(i, t, edited):
        """The reconstruction's step, recording the references, then Δx_t on the edited pass."""
        nonlocal reconstruction
        edited = edited[:batch]  # "both": continue from the unconditional branch's copy (official code)
        x_in = torch.cat([edited, edited]) if both else edited
        if not follow:
            return x_in
        reference_input = reconstruction if single_reference else doubled(reconstruction)
        if steer:
            output, recorded = record_features(backbone, reference_input, t, reference_cond, terms, installed=True)
        else:
            output = backbone.denoise(reference_input, t, reference_cond)
        reconstruction = ddim_step(schedule, reconstruction, output if single_reference else combine(output), t,
                                   previous_timestep(schedule, t, num_steps))
        if not steer:
            return x_in
        references = [{k: reference_rows(v) for k, v in features.items()} for features in recorded]
        return guidance_step(backbone, x_in, t, guided_cond, terms, references, step_size,
                             branches=2 if both else 1, trace=trace, installed=True)

    def denoise(x, t, _):
        """The edited pass's guided ε̃ with the hooks closed; "both": one copy per branch, both stepped with it."""
        with gate.closed() if steer else nullcontext():
            output = combine(backbone.denoise(x if both else doubled(x), t, sampling_cond))
        return torch.cat([output, output]) if both else output

    def local_blend(i, t, stepped):
        """x_{t−1} (every stacked copy) outside the blend's mask ← the reconstruction's, stepped in ``correct``.
        The mask follows the first copy, the one the next step continues from."""
        blend(stepped[:batch], reconstruction)
        copies = stepped.shape[0] // batch
        return torch.where(blend.mask.repeat(copies, 1, 1, 1), stepped, reconstruction.repeat(copies, 1, 1, 1))

    with recording(backbone.unet, terms) if steer else nullcontext() as gate:
        edited = ddim_sample(denoise, schedule, latents, ddim_timesteps(schedule, num_steps), None,
                             num_steps=num_steps, correct=correct, blend=None if blend is None else local_blend,
                             callback=None if callback is None else lambda i, t, x: callback(i, t, x[:batch]))
    return edited[:batch]


def _same_conditioning(a, b) -> bool:
    """Whether two conditionings are the same tensors (then their U-Net calls are the same call)."""
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
               for x, y in ((a.hidden_states, b.hidden_states), (a.pooled, b.pooled), (a.time_ids, b.time_ids)))


def record_features(backbone, latents, t, cond, terms, *,
                    installed: bool = False) -> tuple[torch.Tensor, list[dict]]:
    """One U-Net call with the terms' hooks in place: (network output, each term's recorded features).

    ``installed=True`` means the caller holds :func:`recording` open (one install for a whole edit).
    """
    with nullcontext() if installed else recording(backbone.unet, terms):
        output = backbone.denoise(latents, t, cond)
    return output, [term.features() for term in terms]


def guidance_step(backbone, x, t, cond, terms, references, step_size: float, *, branches: int = 1,
                  trace: list | None = None, installed: bool = False) -> torch.Tensor:
    """x − step_size · ∇_x Σ_terms weight · loss(features at x, reference) — Algorithm 1's Δx_t step.

    The per-row losses are summed (each image gets its own gradient) and divided by the number of
    guided CFG ``branches`` stacked in ``x`` (the official code averages over them).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        _, recorded = record_features(backbone, x, t, cond, terms, installed=installed)
        losses = {term.name: term.loss(features, reference)
                  for term, features, reference in zip(terms, recorded, references)}
        if trace is not None:
            trace.append({name: loss.detach() for name, loss in losses.items()})
        if step_size <= 0:
            return x.detach()
        objective = sum(term.weight * losses[term.name] for term in terms).sum() / branches
        if not objective.requires_grad:  # no term reached x (e.g. every feature map below the patch size)
            return x.detach()
        (grad,) = torch.autograd.grad(objective, x)
    return (x - step_size * grad).detach()
