"""The rendered ("oracle") pairs the MCDM in docs/portrait.md was trained on, as a pairs dataset.

Unlike ``retouch data pairs --source renderer``, which renders the world's side-by-side pair (each half
a different crop of one background texture, as a generated pair would be), each side here is rendered
as its own 64² scene, so x_A and x_B share the background exactly and differ only in the edit.
Train split only; the same manifest format, so ``retouch train portrait --data OUT`` reads it.

    python benchmarks/portrait_oracle_pairs.py out/pairs-renderer 1500
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from retouch.distributed import exit_unless_main_process
from retouch.world import World
from retouch.world.render import render_scene
from retouch.world.scene import sample_pair

#: direction → (change on the right, what the left side is fixed to)
CHANGES = {"striped": ({"pattern": "striped"}, {"pattern": "plain"}),
           "hat": ({"accessory": "hat"}, {"accessory": "none"})}


def main(out: Path, count: int) -> None:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: '{out}' exists and is not empty")
    (out / "left").mkdir(parents=True, exist_ok=True)
    (out / "right").mkdir(exist_ok=True)
    world, rows, made, index = World(0), [], {name: 0 for name in CHANGES}, 0
    while min(made.values()) < count:
        if world.split(index) == "train":
            for name, (change, fixed) in CHANGES.items():
                if made[name] >= count:
                    continue
                left, right = sample_pair(np.random.default_rng([0, index, 11 + len(name)]), change, **fixed)
                key = f"{name}-{index:06d}"
                for side, spec in (("left", left), ("right", right)):
                    image = render_scene(spec, 64).image
                    Image.fromarray((image * 255).round().astype(np.uint8)).save(out / side / f"{key}.png")
                rows.append({"left": f"left/{key}.png", "right": f"right/{key}.png", "direction": name,
                             "split": "train", "kept": True})
                made[name] += 1
        index += 1
    (out / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} pairs to {out} ({made})")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main(Path(sys.argv[1]), int(sys.argv[2]))
