"""Film grain speed: retouch's renderer against a straightforward port of Newson et al.'s algorithm.

    .venv/bin/python benchmarks/bench_film_grain.py [--size 12] [--samples 800] [--large 256]

Both render the same image at σ = 0.05 with the same Monte-Carlo sample count and must give the same
result; the table reports megapixels (per RGB image) per second and the speed-up.
"""

import argparse
import time

import numpy as np
from skimage import data

from retouch.distributed import exit_unless_main_process
from retouch.effects.film_grain import film_grain
from retouch.effects._film_grain_reference import film_grain_reference
from retouch.imageio import resize_image


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=12, help="side of the image both renderers draw")
    parser.add_argument("--samples", type=int, default=800, help="Monte-Carlo samples N (paper default 800)")
    parser.add_argument("--radius", type=float, default=0.05)
    parser.add_argument("--large", type=int, default=256, help="side of a larger image for the fast renderer alone")
    args = parser.parse_args()

    photo = data.astronaut().astype(np.float32) / 255.0
    small = resize_image(photo, (args.size, args.size))
    fast, fast_s = timed(lambda: film_grain(small, args.radius, n_samples=args.samples))
    slow, slow_s = timed(lambda: film_grain_reference(small, args.radius, n_samples=args.samples))
    megapixels = args.size * args.size / 1e6
    print(f"film grain, σ = {args.radius}, N = {args.samples}, {args.size}x{args.size} RGB")
    print(f"{'renderer':<28}{'seconds':>10}{'MP/s':>12}")
    print(f"{'reference port (Newson)':<28}{slow_s:>10.2f}{megapixels / slow_s:>12.2e}")
    print(f"{'retouch':<28}{fast_s:>10.3f}{megapixels / fast_s:>12.2e}")
    print(f"speed-up: {slow_s / fast_s:.0f}x   identical output: {np.array_equal(fast, slow)}")
    if args.large:
        large = resize_image(photo, (args.large, args.large))
        _, large_s = timed(lambda: film_grain(large, args.radius, n_samples=args.samples))
        print(f"retouch alone, {args.large}x{args.large} RGB: {large_s:.1f} s, "
              f"{args.large * args.large / 1e6 / large_s:.4f} MP/s")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
