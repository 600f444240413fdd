"""The multitask paper's Tables 2–4 and Fig. 4 on the compositing benchmark (``retouch data compositing``).

**Tables 2–4.** Every system edits the first ``run.scenes`` crops of each split (``test``: held-out crops of the
mini world and of dead leaves; ``photos``: crops of photographs no model trained on, the paper's Fig. 5 question)
for each single task and each task combination, with the crop's stored parameters, in :data:`PROTOCOL_STEPS`
DDIM steps from noise (:func:`retouch.train.evaluate_multitask.evaluate`). L1 and SSIM against the stored target are kept
per crop, so every interval is over crops and every claim a paired test on the same crops. The systems: the
shipped model (``ours``), the input unedited (the scale: what copying scores), and the baselines ``make
multitask-models`` trains, which are not shipped: Palette++, pix2pix, ours without the binary task labels, and
one model per task chained as ``ours-single`` (:data:`TRAINED`, under ``run.trained / BASELINES``); a baseline
that is not there is not a row. KID (a set statistic of judge features) and LPIPS (local weights) stay in
``benchmarks/multitask_tables.py``.

**Fig. 4.** Each slider of the shipped model swept with the other tasks off on the test crops, read by its
measure (:mod:`retouch.train.multitask_control`): the high end against the low end on the same crops, beside the
exact operator's same comparison, so the page shows whether the model's slider moves the way the operator's does.
"""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path

import numpy as np

from retouch.bench.harness import Claim, Metric, Table, cell
from retouch.data.compositing import MULTI_TASKS
from retouch.train.evaluate_multitask import SINGLE_TASKS

#: The multitask tables' DDIM steps (issue 21's protocol, and the scripts'); ``run.steps`` caps it (``--quick``: 4).
PROTOCOL_STEPS = 25


def sampler_steps(run) -> int:
    """The DDIM steps of every multitask row: :data:`PROTOCOL_STEPS`, or fewer where the run asks for fewer."""
    return min(run.steps, PROTOCOL_STEPS)


KEY = "multitask_tables"
#: Bumped whenever the measuring code changes the numbers, so cached rows are recomputed.
VERSION = 1
#: The compositing benchmark, under ``run.trained`` (``make multitask-models`` builds it as MT_DATA).
DATA = "compositing"
#: The trained baselines, under ``run.trained`` (``make multitask-models MT_WORK=…/mt-tables``).
BASELINES = "mt-tables"
SPLITS = ("test", "photos")
COMBINATIONS = tuple(MULTI_TASKS)
#: The split the sliders are swept on.
SWEPT_SPLIT = "test"

OURS, UNEDITED, OPERATOR = "ours", "unedited input", "operator"
PALETTE, PIX2PIX, NO_LABELS, OURS_SINGLE = "Palette++", "pix2pix", "ours w/o labels", "ours-single"
#: Trained, unshipped systems → their run under ``run.trained / BASELINES``
#: (:func:`~retouch.train.evaluate_multitask.trained_folders`; ``ours-single`` gathers the ``single-<task>`` runs).
TRAINED = {PALETTE: "palette", PIX2PIX: "pix2pix", NO_LABELS: "no-labels", OURS_SINGLE: "ours-single"}
COLOUR = "colour transfer"
#: What a higher value of each slider does, for the claims' sentences.
EFFECTS = {"blur": "blurs more (less gradient energy)", "grain": "adds more grain where the input was flat",
           "sharpen_amount": "sharpens more (more gradient energy)",
           "sharpen_threshold": "sharpens less (less gradient energy)"}
#: Display scale of each slider's measure (gradient energies are ~1e-2, flat-region grain energy ~1e-4).
SCALES = {"blur": (1e3, "×10³"), "grain": (1e5, "×10⁵"), "sharpen_amount": (1e3, "×10³"),
          "sharpen_threshold": (1e3, "×10³")}


def metrics() -> list[Metric]:
    """L1 and SSIM (Tables 2–4), one column per slider's measure (its arrow: the way a higher value should move
    it), and the colour distance."""
    from retouch.train.multitask_control import SLIDERS

    found = [Metric("l1", "L1", "lower", digits=4), Metric("ssim", "SSIM", "higher", digits=3)]
    for slider in SLIDERS:
        scale, label = SCALES[slider.key]
        found.append(Metric(slider.key, f"{slider.name}: {slider.measure_label} {label}",
                            "lower" if slider.direction == "down" else "higher", digits=2, scale=scale))
    return found + [Metric("colour_distance", "colour: Lab-statistics distance to reference", "lower", digits=3)]


def groups(tasks) -> tuple[str, ...]:
    return tuple(f"{split}: {task}" for split in SPLITS for task in tasks)


P = "multitask"
SINGLE, COMBINED = groups(SINGLE_TASKS), groups(COMBINATIONS)
#: Tables 2–4's sentences as (the system ours is compared with, the groups, the sentence, where it is): each is
#: read on L1 and on SSIM, pooled over both splits, each split's task its own group.
COMPARISONS = (
    (UNEDITED, SINGLE, "On single tasks an edit beats copying the input",
     "the scale of Tab. 2, not a sentence of the paper"),
    (UNEDITED, COMBINED, "On task combinations an edit beats copying the input",
     "the scale of Tab. 3, not a sentence of the paper"),
    (PALETTE, SINGLE, "Our method yields comparable or better results for single-task image editing than Palette++",
     "§4.3, Tab. 2; 'comparable' reads as cannot be told apart"),
    (PIX2PIX, SINGLE, "Pix2pix performs well on motion blur synthesis but not the other tasks: ours edits single tasks "
                      "better", "§4.2, Tab. 2"),
    (PALETTE, COMBINED, "For multi-task image editing, our method outperforms Palette++ by a large margin",
     "§4.2–4.3, Tab. 3"),
    (PIX2PIX, COMBINED, "For multi-task image editing, our method outperforms pix2pix by a large margin",
     "§4.2–4.3, Tab. 3"),
    (OURS_SINGLE, COMBINED, "For multi-task editing, our one model outperforms the single-task models applied in "
                            "sequence", "§4.2, Tab. 3: 'our - single'"),
    (NO_LABELS, SINGLE, "The binary task activation labels slightly improve single-task editing", "§4.4, Tab. 4"),
    (NO_LABELS, COMBINED, "The binary task activation labels boost overall performance for multi-task editing",
     "§4.4, Tab. 4"),
)


def claims(present=(), values: dict | None = None) -> list[Claim]:
    """Tables 2–4's sentences for the trained systems in ``present`` (:data:`COMPARISONS`), then Fig. 4's for the
    slider values ``values`` (none without a sweep)."""
    found = [Claim(P, statement, metric, OURS, other, note=note, groups=tasks)
             for other, tasks, statement, note in COMPARISONS if other == UNEDITED or other in present
             for metric in ("l1", "ssim")]
    return found + (control_claims(values) if values else [])


def control_claims(values: dict) -> list[Claim]:
    """Fig. 4: each slider's high end against its low end on the same crops, the model's then the operator's; and
    the colour transfer against the input. ``values``: slider key → the swept values."""
    from retouch.train.multitask_control import SLIDERS

    found = []
    for slider in SLIDERS:
        low, high = slider.group(values[slider.key][0]), slider.group(values[slider.key][-1])
        found += [Claim(P, f"Fine-grained control: a higher {slider.name} {slider.symbol} "
                           f"{EFFECTS[slider.key]}", slider.key, OURS, OURS, a_group=high, b_group=low,
                        note="Fig. 4: 'progressively increasing the intensity level of the target effect'"),
                  Claim(P, f"The exact operator: a higher {slider.name} {slider.symbol} {EFFECTS[slider.key]}",
                        slider.key, OPERATOR, OPERATOR, a_group=high, b_group=low,
                        note="what the model's slider is measured against")]
    return found + [Claim(P, "Colour transfer moves the input's colour statistics towards the reference",
                          "colour_distance", OURS, UNEDITED, groups=(COLOUR,),
                          note="Fig. 4: 'randomly switching the reference image'"),
                    Claim(P, "The exact operator (Reinhard's transfer) moves them towards the reference",
                          "colour_distance", OPERATOR, UNEDITED, groups=(COLOUR,),
                          note="what the model's transfer is measured against")]


def swept_values(quick: bool) -> dict:
    """Slider key → the values swept: all five, or the two ends in a quick run."""
    from retouch.train.multitask_control import SLIDERS

    return {s.key: (s.values[0], s.values[-1]) if quick else s.values for s in SLIDERS}


def data_folder(run) -> Path:
    return run.trained / DATA


def present_baselines(run) -> dict:
    """The trained baselines found under ``run.trained / BASELINES``, in :data:`TRAINED`'s order: name → folder
    (``ours-single``: task → folder)."""
    from retouch.train.evaluate_multitask import trained_folders

    work = run.trained / BASELINES
    found = trained_folders(work) if work.is_dir() else {}
    return {name: found[run_name] for name, run_name in TRAINED.items() if found.get(run_name)}


def usable_splits(data: Path) -> list[str]:
    """The splits of :data:`SPLITS` the benchmark at ``data`` has crops of (none without a benchmark)."""
    from retouch.data.compositing import read_summary

    if not (data / "dataset.json").is_file():
        return []
    counts = read_summary(data)["counts"]
    return [split for split in SPLITS if counts.get(split, 0) > 0]


def missing(run) -> list[str]:
    """"Not covered" lines: the whole table without the benchmark, else the baselines not trained here."""
    data = data_folder(run)
    if not usable_splits(data):
        return [f"multitask: Tables 2–4 and Fig. 4 (no compositing benchmark with test or photos crops at {data}; "
                f"`retouch data compositing -o {data}` builds it)"]
    absent = [name for name in TRAINED if name not in present_baselines(run)]
    return ([f"multitask: {', '.join(absent)} (trained baselines, not shipped; `make multitask-models "
             f"MT_DATA={data} MT_WORK={run.trained / BASELINES}` trains them)"] if absent else [])


def build(run) -> Table | None:
    """Every (system, split, task) row and every slider row, from the cache where nothing changed; ``None`` (the
    table is skipped) without the compositing benchmark."""
    from retouch.data.compositing import read_summary
    from retouch.train.evaluate_multitask import tasks_of

    data = data_folder(run)
    splits = usable_splits(data)
    if not splits:
        run.log(f"multitask: skipped, no compositing benchmark with test or photos crops at {data}")
        return None
    started = time.perf_counter()
    summary = read_summary(data)
    counts, grain_samples = summary["counts"], summary["config"].get("grain_samples")
    baselines = present_baselines(run)
    settings = {"crops": run.scenes, "steps": sampler_steps(run), "seed": run.seed}
    systems = Systems(run, baselines)

    rows = []
    for split in splits:
        for task in SINGLE_TASKS + COMBINATIONS:
            for name in (UNEDITED, OURS, *baselines):
                if name == OURS_SINGLE and not tasks_of(task) <= set(baselines[name]):
                    continue  # a chain needs a model for every task it switches on

                def compute(name=name, split=split, task=task):
                    from retouch.train.evaluate_multitask import evaluate

                    run.log(f"multitask Tables 2–4: {name} on {split}: {task} ({run.scenes} crops)")
                    row, = evaluate({name: systems.model(name)}, data, split, [task], num_steps=sampler_steps(run),
                                    seed=run.seed, limit=run.scenes)
                    return {"l1": row["l1_per_crop"], "ssim": row["ssim_per_crop"]}, {}
                rows.append(run.cache.row(KEY, VERSION, name, f"{split}: {task}", settings,
                                          {"data": data, **systems.files(name, task)}, compute))
    values = swept_values(run.quick) if SWEPT_SPLIT in splits else None
    sweep = control_rows(run, data, systems, settings, values) if values else []
    metric_list = metrics()
    figure = run.docs / f"{KEY}.png"
    notes = [baselines_note(run, baselines)]
    if not sweep:
        figure = None
        notes.append(f"No Fig. 4 rows: the benchmark has no {SWEPT_SPLIT} crops.")
    else:
        found, colour = curves(sweep, metric_list, values)
        notes.append(monotone_note(run, found))
        subtitle = f"{SWEPT_SPLIT} split, {min(run.scenes, counts[SWEPT_SPLIT])} crops, {sampler_steps(run)} steps"
        if not plot_control_curves(found, colour, figure, subtitle):
            figure = None
            notes.append("No figure: matplotlib is not installed (`pip install -e '.[bench]'`).")
    description = (f"The first {run.scenes} crops of each split of the compositing benchmark at `{data}` "
                   f"({', '.join(f'{s}: {counts[s]} crops' for s in splits)}; the same for every system; film grain "
                   f"targets rendered with N = {grain_samples} Monte-Carlo samples per pixel), each "
                   f"single task and combination with the crop's stored parameters, {sampler_steps(run)} DDIM steps "
                   "from noise; L1 and SSIM against the stored target (images in [0, 1]). Groups are split: task; the "
                   "claims of Tables 2–4 pool both splits. Fig. 4: each slider of the shipped model swept with the "
                   f"other tasks off on the first {run.scenes} {SWEPT_SPLIT} crops, beside the exact operator on the "
                   "same crops (`retouch.train.multitask_control`); colour transfer pulls each crop towards the "
                   "next crop's reference. Rows: the shipped model (ours), the input unedited, and the trained "
                   "baselines found (below). KID and LPIPS: `benchmarks/multitask_tables.py`.")
    return Table(KEY, "Multitask paper Tables 2–4 and Fig. 4 on the compositing benchmark", P, description,
                 metric_list, rows + sweep, claims(baselines, values), time.perf_counter() - started, run.command,
                 figure and str(figure), notes)


class Systems:
    """The rows' models, loaded when a row is computed (a fully cached run loads none), and the files each reads."""

    def __init__(self, run, baselines: dict):
        self.run, self.baselines, self.loaded = run, baselines, {}

    def model(self, name: str):
        from retouch.train.evaluate_multitask import Unedited, load_compositing_model, load_system

        if name in self.loaded:
            return self.loaded[name]
        if name == UNEDITED:
            self.loaded[name] = Unedited()
        elif name == OURS:
            self.loaded[name] = load_compositing_model(self.run.models / "multitask")
        else:
            self.loaded[name] = load_system(self.baselines[name])
        return self.loaded[name]

    def files(self, name: str, task: str = "") -> dict:
        """The model files a row of ``task`` reads (a chain: only the stages it runs)."""
        from retouch.train.evaluate_multitask import tasks_of

        if name == OURS:
            return self.run.model_files("multitask")
        if name == OURS_SINGLE:
            return {f"single-{t}": self.baselines[name][t] for t in sorted(tasks_of(task))}
        return {"model": self.baselines[name]} if name in self.baselines else {}


def control_rows(run, data, systems: Systems, settings: dict, values: dict) -> list:
    """Fig. 4's rows: per slider value (``values``: slider key → values) the model's and the operator's measure
    per crop, then the colour rows."""
    from retouch.data.compositing import iter_compositing
    from retouch.train import multitask_control as control

    samples = []

    def crops():
        if not samples:
            samples.extend(islice(iter_compositing(data, SWEPT_SPLIT), run.scenes))
        return samples

    def measured(slider, images):
        inputs = control.sources(crops())
        # the input's mean rides along, so the figure's "unedited input" line needs no data
        unedited = float(slider.measure(inputs, inputs).mean())
        return {slider.key: slider.measure(images, inputs).numpy()}, {"input": unedited}

    rows = []
    for slider in control.SLIDERS:
        for value in values[slider.key]:
            def model_row(slider=slider, value=value):
                run.log(f"multitask Fig. 4: ours at {slider.group(value)} ({run.scenes} crops)")
                return measured(slider, control.model_edits(systems.model(OURS), crops(), slider.vector(value),
                                                            steps=sampler_steps(run), seed=run.seed))

            def operator_row(slider=slider, value=value):
                return measured(slider, control.operator_edits(crops(), slider, value))
            group = slider.group(value)
            rows += [run.cache.row(KEY, VERSION, OURS, group, settings, {"data": data, **systems.files(OURS)},
                                   model_row),
                     run.cache.row(KEY, VERSION, OPERATOR, group, settings, {"data": data}, operator_row)]

    def colour_row(name):
        def compute():
            if name == UNEDITED:
                images = control.sources(crops())
            elif name == OPERATOR:
                images = control.colour_operator_edits(crops())
            else:
                run.log(f"multitask Fig. 4: ours at {COLOUR} ({run.scenes} crops)")
                images = control.colour_model_edits(systems.model(OURS), crops(), steps=sampler_steps(run), seed=run.seed)
            return {"colour_distance": control.colour_distance(images, crops()).numpy()}, {}
        return compute

    return rows + [run.cache.row(KEY, VERSION, name, COLOUR, settings, {"data": data, **systems.files(name)},
                                 colour_row(name)) for name in (UNEDITED, OURS, OPERATOR)]


def baselines_note(run, baselines: dict) -> str:
    """Which trained baselines are rows, and which are missing (with the command that trains them)."""
    absent = [name for name in TRAINED if name not in baselines]
    work = run.trained / BASELINES
    shown = [f"{name} (`{work}/single-*`: {', '.join(folder)})" if isinstance(folder, dict) else f"{name} (`{folder}`)"
             for name, folder in baselines.items()]
    text = (f"Trained baselines (not shipped; `make multitask-models MT_WORK={run.trained / BASELINES}` trains "
            f"them): " + (", ".join(shown) or "none found") + ".")
    return text + (f" Missing, so not rows: {', '.join(absent)}." if absent else "")


def curves(sweep: list, metric_list: list, values: dict) -> tuple[list[dict], dict]:
    """Fig. 4's curves from the rows: per slider the mean measure over crops of the model and of the operator
    at each value, with their intervals, and the input's; then the colour distances' means."""
    from retouch.train.multitask_control import SLIDERS

    def find(system, group):
        return next(r for r in sweep if r.system == system and r.group == group)

    found = []
    for slider in SLIDERS:
        metric = next(m for m in metric_list if m.name == slider.key)
        swept = values[slider.key]
        curve = {"name": slider.name, "slider": slider.label, "measure": slider.measure_label, "values": list(swept),
                 "direction": slider.direction, "input": find(OPERATOR, slider.group(swept[0])).extra["input"]}
        for system, side in ((OURS, "model"), (OPERATOR, "operator")):
            intervals = [cell(metric, [find(system, slider.group(value))]) for value in swept]
            curve[side] = [i.estimate for i in intervals]
            curve[f"{side}_interval"] = [(i.low, i.high) for i in intervals]
        found.append(curve)
    colour = {side: float(np.mean(find(system, COLOUR).values["colour_distance"]))
              for system, side in ((UNEDITED, "input"), (OURS, "model"), (OPERATOR, "operator"))}
    return found, colour


def monotone_note(run, found: list[dict]) -> str:
    """Whether each curve's mean moves the operator's way at every step (:func:`retouch.metrics.control.monotone`)."""
    from retouch.metrics.control import monotone

    parts = [f"{c['name']} {c['slider']}: model {'yes' if monotone(c['model'], c['direction']) else 'no'}, "
             f"operator {'yes' if monotone(c['operator'], c['direction']) else 'no'}" for c in found]
    return ("Fig. 4 curves monotone (the mean over crops moves the operator's way by more than 1 % of its "
            f"largest value at every step{', two values per slider in a quick run' if run.quick else ''}): "
            + "; ".join(parts) + ".")


def plot_control_curves(curves: list[dict], colour: dict, path, subtitle: str) -> bool:
    """Fig. 4 as curves: per slider the model's and the operator's mean measure over crops against the slider
    (with 95 % intervals where a curve has them), the input's as a line; then the colour distances as bars.
    False without matplotlib (an optional dependency)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves) + 1, figsize=(3.2 * (len(curves) + 1), 3.0), dpi=110)
    for axis, c in zip(axes, curves):
        for side, style in (("model", dict(marker="o")), ("operator", dict(marker="s", linestyle="--"))):
            line, = axis.plot(c["values"], c[side], label=side, **style)
            if c.get(f"{side}_interval"):
                low, high = zip(*c[f"{side}_interval"])
                axis.fill_between(c["values"], low, high, color=line.get_color(), alpha=0.2)
        axis.axhline(c["input"], color="grey", linewidth=1, label="unedited input")
        axis.set_xlabel(c["slider"])
        axis.set_title(c["name"], fontsize=9)
        axis.set_ylabel(c["measure"])
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    names = ("input", "model", "operator")
    axes[-1].bar(names, [colour[n] for n in names], color=["grey", "C0", "C1"])
    axes[-1].set_title("colour: distance to reference", fontsize=9)
    figure.suptitle(f"Multitask control curves ({subtitle})", fontsize=10)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True
