"""Peak memory and time per method, with and without attention slicing, on family-sized random models.

    .venv/bin/python benchmarks/memory_time.py [--models sd15,sdxl] [--steps 4] [--repeats 3]
        [--methods all] [--threads 1] [--output TABLE.md]

With a CUDA GPU it builds randomly initialised models of the released architectures at full size
(SD 1.5 at 512², SDXL at 1024², float16; no weights are downloaded, :mod:`retouch.families`) and
measures each method's peak GPU memory above the weights (``torch.cuda.max_memory_allocated``) and
wall time, for fused attention, attention slicing and CPU offload (offload's peak counts the weights
too, since they leave the GPU). Without one it runs the tiny variants of the same architectures at
64² in float32, plus the shipped mini model: peak CPU memory of live tensors from the profiler's
allocation events (RSS mostly shows the allocator's caching), and time.

The peer is the same edit with fused attention (no slicing), run in the same process, interleaved
round by round so drift hits both alike; the table gives slicing's time and memory as ratios to it.
Multitask runs on its initialisation from the backbone (``MultitaskModel.from_backbone``).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from _options import script_parser
from _measure import peak_bytes, sync, time_interleaved

from retouch import memory
from retouch.distributed import exit_unless_main_process
from retouch.families import FAMILIES, random_backbone
from retouch.methods import available_methods, get_method, make_config
from retouch.recipes import supported

SOURCE = "a red circle on sand"
INPUTS = {  # each method's own inputs, on words both the tiny and the mini tokenizers know
    "sdedit": dict(prompt="a blue circle on sand"),
    "ddim": dict(edit="red->blue", source_text=SOURCE),
    "ddpm": dict(edit="red->blue", source_text=SOURCE),
    "p2p": dict(edit="red->blue", source_text=SOURCE),
    "pix2pix-zero": dict(edit="red->blue", source_text=SOURCE, bank="templates", bank_size=8),
    "zerocon": dict(edit="red->blue", source_text=SOURCE, bank="templates", bank_size=8),
    "pixels": {}, "latent-surgery": {}, "scaled-noise": {},
    "multitask": dict(blur=0.3, grain=0.05),
    "diffedit": dict(edit="red->blue", source_text=SOURCE),
    "portrait": dict(edit="blue"),  # an untrained MCDM (random c_im MLP): the cost is what is measured
}


def _model(name: str, device: torch.device, full: bool):
    """(label, backbone, image side) for a family key or ``mini``."""
    if name == "mini":
        from retouch.backbone import load_backbone

        return "mini (shipped)", load_backbone("mini", device=device), 64
    family = FAMILIES[name]
    dtype = torch.float16 if full else torch.float32
    backbone = random_backbone(name, tiny=not full, device=device, dtype=dtype)
    label = f"{family.title.split(' (')[0]}, {'full size' if full else 'tiny'}"
    return label, backbone, family.resolution if full else 64


def _job(method, backbone, side: int, steps: int):
    """A no-argument callable running one edit of a fixed random image."""
    device, dtype = backbone.device, backbone.dtype
    image = (torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device, dtype)
    options = dict(INPUTS.get(method.name, {}), num_steps=steps)
    config = make_config(method, **{k: v for k, v in options.items() if k in method.option_names()})
    model, extra = backbone, {}
    if method.name in ("pixels", "latent-surgery", "scaled-noise"):
        exemplar = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1
        edit_map = torch.zeros(side, side)
        edit_map[:, side // 2:] = 1.0
        extra = dict(exemplars=[exemplar.to(device, dtype)], maps=[edit_map.to(device, dtype)])
    if method.name == "multitask":
        from retouch.networks.multitask import MultitaskModel

        model = MultitaskModel.from_backbone(backbone)
    if method.name == "portrait":
        from retouch.networks.portrait import PortraitModel, PortraitSpec

        torch.manual_seed(0)
        model = PortraitModel.from_backbone(backbone, PortraitSpec(directions={"blue": (SOURCE, "a blue circle on sand")}))

    def run():
        return method.edit(model, image, config, **extra)

    return model, run


def _sliced(model, run):
    def sliced_run():
        memory.enable_attention_slicing(model, "auto")
        try:
            return run()
        finally:
            memory.enable_attention_slicing(model, None)

    return sliced_run


def _offloaded_peak(backbone, run, device) -> int:
    """Peak GPU bytes of ``run`` with CPU offload, counting the weights (they leave the GPU)."""
    backbone.to("cpu")
    memory.enable_cpu_offload(backbone, device)
    try:
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        run()
        sync(device)
        return torch.cuda.max_memory_allocated(device)
    finally:
        memory.disable_cpu_offload(backbone)


def measure(names, methods, steps: int, repeats: int, device: torch.device) -> list[dict]:
    full = device.type == "cuda"
    rows = []
    for name in names:
        label, backbone, side = _model(name, device, full)
        family_key = "sd15" if name == "mini" else name
        weights = sum(p.numel() * p.element_size() for m in (backbone.vae, backbone.unet, *backbone.text_encoders)
                      for p in m.parameters())
        for method_name in methods:
            if not supported(method_name, family_key):
                continue
            method = get_method(method_name)
            model, run = _job(method, backbone, side, steps)
            sliced = _sliced(model, run)
            started = time.perf_counter()
            times = time_interleaved({"fused": run, "sliced": sliced}, repeats, device)
            peaks = {"fused": peak_bytes(run, device), "sliced": peak_bytes(sliced, device)}
            row = dict(model=label, side=side, method=method_name, steps=steps, weights=weights,
                       fused_s=statistics.median(times["fused"]), sliced_s=statistics.median(times["sliced"]),
                       fused_peak=peaks["fused"], sliced_peak=peaks["sliced"])
            if full and method_name not in ("multitask", "portrait"):
                row["offload_peak"] = _offloaded_peak(backbone, run, device)
                backbone.to(device)
            rows.append(row)
            print(f"  {label} {method_name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        del backbone
        if full:
            torch.cuda.empty_cache()
    return rows


def table(rows: list[dict], device: torch.device) -> str:
    where = "GPU" if device.type == "cuda" else "CPU"
    offload = device.type == "cuda"
    head = (f"| model | image | method | steps | weights MB | time s | peak {where} MB above weights | "
            "sliced: time × | sliced: peak × |" + (" offload: peak GPU MB (all) |" if offload else ""))
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if offload else "")]
    for r in rows:
        line = (f"| {r['model']} | {r['side']}² | `{r['method']}` | {r['steps']} | {r['weights'] / 2**20:.1f} | "
                f"{r['fused_s']:.3f} | {r['fused_peak'] / 2**20:.2f} | {r['sliced_s'] / r['fused_s']:.3f} | "
                f"{r['sliced_peak'] / max(r['fused_peak'], 1):.3f} |")
        if offload:
            line += f" {r['offload_peak'] / 2**20:.0f} |" if "offload_peak" in r else " — |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = script_parser(
        __doc__, models=(None, "comma-separated family keys and/or mini (default: sd15,sdxl on a GPU; mini,sd15,sdxl)"),
        methods=("all", "comma-separated method names, or all"), steps=4, repeats=3,
        threads=(1, "CPU threads (1 is the fastest on a shared CPU)"), device="auto",
        output=(None, "also write the table (markdown) here")).parse_args(argv)
    torch.set_num_threads(args.threads)
    from retouch._quiet import quiet_third_party

    quiet_third_party()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    names = (args.models or ("sd15,sdxl" if device.type == "cuda" else "mini,sd15,sdxl")).split(",")
    methods = sorted(available_methods()) if args.methods == "all" else args.methods.split(",")
    rows = measure(names, methods, args.steps, args.repeats, device)
    header = (f"{'GPU ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU, no GPU available'}"
              f", {args.threads} thread(s), torch {torch.__version__}, {args.steps} steps, median of {args.repeats}")
    text = header + "\n\n" + table(rows, device)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
