"""A caption-conditioned start for text-to-image sampling: the low-frequency part of q(x_T | c).

Stable Diffusion's scaled-linear schedule does not reach zero signal: at the first of 25 DDIM
steps x_T = √ᾱ_T·x₀ + √(1−ᾱ_T)·ε keeps √ᾱ_T ≈ 0.085 of the scene (Lin et al. 2024, "Common diffusion noise
schedules and sample steps are flawed", §2). A U-Net trained on that schedule learns to read the scene's
per-channel latent means — on the mini world, its background — from x_T, and sampling from pure noise
N(0, I) then hands it a random background whatever the caption says (docs/world_v2.md, "The
terminal-SNR leak").

Lin et al. remove the leak by retraining at zero terminal SNR; that also removes what DDIM inversion
relies on to keep a scene's layout (measured in docs/world_v2.md), so the edits get worse. This module
keeps the model and fixes the *start* instead: it draws x_T from the forward marginal's low-frequency
part,

    x_T = √ᾱ_T · m(c) + √(1 − ᾱ_T) · ε,     m(c) = W·φ(c) + s ⊙ ξ,   ε ~ N(0, I), ξ ~ N(0, I_C),

where m(c) ∈ ℝ^C stands for the per-channel spatial mean of an x₀ with caption c (broadcast over the
latent grid), φ(c) is the mean over tokens of the text encoder's states (with a constant 1), W is a
ridge regression of training scenes' channel means on φ, and s the residual standard deviation per
channel, so the start keeps the spread of backgrounds a caption allows. The spatial detail of x₀ is
left out: it is √ᾱ_T·(x₀ − m) ≈ 0.085 of a unit-variance field under noise of variance ≈ 1.

Only text-to-image sampling from noise uses it. Edits start from an inverted latent, which carries the
scene's own means; they do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from retouch.errors import RetouchError

TERMINAL_PRIOR_FILE = "terminal_prior.safetensors"


def text_features(hidden_states: torch.Tensor) -> torch.Tensor:
    """φ(c): (B, D + 1), the mean over tokens of the text states and a constant 1 (the intercept)."""
    mean = hidden_states.float().mean(dim=1)
    return torch.cat([mean, torch.ones_like(mean[:, :1])], dim=1)


@dataclass(frozen=True)
class TerminalPrior:
    """m(c) = W·φ(c) + s ⊙ ξ, the per-channel mean of x₀ a caption implies (see the module's docstring)."""

    weight: torch.Tensor  #: (D + 1, C) ridge regression of x₀'s channel means on φ(c)
    residual_std: torch.Tensor  #: (C,) standard deviation of what W·φ(c) leaves unexplained

    def channel_means(self, hidden_states: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C) draws of m(c) for the captions whose text states are ``hidden_states`` (B, tokens, D)."""
        if hidden_states.shape[-1] + 1 != self.weight.shape[0]:
            raise RetouchError(f"the terminal prior was fitted on text states of width "
                               f"{self.weight.shape[0] - 1}, not {hidden_states.shape[-1]}")
        expected = text_features(hidden_states).cpu() @ self.weight
        spread = torch.randn(expected.shape, generator=generator) * self.residual_std
        return expected + spread

    def start(self, noise: torch.Tensor, hidden_states: torch.Tensor, alpha_T: torch.Tensor | float,
              generator: torch.Generator | None = None, centre_noise: bool = True) -> torch.Tensor:
        """x_T = √ᾱ_T·m(c) + √(1−ᾱ_T)·ε for ε = ``noise`` (B, C, h, w) and ᾱ_T the first sampling step's ᾱ.

        ``centre_noise``: ε's own channel means are removed first, so x_T's channel means are exactly
        √ᾱ_T·m(c). Those of 16² noise have a standard deviation of 1/16, about twice √ᾱ_T·m's spread
        across scenes, and they, not m(c), would then pick the background in a fifth of the samples.
        """
        if noise.shape[1] != self.weight.shape[1]:
            raise RetouchError(f"the terminal prior has {self.weight.shape[1]} latent channels, the model "
                               f"{noise.shape[1]}")
        if centre_noise:
            noise = noise - noise.mean(dim=(2, 3), keepdim=True)
        alpha_T = torch.as_tensor(alpha_T, dtype=torch.float32)
        means = self.channel_means(hidden_states, generator).to(noise)
        return alpha_T.sqrt().to(noise) * means[:, :, None, None] + (1 - alpha_T).sqrt().to(noise) * noise

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / TERMINAL_PRIOR_FILE
        save_file({"weight": self.weight.contiguous(), "residual_std": self.residual_std.contiguous()}, str(path))
        return path


def load_terminal_prior(folder: str | Path | None) -> TerminalPrior | None:
    """The prior saved in a model folder, or None when the folder has none (the model then starts from N(0, I))."""
    if folder is None:
        return None
    path = Path(folder) / TERMINAL_PRIOR_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        prior = TerminalPrior(tensors["weight"].float(), tensors["residual_std"].float())
    except Exception as err:  # a corrupt or foreign file: one clear line
        raise RetouchError(f"cannot read the terminal prior '{path}': {err}") from err
    if prior.weight.dim() != 2 or prior.residual_std.shape != (prior.weight.shape[1],):
        raise RetouchError(f"'{path}' is not a terminal prior: weight {tuple(prior.weight.shape)}, "
                           f"residual_std {tuple(prior.residual_std.shape)}")
    return prior


def fit_terminal_prior(hidden_states: torch.Tensor, latents: torch.Tensor, ridge: float = 1e-3) -> TerminalPrior:
    """Least squares with a ridge penalty (not on the intercept) of the latents' channel means on φ(c).

    ``hidden_states`` (N, tokens, D): the captions' text states; ``latents`` (N, C, h, w): their scenes'
    scaled latents. ``ridge`` is relative to the features' mean square, so it does not depend on their scale.
    """
    features = text_features(hidden_states).double()
    targets = latents.double().mean(dim=(2, 3))
    gram = features.T @ features / len(features)
    penalty = torch.eye(gram.shape[0], dtype=gram.dtype) * ridge * gram.diagonal()[:-1].mean()
    penalty[-1, -1] = 0.0
    weight = torch.linalg.solve(gram + penalty, features.T @ targets / len(features))
    residual = targets - features @ weight
    return TerminalPrior(weight.float(), residual.std(dim=0).float())
