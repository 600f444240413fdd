"""How well autoencoders decode *spliced* latents: held-out scene pairs cut or pasted in latent cells.

    .venv/bin/python benchmarks/decoder_splices.py --vae out/train-mini/vae/final \
        --vae src/retouch/assets/mini/backbone/vae [--scenes 256] [--grid docs/decoder_splices.png]

Latent surgery and PIXELS decode latents pasted together from different images. For each autoencoder
this prints the PSNR of plain reconstructions and of two splice kinds (a straight cut between two
scenes; the second scene's objects pasted over the first) against the pixel splice of the same cells
(:func:`retouch.train.evaluate_mini.splice_psnr`), and saves a grid: the pixel splice, then each
autoencoder's decoding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _grid import save_labelled_rows
from diffusers import AutoencoderKL

from retouch.distributed import exit_unless_main_process
from retouch.train.evaluate_mini import reconstruction_psnr, splice_psnr
from retouch.world.heldout import held_out_scenes
from retouch.train.mini import latent_composites
from retouch.world import World


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, action="append", required=True, help="an AutoencoderKL folder (repeat)")
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--grid", type=Path, default=Path("docs/decoder_splices.png"))
    args = parser.parse_args()

    scenes = held_out_scenes(World(seed=0), args.scenes, single_object=False)
    vaes = {str(path): AutoencoderKL.from_pretrained(path).eval() for path in args.vae}
    print(f"{args.scenes} held-out scenes (test split); PSNR in dB against the pixel splice of the same cells")
    print(f"{'autoencoder':<48}{'plain':>8}{'cut':>8}{'paste':>8}")
    for name, vae in vaes.items():
        plain = float(np.mean(reconstruction_psnr(vae, scenes.images)))
        print(f"{name:<48}{plain:>8.2f}{splice_psnr(vae, scenes, 1):>8.2f}{splice_psnr(vae, scenes, 2):>8.2f}")

    rows, labels = [], []
    first, second = scenes.images[:4] * 2 - 1, scenes.images[4:8] * 2 - 1
    for kind in (1, 2):
        decoded = {}
        with torch.no_grad():
            for name, vae in vaes.items():
                latents, target = latent_composites(vae, first, second, scenes.object_masks[4:8],
                                                    np.random.default_rng(kind), sample=False, kinds=(kind,))
                decoded[name] = ((vae.decode(latents).sample.clamp(-1, 1) + 1) / 2)
        for k in range(4):
            rows.append([(first[k] + 1) / 2, (second[k] + 1) / 2, (target[k] + 1) / 2,
                         *(d[k] for d in decoded.values())])
            labels.append(["scene A", "scene B", "cut" if kind == 1 else "paste",
                           *("/".join(Path(n).parts[-2:]) for n in decoded)])
    save_labelled_rows(rows, args.grid, labels)
    print(f"grid: {args.grid}")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
