"""pix2pix-zero §4.5 on the mini world: the diffusion edit against the translator distilled from it.

§4.5 (details in App. A) distils pix2pix-zero into a feed-forward image-to-image model trained on filtered
pairs of its own edits (:mod:`retouch.train.distill`: a residual U-Net with L1 where the paper trains
Co-Mod-GAN), and reports that "the distilled model only takes 0.018 seconds per image, reducing inference
time by a factor of ∼3,800 times" while it "achieves comparable results" (Fig. 7).

Both rows edit the same scenes: the first ``run.scenes`` held-out scenes of each edit in :data:`EDITS`, the
scene list of Table 2 (:mod:`retouch.bench.pix2pix_zero`); pix2pix-zero is Table 2's config E at
``run.steps``. Every scene is read by Table 2's metrics, the background SSIM over the same region as BG L1,
and **seconds per image**: each scene edited on its own (a batch of one, the interactive use §4.5 speaks
of), timed from image in to image out after one untimed warm-up (:func:`retouch.train.distill.time_per_image`).

The translator is a trained model, not shipped: it is a row only where ``make distill-model`` has left it
under ``run.trained`` (:func:`retouch.train.distill.trained_folder`); otherwise the page lists it as not
covered.
"""

from __future__ import annotations

import json
import time

from retouch.bench import pix2pix_zero
from retouch.bench.harness import Claim, Metric, Table

KEY = "pix2pix_zero_distill"
#: Bumped whenever the measuring code changes the numbers, so cached rows are recomputed.
VERSION = 1
#: The edits whose translators are looked for: the one ``make distill-model`` and the script train.
EDITS = ("red->blue",)
DIFFUSION, TRANSLATOR = "pix2pix-zero", "distilled translator"
#: The Table 2 config that is the full pix2pix-zero method, the edit the translator learnt from.
DIFFUSION_CONFIG = "E"

METRICS = [
    Metric("seconds", "s/image", "lower", digits=4),
    *pix2pix_zero.METRICS,
    Metric("bg_ssim", "BG SSIM", "higher", digits=3),
]

P = "pix2pix-zero"
#: The parity claims' reading: "comparable results" is a claim of no difference, which a paired test can only
#: fail to reject.
PARITY = "parity reads as cannot be told apart"


def claims(present=()) -> list[Claim]:
    """§4.5's speed sentence, read as "faster per image", and the "comparable results" of Fig. 7 and App. A,
    read as parity on the edit (both readers), the input's structure and the background; for the edits in
    ``present`` (those with a translator row)."""
    if not present:
        return []
    return [
        Claim(P, "\"the distilled model only takes 0.018 seconds per image, reducing inference time by a factor of "
                 "∼3,800 times\" (§4.5)", "seconds", TRANSLATOR, DIFFUSION,
              note="read as faster per image; the table's notes give our speed-up, on CPU, not an A100"),
        Claim(P, "\"Our fast GAN model gives comparable results regarding edit quality\" (App. A)", "clip_acc",
              TRANSLATOR, DIFFUSION, note=PARITY),
        Claim(P, "\"Our fast GAN model gives comparable results regarding edit quality\" (App. A)", "probe_success",
              TRANSLATOR, DIFFUSION, note=f"our second reader: the pixel probes; {PARITY}"),
        Claim(P, "\"Our fast GAN model gives comparable results regarding … structure perseverance\" (App. A)",
              "structure", TRANSLATOR, DIFFUSION, note=PARITY),
        Claim(P, "\"The distilled GAN-based model achieves comparable results\" (Fig. 7)", "bg_l1", TRANSLATOR,
              DIFFUSION, note=f"the background; {PARITY}"),
    ]


def present_translators(run) -> dict:
    """The edits of :data:`EDITS` whose trained translator exists under ``run.trained`` → its folder."""
    from retouch.train.distill import final_translator, trained_folder

    folders = {edit: final_translator(run.trained / trained_folder(edit)) for edit in EDITS}
    return {edit: folder for edit, folder in folders.items() if folder.is_dir()}


def missing(run) -> list[str]:
    """A "not covered" line for each edit whose translator has not been trained under ``run.trained``."""
    from retouch.train.distill import trained_folder

    absent = [edit for edit in EDITS if edit not in present_translators(run)]
    return [f"pix2pix-zero distillation: the {edit} translator (trained, not shipped; `make distill-model` trains "
            f"it under {run.trained / trained_folder(edit)}/)" for edit in absent]


def measure(run, edit_text: str, scenes, edited, seconds) -> tuple[dict, dict]:
    """Table 2's per-scene values of ``edited``, with the seconds per image and the background SSIM."""
    import torch

    from retouch.edit_text import parse_edit
    from retouch.metrics.pixel import background_preservation
    from retouch.world.edits import true_edits

    values = pix2pix_zero.score_edit(run, edit_text, scenes, edited)
    _, region = true_edits(scenes, parse_edit(edit_text).target)  # the region BG L1 is read outside of
    values.update(seconds=seconds, bg_ssim=background_preservation(scenes.images, edited, region)["ssim"].numpy())
    return values, {"thumbs": pix2pix_zero.encode_thumbs(edited), "threads": torch.get_num_threads()}


def build(run) -> Table:
    """The pix2pix-zero row of each edit and, where its translator was trained, the translator's row."""
    import torch

    from retouch.edit_text import parse_edit
    from retouch.train.distill import load_translator, teacher_settings, time_per_image, translate
    from retouch.world.edits import edit_scenes

    started = time.perf_counter()
    # pix2pix-zero exactly as the translator's pairs were made: the backbone's own settings, the world's banks
    teacher = teacher_settings(str(run.models / "backbone"))
    # seconds per image depend on the threads; both rows of an edit are timed under the same count
    settings = {"scenes": run.scenes, "seed": run.seed, "world": repr(run.world), "threads": torch.get_num_threads()}
    translators = present_translators(run)
    rows = []
    for edit_text in EDITS:
        edit = parse_edit(edit_text)
        scenes = None

        def held_out():
            nonlocal scenes
            if scenes is None:
                scenes = edit_scenes(run.world, edit.source, edit.target, run.scenes)
            return scenes

        def diffusion(edit_text=edit_text):
            data = held_out()
            run.log(f"pix2pix-zero distillation: {DIFFUSION} on {edit_text} ({run.scenes} scenes, one at a time)")
            edited, seconds = time_per_image(lambda rows: pix2pix_zero.edit_images(
                run, DIFFUSION_CONFIG, edit_text, data.images[rows], [data.sources[k] for k in rows], teacher),
                run.scenes)
            return measure(run, edit_text, data, edited, seconds)

        diffusion_settings = {**settings, "steps": run.steps, "teacher": teacher}
        rows.append(run.cache.row(KEY, VERSION, DIFFUSION, edit_text, diffusion_settings,
                                  run.model_files("backbone", "judge", "probes"), diffusion))
        if edit_text in translators:
            def distilled(edit_text=edit_text, folder=translators[edit_text]):
                data = held_out()
                run.log(f"pix2pix-zero distillation: {TRANSLATOR} on {edit_text} ({run.scenes} scenes, one at a time)")
                model = load_translator(folder)
                with torch.no_grad():
                    edited, seconds = time_per_image(lambda rows: translate(model, data.images[rows]), run.scenes)
                return measure(run, edit_text, data, edited, seconds)

            # the translator reads no backbone: its row depends on its own weights and the readers'
            rows.append(run.cache.row(KEY, VERSION, TRANSLATOR, edit_text, settings,
                                      {**run.model_files("judge", "probes"), "translator": translators[edit_text]},
                                      distilled))
    figure = run.docs / f"{KEY}.png"
    save_figure(run, rows, figure)
    return Table(KEY, "pix2pix-zero §4.5: the distilled translator against the diffusion edit on the mini world", P,
                 description(run, teacher), METRICS, rows, claims(translators), time.perf_counter() - started, run.command,
                 str(figure), notes(run, rows, translators))


def description(run, teacher: dict) -> str:
    own = ", ".join(f"{name} {value}" for name, value in sorted(teacher.items()) if name != "bank") or "none"
    return (f"{run.scenes} held-out scenes per edit (the first test-split scenes whose object has the source value, "
            f"as in Table 2; the same scenes for both rows). pix2pix-zero is Table 2's config E at {run.steps} DDIM "
            "steps, as the translator's teacher ran: the mini world's captions as sentence banks and the model "
            f"folder's own λ_xa and CFG where it has them ({own}; Table 2 itself runs the paper's); "
            "the translator learnt from its edits at the steps its training pairs used (see the notes). "
            "s/image: each scene edited on its own, a batch of one, timed from image in to image out (for "
            "pix2pix-zero the whole method: edit direction, encoding, inversion, guided edit, decoding) after one "
            "untimed warm-up edit, on this machine's CPU at the thread count in the notes. The other columns are "
            "Table 2's (CLIP-Acc and judge success by the mini judge, probe success and kept by the pixel probes, "
            "BG L1 and BG SSIM outside the object before ∪ after the renderer's edit, grown 2 px; Structure Dist on "
            "the judge's ViT keys). The paper gives no table for §4.5: one number (0.018 s per image on an A100, "
            "×∼3,800 faster) and the images of Figs. 7, 10 and 11.")


def notes(run, rows, translators: dict) -> list[str]:
    """Which translators are rows (how each was trained) or missing, and the speed-up measured per edit."""
    from retouch.train.distill import trained_folder

    found = []
    for edit, folder in translators.items():
        report = run.trained / trained_folder(edit) / "distill.json"  # distill()'s record of the training
        trained = ""
        if report.is_file():
            info = json.loads(report.read_text())
            config = info["config"]
            trained = (f": {info['pairs_kept']} of {info['pairs_collected']} pix2pix-zero pairs of "
                       f"{config['edit_steps']} steps kept, {config['train_steps']} training steps at batch "
                       f"{config['batch']}")
        found.append(f"{edit} (`{folder}`{trained})")
    absent = [f"{edit} (`{run.trained / trained_folder(edit)}`)" for edit in EDITS if edit not in translators]
    lines = ["Translators (trained, not shipped; `make distill-model` trains them): "
             + (", ".join(found) or "none found") + "." + (f" Missing, so not rows: {', '.join(absent)}." if absent
                                                           else "")]
    for edit in EDITS:
        pair = {row.system: row for row in rows if row.group == edit}
        if TRANSLATOR in pair:
            slow, fast = (float(pair[name].array("seconds").mean()) for name in (DIFFUSION, TRANSLATOR))
            threads = pair[TRANSLATOR].extra.get("threads", "?")
            lines.append(f"Speed-up on {edit}: pix2pix-zero {slow:.3g} s per image, the translator {fast:.3g} s, "
                         f"×{slow / fast:,.0f} on {threads} CPU thread{'' if threads == 1 else 's'} (the paper: the "
                         "translator 0.018 s per image on an A100, ×∼3,800).")
    return lines


def save_figure(run, rows, path) -> None:
    """Fig. 7's layout: per edit, the first inputs, then pix2pix-zero's and the translator's edits of them."""
    import torch

    from retouch.bench.figures import save_labelled_rows
    from retouch.edit_text import parse_edit
    from retouch.world.edits import edit_scenes

    strips, labels = [], []
    for edit_text in EDITS:
        edit = parse_edit(edit_text)
        strips.append(list(edit_scenes(run.world, edit.source, edit.target,
                                       min(pix2pix_zero.THUMBS, run.scenes)).images))
        labels.append(f"{edit_text}: input")
        for row in rows:
            if row.group == edit_text and "thumbs" in row.extra:
                strips.append([torch.from_numpy(t).permute(2, 0, 1).float()
                               for t in pix2pix_zero.decode_thumbs(row.extra["thumbs"])])
                labels.append(row.system)
    save_labelled_rows(strips, path, labels)
