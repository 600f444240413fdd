"""How well autoencoders decode *spliced* latents: held-out scene pairs cut or pasted in latent cells.

    .venv/bin/python benchmarks/decoder_splices.py --vae out/train-mini/vae/final \
        --vae src/retouch/assets/mini/backbone/vae [--scenes 256] [--grid docs/decoder_splices.png]

Latent surgery and PIXELS decode latents pasted together from different images. For each autoencoder
this prints the PSNR of plain reconstructions and of two splice kinds (a straight cut between two
scenes; the second scene's objects pasted over the first) against the pixel splice of the same cells
(:func:`retouch.train.evaluate_mini.decode_splices`), and saves a grid of the first measured pairs: the
pixel splice, then each autoencoder's decoding. ``retouch bench paper`` measures the shipped autoencoder
the same way, per pair with intervals (:mod:`retouch.bench.decoder_splices`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _grid import save_labelled_rows
from diffusers import AutoencoderKL

from retouch.bench.decoder_splices import SPLICES, figure_rows, splice_pairs
from retouch.distributed import exit_unless_main_process
from retouch.metrics import psnr
from retouch.train.evaluate_mini import decode_splices, reconstruction_psnr
from retouch.world import World

#: pairs shown in the grid, per splice kind
SHOWN = 4


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, action="append", required=True, help="an AutoencoderKL folder (repeat)")
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--grid", type=Path, default=Path("docs/decoder_splices.png"))
    args = parser.parse_args()

    pairs = args.scenes // 2
    scenes = splice_pairs(World(seed=0), pairs)
    vaes = {str(path): AutoencoderKL.from_pretrained(path).eval() for path in args.vae}
    print(f"{args.scenes} held-out scenes (test split); PSNR in dB against the pixel splice of the same cells")
    print(f"{'autoencoder':<48}{'plain':>8}" + "".join(f"{group:>8}" for group in SPLICES))
    decodings = {group: {} for group in SPLICES}
    pixel_splices = {}
    for name, vae in vaes.items():
        plain = float(np.mean(reconstruction_psnr(vae, scenes.images)))
        spliced = []
        for group, kind in SPLICES.items():
            decoded, pixel_splices[group] = decode_splices(vae, scenes, kind)
            spliced.append(float(psnr(decoded, pixel_splices[group]).mean()))
            decodings[group]["/".join(Path(name).parts[-2:])] = decoded[:SHOWN]
        print(f"{name:<48}{plain:>8.2f}" + "".join(f"{value:>8.2f}" for value in spliced))

    rows, labels = figure_rows(scenes.images[:SHOWN], scenes.images[pairs:pairs + SHOWN],
                               {group: (pixel_splices[group][:SHOWN], decodings[group]) for group in SPLICES})
    save_labelled_rows(rows, args.grid, labels)
    print(f"grid: {args.grid}")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
