"""Mini-world rendering speed, single-threaded numpy, and the sample contact sheet.

    .venv/bin/python benchmarks/bench_world.py [--scenes 2000] [--sizes 64 128] [--grid docs/world_samples.png]

For each image side: the one-time texture bank build, then scenes per second for rendering alone
(specs sampled beforehand; first pass fills the object-coverage cache, second pass is warm), for the
whole ``World.scene`` (sample + caption + render) and for side-by-side pairs. Target: ≥ 1,000
scenes/s at 64×64. ``--grid`` also writes an 8×8 sheet of scenes plus a row of pairs.
"""

import argparse
import time

from retouch.distributed import exit_unless_main_process
from retouch.imageio import save_image
from retouch.world import World, build_texture_banks, render_pair, render_scene, sample_grid
from retouch.world.render import _object_coverage


def rate(count, fn):
    started = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2000, help="scenes per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sides to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=None, help="also write the sample sheet (PNG) here")
    args = parser.parse_args()

    print(f"mini world, {args.scenes} scenes per row, one thread")
    print(f"{'size':>6}{'bank build s':>14}{'render cold/s':>15}{'render warm/s':>15}{'World.scene/s':>15}"
          f"{'pairs/s':>10}")
    for size in args.sizes:
        started = time.perf_counter()
        build_texture_banks(size)
        bank_s = time.perf_counter() - started
        world = World(seed=args.seed, size=size)
        specs = [world.spec(i)[0] for i in range(args.scenes)]
        pairs = [world.pair(i)[:2] for i in range(min(args.scenes, 500))]
        _object_coverage.cache_clear()
        cold = rate(args.scenes, lambda i: render_scene(specs[i], size))
        warm = rate(args.scenes, lambda i: render_scene(specs[i], size))
        full = rate(args.scenes, lambda i: world.scene(args.scenes + i))
        pair = rate(len(pairs), lambda i: render_pair(*pairs[i], size))
        print(f"{size:>6}{bank_s:>14.2f}{cold:>15.0f}{warm:>15.0f}{full:>15.0f}{pair:>10.0f}")

    if args.grid:
        sheet = sample_grid(World(seed=args.seed, size=64), 8, 8)
        save_image(sheet, args.grid, make_parents=True)
        print(f"wrote {args.grid} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
