"""Losses that steer latents: plain functions over tensors, one value per batch row.

Every loss returns a ``(B,)`` tensor, one value per image, so that summing it before ``backward``
gives each image exactly its own gradient: a batch edits like the same images one at a time.

* :func:`autocorrelation_loss`, :func:`kl_loss`, :func:`noise_regularization_loss` — pix2pix-zero's
  regularizer pulling the noise predicted during DDIM inversion towards white Gaussian noise (§3.1, Eq. 3);
  :func:`autocorrelation_gradient` and :func:`kl_gradient` are their exact gradients in closed form.
* :func:`cross_attention_loss` — pix2pix-zero's cross-attention guidance (§3.3, Eq. 5).
* :func:`patch_nce_loss` — the patch-wise contrastive (CUT / PatchNCE) loss of pix2pix-zeroCon (Eq. 15–16).

The functions assume valid tensors (see each signature); checking user input happens at the edges.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

#: The coarsest level of the autocorrelation pyramid (pix2pix-zero §3.1: "we stop at feature size 8×8").
PYRAMID_MIN_SIZE = 8


def autocorrelation_loss(
    noise: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    min_shift: int = 1,
    min_size: int = PYRAMID_MIN_SIZE,
    rescale: bool = False,
) -> torch.Tensor:
    """Pairwise autocorrelation term L_pair of pix2pix-zero (§3.1, Eq. 3), one value per batch row.

    ``noise`` is (B, C, H, W). For every channel c and pyramid level p it adds the squared
    autocorrelation coefficients at one random offset δ along each axis, with circular indexing:

        L_pair = Σ_p Σ_c [ (1/S_p² Σ_{x,y} η^p_{x,y,c} η^p_{x−δ,y,c})² + (1/S_p² Σ_{x,y} η^p_{x,y,c} η^p_{x,y−δ,c})² ]

    η⁰ is ``noise`` and η^{p+1} is η^p average-pooled over 2×2 cells, down to ``min_size``. The paper
    draws δ anew at every call so that long-range correlations are penalised too; δ is uniform in
    [``min_shift``, S_p/2) (the official code after its fix uses δ ≥ 1; diffusers' deprecated pipeline
    still allows δ = 0, i.e. ``min_shift=0``, which adds the trivial term (mean η²)²). One δ per
    (channel, level) is shared by the whole batch, drawn from ``generator`` in channel-then-level
    order (the order diffusers draws them for one image), so results are reproducible and a batch
    equals its images edited one by one.

    ``rescale`` multiplies each pooled level by 2 to keep white noise at unit variance, as the
    paper's text says; the official code and diffusers do not (their regularizer weights were tuned
    without it), so it is off by default.
    """
    levels = _pyramid(noise, min_size, rescale)
    shifts = _draw_shifts(noise.shape[1], levels, generator, min_shift)
    per_row = noise.new_zeros(noise.shape[0])
    for level, level_shifts in zip(levels, shifts):
        for dim in (-2, -1):
            coefficient = (level * _roll_channels(level, level_shifts, dim)).mean(dim=(-2, -1))  # (B, C)
            per_row = per_row + coefficient.pow(2).sum(dim=-1)
    return per_row


def autocorrelation_gradient(
    noise: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    min_shift: int = 1,
    min_size: int = PYRAMID_MIN_SIZE,
    rescale: bool = False,
) -> torch.Tensor:
    """∂ Σ_rows L_pair / ∂ noise in closed form, for the offsets :func:`autocorrelation_loss` would draw.

    With ρ = mean(η·roll(η, δ)) a level's coefficient, ∂ρ²/∂η = 2ρ·(roll(η, δ) + roll(η, −δ)) / S²;
    a pooled level passes its gradient back as a ×½ nearest upsampling per axis (times 2 when
    ``rescale``). Equal to autograd through :func:`autocorrelation_loss` (tested) at a fraction of
    the cost: the inversion calls it 25 times per step.
    """
    levels = _pyramid(noise, min_size, rescale)
    shifts = _draw_shifts(noise.shape[1], levels, generator, min_shift)
    upstream = None
    for level, level_shifts in reversed(list(zip(levels, shifts))):
        grad = torch.zeros_like(level)
        for dim in (-2, -1):
            forward, backward = _roll_channels(level, level_shifts, dim), _roll_channels(level, -level_shifts, dim)
            coefficient = (level * forward).mean(dim=(-2, -1), keepdim=True)
            grad = grad + 2 * coefficient * (forward + backward) / (level.shape[-2] * level.shape[-1])
        if upstream is not None:  # the coarser level was avg_pool2d(this level) (× 2 when rescaling)
            spread = upstream.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) / 4 * (2.0 if rescale else 1.0)
            grad = grad + F.pad(spread, (0, level.shape[-1] - spread.shape[-1], 0, level.shape[-2] - spread.shape[-2]))
        upstream = grad
    return upstream


def _pyramid(noise: torch.Tensor, min_size: int, rescale: bool) -> list[torch.Tensor]:
    """η⁰ = noise, η^{p+1} = 2×2 average pool of η^p (× 2 if ``rescale``), until a side ≤ ``min_size``."""
    levels = [noise]
    while min(levels[-1].shape[-2:]) > min_size:
        levels.append(F.avg_pool2d(levels[-1], kernel_size=2) * (2.0 if rescale else 1.0))
    return levels


def _draw_shifts(channels: int, levels: list[torch.Tensor], generator, min_shift: int) -> list[torch.Tensor]:
    """Per level, a (C,) tensor of offsets δ, drawn channel-then-level (diffusers' order)."""
    drawn = [[0] * channels for _ in levels]
    for channel in range(channels):
        for p, level in enumerate(levels):
            high = max(min(level.shape[-2:]) // 2, min_shift + 1)
            drawn[p][channel] = int(torch.randint(min_shift, high, (1,), generator=generator).item())
    return [torch.tensor(row, device=levels[0].device) for row in drawn]


def _roll_channels(x: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.roll`` of (B, C, H, W) along ``dim`` by a different shift per channel (circular)."""
    size = x.shape[dim]
    index = (torch.arange(size, device=x.device) - shifts[:, None]) % size  # (C, size)
    index = index[None, :, :, None] if dim == -2 else index[None, :, None, :]
    return torch.gather(x, dim % x.ndim, index.expand(x.shape))


def kl_loss(noise: torch.Tensor, *, per_channel: bool = False) -> torch.Tensor:
    """KL divergence term L_KL of pix2pix-zero (§3.1), one value per batch row.

    With μ, σ² the mean and (unbiased) variance of a row's values this is σ² + μ² − 1 − log σ², twice
    KL(N(μ, σ²) ‖ N(0, 1)) as in VAEs (Kingma & Welling 2014; the official code drops the ½), zero
    exactly at μ = 0, σ² = 1. The official code and diffusers take μ, σ² over the whole noise map of
    an image (``per_channel=False``); ``per_channel=True`` takes them per channel and averages the
    penalties, which also pins every channel's own mean and variance.
    """
    dims = (-2, -1) if per_channel else (-3, -2, -1)
    mean, var = noise.mean(dim=dims), noise.var(dim=dims)
    penalty = var + mean**2 - 1 - torch.log(var + 1e-7)
    return penalty.mean(dim=-1) if per_channel else penalty


def kl_gradient(noise: torch.Tensor, *, per_channel: bool = False) -> torch.Tensor:
    """∂ Σ_rows L_KL / ∂ noise in closed form (see :func:`kl_loss`; equal to autograd, tested).

    With N values per statistic, ∂σ²/∂η = 2(η − μ)/(N − 1) and ∂μ/∂η = 1/N, so
    ∂L/∂η = (1 − 1/σ²)·2(η − μ)/(N − 1) + 2μ/N, divided by C when penalties are averaged per channel.
    """
    dims = (-2, -1) if per_channel else (-3, -2, -1)
    count = math.prod(noise.shape[d] for d in dims)
    mean, var = noise.mean(dim=dims, keepdim=True), noise.var(dim=dims, keepdim=True)
    grad = (1 - 1 / (var + 1e-7)) * 2 * (noise - mean) / (count - 1) + 2 * mean / count
    return grad / noise.shape[1] if per_channel else grad


def noise_regularization_loss(
    noise: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    lambda_kl: float = 20.0,
    min_shift: int = 1,
    rescale: bool = False,
) -> torch.Tensor:
    """L_auto = L_pair + λ·L_KL (pix2pix-zero §3.1, λ = 20 in the supplement), one value per row.

    The inversion (:func:`retouch.inversion.regularize_noise`) descends the two terms in alternating
    steps as the official code does; this is the combined objective those steps decrease.
    """
    pair = autocorrelation_loss(noise, generator, min_shift=min_shift, rescale=rescale)
    return pair + lambda_kl * kl_loss(noise)


def cross_attention_loss(
    maps: Mapping[str, torch.Tensor], reference_maps: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Cross-attention guidance loss L_xa (pix2pix-zero §3.3, Eq. 5), one value per batch row.

    ``maps[name]`` and ``reference_maps[name]`` are softmax probabilities (B, heads, queries, tokens)
    of the same layer. Eq. 5 writes the L2 norm ‖M_edit − M_ref‖₂; the official code (and diffusers)
    use its square, summed over query positions and tokens, averaged over heads and summed over
    layers — that is what the paper's guidance step sizes are tuned for, so that is what we compute.
    Only layers present in both mappings count.
    """
    total = None
    for name, edited in maps.items():
        if name not in reference_maps:
            continue
        diff = edited.float() - reference_maps[name].to(edited.device, torch.float32)  # fp16 sums lose precision
        per_row = diff.pow(2).sum(dim=(-2, -1)).mean(dim=-1)  # (B,)
        total = per_row if total is None else total + per_row
    if total is None:
        raise ValueError("cross_attention_loss: no layer is shared by the maps and the reference maps")
    return total


def patch_nce_loss(
    features_query: torch.Tensor,
    features_key: torch.Tensor,
    num_patches: int = 256,
    temperature: float = 0.07,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Patch-wise contrastive loss L_e of pix2pix-zeroCon (Eq. 15–16; CUT, Park et al. 2020), per row.

    ``features_query`` (B, N, C) are features of the reconstruction trajectory, ``features_key``
    (B, N, C) the same layer's features of the edited trajectory, N spatial positions. ``num_patches``
    positions s are drawn at random (shared by the batch, from ``generator``); each query h^s is
    contrasted with the key at the same position (the positive ĥ^s) against the keys at the other
    drawn positions (the negatives ĥ^{S∖s}), with L2-normalised features and temperature τ:

        ℓ = −log( exp(h·ĥ⁺/τ) / (exp(h·ĥ⁺/τ) + Σ_j exp(h·ĥ⁻_j/τ)) )

    averaged over the drawn positions. Queries are detached: the loss moves the edited trajectory
    towards the reconstruction's structure, never the other way round.
    """
    positions = features_query.shape[1]
    chosen = torch.randperm(positions, generator=generator)[: min(num_patches, positions)]
    chosen = chosen.to(features_query.device)
    query = F.normalize(features_query.detach()[:, chosen].float(), dim=-1)  # (B, S, C)
    key = F.normalize(features_key[:, chosen].float(), dim=-1)
    logits = query @ key.transpose(1, 2) / temperature  # (B, S, S): diagonal = positives
    targets = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(dim=-1)
