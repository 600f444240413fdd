"""How well the shipped autoencoder decodes *spliced* latents (no paper's table: our own targets).

Latent surgery and PIXELS decode latents pasted together from two images, so every edit they make on the
mini world is only as good as the decoder's reading of such a splice. Pair k is held-out (test-split)
scene k and scene ``P + k`` of the first 2P, any number of objects, never picked. Per pair, PSNR of:

* **reconstruction**: decode(mode(encode(scene k))) against scene k;
* **cut**: a straight cut between the two scenes' latents, at a place drawn from the run's seed;
* **paste**: the second scene's objects (their mask grown to whole latent cells) pasted over the first;

the splices against the pixel splice of the same cells (:func:`retouch.train.evaluate_mini.decode_splices`).
"""

from __future__ import annotations

import time

from retouch.bench.harness import Metric, Table, cell
from retouch.bench.pix2pix_zero import decode_thumbs, encode_thumbs

KEY = "decoder_splices"
VERSION = 1
SYSTEM = "shipped autoencoder"
RECONSTRUCTION = "reconstruction"
#: group → the splice kind of :func:`retouch.train.mini.latent_composites`
SPLICES = {"cut": 1, "paste": 2}
#: dB; issue 19's targets for the autoencoder (docs/world_v2.md), not a paper's
TARGETS = {RECONSTRUCTION: 30.0, "cut": 27.0, "paste": 27.0}
METRICS = [Metric("psnr", "PSNR (dB)", "higher", digits=2)]


def splice_pairs(world, pairs: int):
    """The first ``2 * pairs`` held-out scenes: pair k is scene k and scene ``pairs + k``."""
    from retouch.world.heldout import held_out_scenes

    return held_out_scenes(world, 2 * pairs, single_object=False)


def figure_rows(first, second, splices: dict) -> tuple[list, list]:
    """The grid's strips: per splice and pair, scene A, scene B, the pixel splice, then each decoder's decoding.

    ``first``/``second``: the pairs' scenes; ``splices``: group → (pixel splices, {decoder name: decodings}),
    every one indexable per pair, (3, H, W) tensors or (H, W, 3) arrays in [0, 1].
    """
    rows, labels = [], []
    for group, (pixel_splices, decodings) in splices.items():
        for k in range(len(pixel_splices)):
            rows.append([first[k], second[k], pixel_splices[k], *(decoded[k] for decoded in decodings.values())])
            labels.append(["scene A", "scene B", group, *decodings])
    return rows, labels


def build(run) -> Table:
    """The three rows of the shipped autoencoder, from the cache where nothing changed."""
    from retouch.metrics import psnr
    from retouch.train.evaluate_mini import decode_splices, reconstruction_psnr

    started = time.perf_counter()
    pairs = run.scenes
    settings = {"pairs": pairs, "seed": run.seed, "world": repr(run.world)}
    models = run.model_files("backbone")
    scenes = splice_pairs(run.world, pairs)  # rendering is cheap, and the figure shows them on a cached run too

    def reconstruct():
        run.log(f"decoder splices: reconstruction ({pairs} scenes)")
        return {"psnr": reconstruction_psnr(run.backbone.vae, scenes.images[:pairs], batch=run.batch)}, {}

    def splice(group):
        def compute():
            run.log(f"decoder splices: {group} ({pairs} pairs)")
            decoded, pixel_splices = decode_splices(run.backbone.vae, scenes, SPLICES[group], seed=run.seed)
            return ({"psnr": psnr(decoded, pixel_splices).numpy()},
                    {"thumbs": encode_thumbs(decoded), "pixel_splices": encode_thumbs(pixel_splices)})
        return compute

    rows = [run.cache.row(KEY, VERSION, SYSTEM, RECONSTRUCTION, settings, models, reconstruct)]
    rows += [run.cache.row(KEY, VERSION, SYSTEM, group, settings, models, splice(group)) for group in SPLICES]
    figure = run.docs / f"{KEY}.png"
    save_figure(scenes, rows, figure)
    description = (f"{pairs} held-out scene pairs (scene k and scene {pairs} + k of the first {2 * pairs} "
                   "test-split scenes, any number of objects; the same every run), the shipped autoencoder "
                   "(`backbone/vae`), posterior modes as the editing methods encode. Reconstruction: PSNR of the "
                   "round trip of scene k against it. Cut: the two scenes' latents cut straight at a drawn place "
                   "and orientation; paste: scene B's objects, grown to whole latent cells, pasted over scene A; "
                   "each against the pixel splice of the same cells. Latent surgery and PIXELS decode such "
                   "splices, so their edits are only as good as these rows.")
    notes = ["No paper claim: none of the papers measures its decoder on splices. "
             + targets_note(rows, METRICS[0])]
    return Table(KEY, "Decoder splices: the shipped autoencoder on plain and spliced latents", "none (our targets)",
                 description, METRICS, rows, [], time.perf_counter() - started, run.command, str(figure), notes)


def targets_note(rows, metric: Metric) -> str:
    """Each row against issue 19's target: met when its whole interval lies above, missed when below."""
    verdicts = []
    for row in rows:
        interval, target = cell(metric, [row]), TARGETS[row.group]
        reading = ("met" if interval.low >= target else "missed" if interval.high < target
                   else "cannot tell (the target lies inside the interval)")
        verdicts.append(f"{row.group} ≥ {target:g} dB: **{reading}** ({interval.format(metric.digits)})")
    return ("Our own targets for the autoencoder (issue 19, docs/world_v2.md), not a paper's: "
            + "; ".join(verdicts) + ".")


def save_figure(scenes, rows, path) -> None:
    """The first pairs of each splice: scene A, scene B, the pixel splice and the shipped decoder's decoding."""
    from retouch.bench.figures import save_labelled_rows

    splices = {row.group: (decode_thumbs(row.extra["pixel_splices"]), {SYSTEM: decode_thumbs(row.extra["thumbs"])})
               for row in rows if row.group in SPLICES}
    shown = min(len(pixel_splices) for pixel_splices, _ in splices.values())
    pairs = len(scenes.images) // 2
    strips, labels = figure_rows(scenes.images[:shown], scenes.images[pairs:pairs + shown], splices)
    save_labelled_rows(strips, path, labels)
