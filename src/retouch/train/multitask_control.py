"""The multitask paper's Fig. 4 as measurements: each slider swept with the other tasks off, the model's edits
beside the exact operator's on the same crops, each read by one measure of :mod:`retouch.metrics.control`.

* blur β → gradient energy falls; operator: motion blur at the crop's stored angle;
* grain σ over the dataset's five radii → high-frequency energy in the input's flat half rises; operator: the
  dataset's stored film-grain targets (Newson et al., the same renderer);
* sharpening λ at μ = 0.02 → gradient energy rises; its threshold μ at λ = 2 → it falls; operator: unsharp
  masking;
* colour transfer towards another crop's reference → the distance of the Lab statistics to that reference
  falls below the input's; operator: Reinhard's transfer.

``benchmarks/multitask_control_curves.py`` draws the curves; :mod:`retouch.bench.multitask` reads each slider's
ends as a claim. Images are (N, 3, H, W) tensors in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from retouch.data.compositing import GRAIN_NAMES, CompositingSample
from retouch.effects import motion_blur, reinhard_color_transfer, unsharp_mask
from retouch.metrics.control import colour_statistics_distance, flat_high_frequency_energy, gradient_energy
from retouch.networks.multitask import EditingVector
from retouch.train.evaluate_multitask import Case, run_model


def _gradient(edited: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    return gradient_energy(edited)


@dataclass(frozen=True)
class Slider:
    """One slider of the editing vector (Table 1 of the paper), its exact operator and what it should move."""

    key: str
    name: str
    symbol: str  # the slider's own symbol, "β"
    fixed: str  # the other parameter of its task, held still ("μ = 0.02"), or ""
    values: tuple[float, ...]
    direction: str  # "up" or "down": how the operator moves the measure as the value rises
    measure_label: str
    vector: Callable[[float], EditingVector]
    operator: Callable[[CompositingSample, float], np.ndarray]  # one crop's exact edit, (H, W, 3) in [0, 1]
    measure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (edited, sources) → (N,)

    @property
    def label(self) -> str:
        return f"{self.symbol} ({self.fixed})" if self.fixed else self.symbol

    def group(self, value: float) -> str:
        return f"{self.name}: {self.symbol}={value:g}"


def _source(sample: CompositingSample) -> np.ndarray:
    return sample.images["source"]


SLIDERS = (
    Slider("blur", "blur", "β", "", (0.1, 0.3, 0.5, 0.7, 0.9), "down", "gradient energy",
           lambda beta: EditingVector(blur=beta),
           lambda sample, beta: motion_blur(_source(sample), beta, angle=sample.params["blur_angle"]), _gradient),
    Slider("grain", "grain", "σ", "", tuple(GRAIN_NAMES), "up", "high-freq. energy, flat half",
           lambda radius: EditingVector(grain=radius), lambda sample, radius: sample.images[GRAIN_NAMES[radius]],
           flat_high_frequency_energy),
    Slider("sharpen_amount", "sharpen amount", "λ", "μ = 0.02", (1.0, 1.5, 2.0, 2.5, 3.0), "up", "gradient energy",
           lambda amount: EditingVector(sharpen=(amount, 0.02)),
           lambda sample, amount: unsharp_mask(_source(sample), amount, 0.02), _gradient),
    Slider("sharpen_threshold", "sharpen threshold", "μ", "λ = 2", (0.0, 0.025, 0.05, 0.075, 0.1), "down",
           "gradient energy", lambda threshold: EditingVector(sharpen=(2.0, threshold)),
           lambda sample, threshold: unsharp_mask(_source(sample), 2.0, threshold), _gradient),
)


def as_batch(arrays) -> torch.Tensor:
    """(N, 3, H, W) of (H, W, 3) arrays."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


def sources(samples: list[CompositingSample]) -> torch.Tensor:
    return as_batch([_source(sample) for sample in samples])


def model_edits(model, samples, vector: EditingVector, *, steps: int, seed: int, references=None,
                chunk: int = 64) -> torch.Tensor:
    """The model's edits of every crop with the same ``vector`` (and crop k's colour reference ``references[k]``)."""
    inputs = sources(samples) * 2 - 1
    cases = [Case(inputs[k], inputs[k], None if references is None else references[k] * 2 - 1, None, vector)
             for k in range(len(samples))]
    return ((run_model(model, cases, num_steps=steps, seed=seed, chunk=chunk).float() + 1) / 2).clamp(0, 1)


def operator_edits(samples, slider: Slider, value: float) -> torch.Tensor:
    """The exact operator's edits of every crop at one slider value."""
    return as_batch([slider.operator(sample, value) for sample in samples])


def sweep(model, samples, slider: Slider, *, steps: int, seed: int, chunk: int = 64) -> list[dict]:
    """The input's measure per crop, then per slider value the model's and the operator's."""
    unedited = sources(samples)
    rows = [{"value": None, "input": slider.measure(unedited, unedited).tolist()}]
    for value in slider.values:
        edited = model_edits(model, samples, slider.vector(value), steps=steps, seed=seed, chunk=chunk)
        rows.append({"value": value, "model": slider.measure(edited, unedited).tolist(),
                     "operator": slider.measure(operator_edits(samples, slider, value), unedited).tolist()})
    return rows


def colour_references(samples) -> torch.Tensor:
    """Crop k's colour reference: crop k + 1's reference image (the last crop takes the first's), so each crop
    is pulled towards colours that are not its own."""
    return as_batch([samples[(k + 1) % len(samples)].images["reference"] for k in range(len(samples))])


def colour_model_edits(model, samples, *, steps: int, seed: int, chunk: int = 64) -> torch.Tensor:
    """The model's colour transfers of every crop towards :func:`colour_references`."""
    return model_edits(model, samples, EditingVector(colour=True), steps=steps, seed=seed,
                       references=colour_references(samples), chunk=chunk)


def colour_operator_edits(samples) -> torch.Tensor:
    """Reinhard's transfers of every crop towards :func:`colour_references`."""
    references = colour_references(samples)
    return as_batch([reinhard_color_transfer(_source(sample), references[k].permute(1, 2, 0).numpy())
                     for k, sample in enumerate(samples)])


def colour_distance(images: torch.Tensor, samples) -> torch.Tensor:
    """(N,) distance of each image's Lab statistics to its crop's colour reference."""
    return colour_statistics_distance(images, colour_references(samples))


def colour_distances(model, samples, *, steps: int, seed: int, chunk: int = 64) -> dict[str, list[float]]:
    """Per crop, the colour distance to its reference of the input, the model's edit and Reinhard's."""
    edited = colour_model_edits(model, samples, steps=steps, seed=seed, chunk=chunk)
    outputs = {"input": sources(samples), "model": edited, "operator": colour_operator_edits(samples)}
    return {name: colour_distance(images, samples).tolist() for name, images in outputs.items()}
