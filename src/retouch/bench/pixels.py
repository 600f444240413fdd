"""PIXELS on the mini world: adherence and realism against latent surgery and scaled noise, and the
strength sweep (PIXELS Table 1a and Fig. 6, on our world).

Triples come from held-out (test-split) scenes only: the source is one scene, the exemplar the next,
and the edit map is the exemplar's object mask grown by 2 px and faded out over 6 px
(:func:`retouch.edit_maps.linear_ramp_map`): "put that object, with a soft border, into this
picture". The same triples for every system. Measured as PIXELS §4 does:

* **CLIP-I** (adherence), per triple: the judge's cosine between the edited region (cropped to the
  binarised map) and the exemplar;
* **KID** (realism; the paper reports FID, which needs thousands of images): unbiased MMD² with the
  cubic kernel (Bińkowski et al. 2018) between the judge's features of the edits and of a fixed set of
  other held-out scenes. It is a statistic of the set, so its interval and paired test resample the
  triples (:func:`kid_of_subset`).

A second figure redraws PIXELS Fig. 1 on every run (:func:`save_figure_one`: a ramp edit map, a two-exemplar
single pass; a few edits, so not cached).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from retouch.bench.harness import Claim, Metric, Table

KEY = "pixels_table1"
VERSION = 1
MAP_GROW, MAP_RAMP = 2.0, 6.0
THRESHOLD_SYSTEMS = ("pixels-linear", "pixels-quadratic", "pixels-cubic", "pixels-log", "pixels-sigmoid")
BASELINES = ("latent-surgery", "scaled-noise")
#: the baselines pasting only the cells PIXELS pastes (latent map = 1, `--paste full`) instead of m > ½: the paper
#: does not say where it binarises, and the adherence claim turns on it (docs/paper_claims_notes.md)
FULL_PASTE = " (m = 1 paste)"
FULL_PASTE_BASELINES = tuple(name + FULL_PASTE for name in BASELINES)
REFERENCES = ("unedited source", "pixel paste")
STRENGTH = 0.8
MAIN = f"strength {STRENGTH:g}"
SWEEP = (0.3, 0.5, 0.7, 0.9, 1.0)
QUICK_SWEEP = (0.3, 1.0)
SWEPT = ("pixels-linear", "latent-surgery", "scaled-noise")
#: Fig. 1's ramp rows are edited at these strengths besides the table's: the mini U-Net only knows one-background
#: scenes and pulls a long edit back to one of them, so the transition shows best at moderate t_ds^max
FIGURE_ONE_STRENGTHS = (0.4, 0.6)


def held_out(world, count: int, skip: int = 0) -> list[int]:
    """Indices of the first ``count`` test-split scenes after skipping ``skip`` of them."""
    found, index = [], 0
    while len(found) < skip + count:
        if world.split(index) == "test":
            found.append(index)
        index += 1
    return found[skip:]


def build_triples(world, count: int):
    """(sources, exemplars) in [0, 1], soft maps (B, 1, H, W) and the binary regions CLIP-I crops to."""
    import torch

    from retouch.edit_maps import grow_mask, linear_ramp_map

    indices = held_out(world, 2 * count)
    sources, exemplars, maps, regions = [], [], [], []
    for k in range(count):
        _, source, _ = world.scene(indices[2 * k])
        _, exemplar, _ = world.scene(indices[2 * k + 1])
        soft = linear_ramp_map(grow_mask(exemplar.masks.any(axis=0), MAP_GROW), MAP_RAMP)
        sources.append(source.image)
        exemplars.append(exemplar.image)
        maps.append(soft)
        regions.append(soft > 0.5)
    as_images = lambda arrays: torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()  # noqa: E731
    as_masks = lambda arrays: torch.from_numpy(np.stack(arrays)).float()[:, None]  # noqa: E731
    return as_images(sources), as_images(exemplars), as_masks(maps), as_masks(regions)


def run_method(name: str, backbone, sources, exemplars, maps, *, strength: float, steps: int, batch: int):
    """Edited images in [0, 1] for one method over all triples (in chunks of ``batch``)."""
    import torch

    from retouch.methods.exemplar_baselines import BaselineConfig, exemplar_sdedit_latents
    from retouch.methods.pixels import PixelsConfig, pixels_latents

    outputs = []
    for start in range(0, len(sources), batch):
        chunk = slice(start, start + batch)
        source, exemplar, edit_map = sources[chunk] * 2 - 1, exemplars[chunk] * 2 - 1, maps[chunk]
        if name.startswith("pixels-"):
            config = PixelsConfig(strength=strength, num_steps=steps, threshold=name.split("-", 1)[1])
            latents = pixels_latents(backbone, source, [exemplar], [edit_map], config)
        else:
            base, paste = (name.removesuffix(FULL_PASTE), "full") if name.endswith(FULL_PASTE) else (name, "half")
            config = BaselineConfig(strength=strength, num_steps=steps, paste=paste)
            latents = exemplar_sdedit_latents(backbone, source, [exemplar], [edit_map], config,
                                              scale_noise=base == "scaled-noise")
        with torch.no_grad():
            outputs.append(((backbone.decode_latents(latents) + 1) / 2).clamp(0, 1))
    return torch.cat(outputs)


def judge_features(judge, images01, batch: int = 100) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([judge.encode_images(images01[i:i + batch]) for i in range(0, len(images01), batch)]
                         ).double().numpy()


def kid_of_subset(fake: np.ndarray, real: np.ndarray, indices: np.ndarray, cache: dict | None = None) -> float:
    """Unbiased MMD² (cubic kernel, γ = 1/D) of the edits ``fake[indices]`` against all of ``real``.

    A bootstrap draw repeats triples; pairs of a triple with itself are left out of the within-edits
    term, as the unbiased estimator leaves out i = j (NaN when a draw holds one triple only). ``cache`` keeps the kernel matrices between calls.
    """
    from retouch.metrics.distribution import polynomial_kernel

    cache = {} if cache is None else cache
    if "k_ff" not in cache:
        k_rr = polynomial_kernel(real, real)
        cache["k_ff"] = polynomial_kernel(fake, fake)
        cache["k_fr"] = polynomial_kernel(fake, real).mean(axis=1)
        cache["real_term"] = (k_rr.sum() - np.trace(k_rr)) / (len(real) * (len(real) - 1))
    indices = np.asarray(indices)
    distinct = indices[:, None] != indices[None, :]
    if not distinct.any():
        return float("nan")  # a draw of one triple repeated has no pair to compare
    within = cache["k_ff"][np.ix_(indices, indices)][distinct].mean()
    return float(within + cache["real_term"] - 2 * cache["k_fr"][indices].mean())


def kid_metric(real: np.ndarray) -> Metric:
    caches: dict[int, dict] = {}

    def statistic(row, indices):
        fake = caches.setdefault(id(row), {})
        if "features" not in fake:
            fake["features"] = np.asarray(row.extra["features"], dtype=float)
        return kid_of_subset(fake["features"], real, indices, fake)

    return Metric("kid", "KID ×10³", "lower", digits=2, scale=1e3, set_statistic=statistic)


P = "PIXELS"
CLAIMS = [
    Claim(P, "PIXELS is more realistic than naive latent surgery", "kid", "pixels-linear", "latent-surgery",
          groups=(MAIN,)),
    Claim(P, "PIXELS is more realistic than spatially scaled noise", "kid", "pixels-linear", "scaled-noise",
          groups=(MAIN,)),
    Claim(P, "PIXELS is more faithful to the exemplar (CLIP-I) than latent surgery", "clip_i", "pixels-linear",
          "latent-surgery", groups=(MAIN,)),
    Claim(P, "PIXELS is more faithful to the exemplar (CLIP-I) than scaled noise", "clip_i", "pixels-linear",
          "scaled-noise", groups=(MAIN,)),
    Claim(P, "PIXELS is more faithful to the exemplar (CLIP-I) than latent surgery pasting the same cells (m = 1)",
          "clip_i", "pixels-linear", "latent-surgery" + FULL_PASTE, groups=(MAIN,)),
    Claim(P, "PIXELS is more realistic than latent surgery pasting the same cells (m = 1)", "kid", "pixels-linear",
          "latent-surgery" + FULL_PASTE, groups=(MAIN,)),
    Claim(P, "Cubic control copies the source longer and so adheres more than log control", "clip_i",
          "pixels-cubic", "pixels-log", groups=(MAIN,)),
]


def sweep_claims(strengths) -> list[Claim]:
    low, high = f"sweep {min(strengths):g}", f"sweep {max(strengths):g}"
    name = "pixels-linear"
    return [Claim(P, "A lower strength t_ds^max adheres more to the exemplar (Fig. 6)", "clip_i", name, name,
                  a_group=low, b_group=high),
            Claim(P, "A higher strength t_ds^max gives a more realistic edit (Fig. 6)", "kid", name, name,
                  a_group=high, b_group=low)]


def build(run) -> Table:
    """The main rows at strength 0.8, the references and the sweep, from the cache where nothing changed."""
    import torch

    from retouch.metrics import clip_image_similarity
    from retouch.metrics.semantic import crop_to_mask

    started = time.perf_counter()
    count = run.scenes
    real_count = 500 if not run.quick else 2 * count
    strengths = QUICK_SWEEP if run.quick else SWEEP
    settings = {"triples": count, "steps": run.steps, "seed": run.seed, "batch": run.batch, "world": repr(run.world),
                "map": [MAP_GROW, MAP_RAMP], "real": real_count}
    models = run.model_files("backbone", "judge")
    triples = None

    def get_triples():
        nonlocal triples
        if triples is None:
            triples = build_triples(run.world, count)
        return triples

    def real_row():
        images = torch.from_numpy(np.stack([run.world.scene(i)[1].image
                                            for i in held_out(run.world, real_count, skip=2 * count)]))
        return {"n": np.ones(real_count)}, {"features": judge_features(run.judge, images.permute(0, 3, 1, 2).float()
                                                                       ).round(6).tolist()}

    real = run.cache.row(KEY, VERSION, "real", "held-out scenes", settings, models, real_row)
    real_features = np.asarray(real.extra["features"], dtype=float)

    def measure(edited) -> tuple[dict, dict]:
        sources, exemplars, maps, regions = get_triples()
        reference = crop_to_mask(exemplars, regions, run.judge.image_size)
        with torch.no_grad():
            adherence = clip_image_similarity(run.judge, edited, reference, mask=regions)
        return {"clip_i": adherence.numpy()}, {"features": judge_features(run.judge, edited).round(6).tolist()}

    def edit_row(name, strength):
        def compute():
            sources, exemplars, maps, _ = get_triples()
            run.log(f"PIXELS: {name} at strength {strength:g} ({count} triples)")
            return measure(run_method(name, run.backbone, sources, exemplars, maps, strength=strength,
                                      steps=run.steps, batch=run.batch))
        return compute

    def reference_row(name):
        def compute():
            sources, exemplars, maps, _ = get_triples()
            return measure(sources if name == "unedited source" else sources * (1 - maps) + exemplars * maps)
        return compute

    rows = [run.cache.row(KEY, VERSION, name, "references", settings, models, reference_row(name))
            for name in REFERENCES]
    rows += [run.cache.row(KEY, VERSION, name, MAIN, settings, models, edit_row(name, STRENGTH))
             for name in THRESHOLD_SYSTEMS + BASELINES + FULL_PASTE_BASELINES]
    sweep = []
    for name in SWEPT:
        for strength in strengths:
            row = run.cache.row(KEY, VERSION, name, f"sweep {strength:g}", settings, models, edit_row(name, strength))
            sweep.append(row)
    metrics = [Metric("clip_i", "CLIP-I", "higher"), kid_metric(real_features)]
    figure = run.docs / f"{KEY}.png"
    notes = []
    if not save_tradeoff(rows + sweep, metrics, figure):
        figure, notes = None, ["No figure: matplotlib is not installed (`pip install -e '.[bench]'`)."]
    figure_one = run.docs / f"{KEY}_fig1.png"
    run.log(f"PIXELS: Fig. 1 ({run.steps} steps)")
    save_figure_one(run.backbone, run.world, figure_one, steps=run.steps)
    description = (f"{count} held-out source/exemplar/map triples (the same for every system), {run.steps} DDIM "
                   f"steps, empty prompt; main rows at strength t_ds^max = {STRENGTH:g}, the sweep over "
                   f"{', '.join(f'{s:g}' for s in strengths)}. KID is against {real_count} other held-out scenes "
                   f"(judge features). References: the unedited source and a pixel paste through the map.")
    return Table(KEY, "PIXELS: adherence and realism against latent surgery and scaled noise, and the strength sweep",
                 "PIXELS", description, metrics, rows + sweep, CLAIMS + sweep_claims(strengths),
                 time.perf_counter() - started, run.command, figure and str(figure), notes,
                 [(str(figure_one), figure_one_caption(run.steps))])


def save_tradeoff(rows, metrics, path) -> bool:
    """CLIP-I against KID for each swept system over strength (PIXELS Fig. 6 on our world); False without
    matplotlib (an optional dependency)."""
    clip_i, kid = metrics
    curves = {}
    for name in SWEPT:
        points = sorted((float(r.group.split()[1]), r) for r in rows if r.system == name and r.group.startswith("sweep"))
        if points:
            curves[name] = [(strength, kid.set_statistic(r, np.arange(r.scenes)), float(np.mean(r.values[clip_i.name])))
                            for strength, r in points]
    return plot_tradeoff(curves, path)


def plot_tradeoff(curves: dict[str, list[tuple[float, float, float]]], path) -> bool:
    """The adherence/realism plot: per system, its (strength, KID, CLIP-I) points joined in strength order and
    labelled with the strength. False without matplotlib (an optional dependency)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    for name, points in curves.items():
        xs = [kid_value * 1e3 for _, kid_value, _ in points]
        ys = [clip_value for _, _, clip_value in points]
        axes.plot(xs, ys, marker="o", label=name)
        for (strength, _, _), x, y in zip(points, xs, ys):
            axes.annotate(f"{strength:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    axes.set_xlabel("KID ×10³ vs held-out scenes (realism; lower is better)")
    axes.set_ylabel("CLIP-I of edited region to exemplar (higher is better)")
    axes.set_title("Mini world: adherence vs realism over strength")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True



def figure_one_caption(steps: int, strength: float = STRENGTH) -> str:
    strengths = " / ".join(f"{s:g}" for s in sorted({*FIGURE_ONE_STRENGTHS, strength}))
    return (f"PIXELS Fig. 1 on the mini world ({steps} DDIM steps): four rows of a left-to-right ramp map (0 on the "
            f"left fifth, 1 on the right 30 %) from a held-out source to an exemplar, PIXELS at strength {strengths} "
            f"against latent surgery at {strength:g} with the binarised map; then two exemplars with their maps in "
            f"one PIXELS pass at {strength:g}.")


def save_figure_one(backbone, world, path, *, steps: int, strength: float = STRENGTH) -> None:
    """PIXELS Fig. 1's two kinds of edit, on held-out scenes: a left→right ramp map between two backgrounds (four
    sources, several strengths, latent surgery beside them), and a two-exemplar single pass."""
    import torch

    from retouch.bench.figures import save_labelled_rows
    from retouch.edit_maps import linear_ramp_map
    from retouch.methods.exemplar_baselines import BaselineConfig, exemplar_sdedit_latents
    from retouch.methods.pixels import PixelsConfig, pixels_latents

    # held-out scenes 400–411: none is in the table's triples (the first 2 × 100 held-out scenes)
    scenes = [world.scene(i)[1] for i in held_out(world, 12, skip=400)]
    image = lambda k: torch.from_numpy(scenes[k].image).permute(2, 0, 1).float()  # noqa: E731
    # 0 on the left fifth, rising linearly, 1 on the right 30 %: Algorithm 1 pastes the exemplar only
    # where μ_d = 0 (m = 1) and grows the edit from there, so a ramp without a fully edited part
    # would never bring the exemplar in.
    side = world.size
    ramp = ((torch.linspace(0, 1, side) - 0.2) / 0.5).clamp(0, 1).expand(side, side)[None]
    strengths = sorted({*FIGURE_ONE_STRENGTHS, strength})
    rows, labels = [], []
    for k in range(0, 8, 2):  # four ramp examples: source k, exemplar k + 1
        source, exemplar = image(k), image(k + 1)
        edits = [pixels_latents(backbone, source[None] * 2 - 1, [exemplar[None] * 2 - 1], [ramp[None]],
                                PixelsConfig(strength=s, num_steps=steps)) for s in strengths]
        surgery = exemplar_sdedit_latents(backbone, source[None] * 2 - 1, [exemplar[None] * 2 - 1], [ramp[None]],
                                          BaselineConfig(strength=strength, num_steps=steps), scale_noise=False)
        with torch.no_grad():
            edited = ((backbone.decode_latents(torch.cat([*edits, surgery])) + 1) / 2).clamp(0, 1)
        rows.append([source, exemplar, ramp, *edited])
        labels.append(["source", "exemplar", "ramp map", *(f"PIXELS {s:g}" for s in strengths),
                       f"surgery {strength:g}"])
    source, first, second = image(8), image(9), image(10)
    first_map, second_map = (torch.from_numpy(linear_ramp_map(scenes[k].masks.any(axis=0), MAP_RAMP)).float()[None]
                             for k in (9, 10))
    latents = pixels_latents(backbone, source[None] * 2 - 1, [first[None] * 2 - 1, second[None] * 2 - 1],
                             [first_map[None], second_map[None]], PixelsConfig(strength=strength, num_steps=steps))
    with torch.no_grad():
        edited = ((backbone.decode_latents(latents) + 1) / 2).clamp(0, 1)[0]
    rows.append([source, first, first_map, second, second_map, edited])
    labels.append(["source", "exemplar 1", "map 1", "exemplar 2", "map 2", "PIXELS, one pass"])
    save_labelled_rows(rows, path, labels)
