"""Film grain speed: the numpy renderer against the compiled (numba) one, and a 1-megapixel photo.

    .venv/bin/python benchmarks/bench_film_grain.py [--crop 128] [--samples 800] [--radius 0.05]
        [--megapixel 1000] [--cold-cache] [--port 0]

Both renderers draw the same counter-based grains (Newson et al. 2017, Algorithm 1) on the same
crop of scikit-image's chelsea, σ = 0.05, N = 800, and must give the same image; the table gives
wall and CPU seconds, Monte-Carlo samples per second and the speed-up. Then the compiled renderer
alone grain-renders astronaut resized to --megapixel² RGB. Numba's first call (compiling the loops,
or loading them from its on-disk cache) happens before any timing and is reported on its own line;
--cold-cache points the cache at an empty folder so that line is a real compile. --port N adds the
scalar port of the paper's algorithm (retouch.effects._film_grain_reference) on an N×N crop.

CPU seconds count every thread; on a machine shared with other work they are the steadier number.
"""

import os
import sys
import tempfile
import time

import numpy as np
from skimage import data

from _options import script_parser

from retouch.distributed import exit_unless_main_process
from retouch.imageio import resize_image


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main():
    args = script_parser(
        __doc__, crop=(128, "side of the chelsea crop both renderers draw"),
        samples=(800, "Monte-Carlo samples N (paper default 800)"), radius=(0.05, "grain radius σ in input pixels"),
        megapixel=(1000, "side of the photo the compiled renderer draws alone (0: skip)"),
        cold_cache=(False, "compile numba's loops afresh (empty cache)"),
        port=(0, "side of a crop for the scalar port too (0: skip)")).parse_args()
    if args.cold_cache:  # read when numba is first imported, which film_grain does lazily
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cache-")

    from retouch.effects.film_grain import _numba_kernels, film_grain

    cat = data.chelsea().astype(np.float32) / 255.0  # 300 × 451
    top, left = (cat.shape[0] - args.crop) // 2, (cat.shape[1] - args.crop) // 2
    crop = cat[top:top + args.crop, left:left + args.crop]

    def render(image, backend, n_samples=args.samples):
        return film_grain(image, args.radius, n_samples=n_samples, seed=0, backend=backend)

    _, first_s, _ = timed(lambda: (render(crop[:4, :4], "numba", 8), render(crop[:4, :4], "numba", 800)))
    kernels = _numba_kernels()
    loaded = sum(sum(k.stats.cache_hits.values()) for k in (kernels.dense, kernels.sparse))
    how = "loaded from numba's cache" if loaded else "compiled"
    print(f"film grain, σ = {args.radius}, N = {args.samples}; {os.cpu_count()} cores, numba threads "
          f"{kernels.threads}, load average {os.getloadavg()[0]:.1f}")
    print(f"numba first call ({how}, not in the timings below): {first_s:.1f} s")

    fast, fast_wall, fast_cpu = timed(lambda: render(crop, "numba"))
    slow, slow_wall, slow_cpu = timed(lambda: render(crop, "numpy"))
    samples = crop.size * args.samples
    print(f"\nchelsea crop {args.crop}x{args.crop} RGB, {samples / 1e6:.0f} M samples")
    print(f"{'renderer':<24}{'wall s':>9}{'CPU s':>9}{'M samples/CPU s':>17}")
    rows = [("numpy (reference)", slow_wall, slow_cpu), ("numba", fast_wall, fast_cpu)]
    if args.port:
        from retouch.effects._film_grain_reference import film_grain_reference

        small = crop[:args.port, :args.port]
        _, port_wall, port_cpu = timed(lambda: film_grain_reference(small, args.radius, n_samples=args.samples))
        scale = crop.size / small.size  # per sample, as if it had drawn the whole crop
        rows.insert(0, (f"scalar port ({args.port}² crop)", port_wall * scale, port_cpu * scale))
    for name, wall, cpu in rows:
        print(f"{name:<24}{wall:>9.2f}{cpu:>9.2f}{samples / cpu / 1e6:>17.2f}")
    print(f"speed-up numba / numpy: {slow_wall / fast_wall:.1f}x wall, {slow_cpu / fast_cpu:.1f}x CPU "
          f"(target ≥ 10x); max |difference| {np.abs(fast - slow).max():.2g}, identical: {np.array_equal(fast, slow)}")

    if args.megapixel:
        side = args.megapixel
        photo = resize_image(data.astronaut().astype(np.float32) / 255.0, (side, side))
        _, wall, cpu = timed(lambda: render(photo, "numba"))
        print(f"\nnumba alone, astronaut {side}x{side} RGB ({side * side / 1e6:.3g} MP): {wall:.1f} s wall, "
              f"{cpu:.1f} s CPU (target ≤ 20 s on 2 cores)")
    sys.stdout.flush()


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
