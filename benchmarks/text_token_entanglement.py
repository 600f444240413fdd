"""How far one swapped word moves every token state of a caption, on a model's text encoder.

pix2pix-zero adds Δc = E(target caption) − E(source caption) to *every* token state the U-Net's
cross-attention reads (§3.2–3.3). With a causal text encoder the states before the swapped word do not
move; the ones after it do, by as much as the encoder lets context spread. On the mini model a colour
word comes before the shape, hat and background words, so a colour swap moves the background word's state
too, which the U-Net then draws; a shape swap comes later in the caption and moves fewer states.

    python benchmarks/text_token_entanglement.py
    python benchmarks/text_token_entanglement.py --source "a photo of a red striped square wearing a hat on snow" \
        --target "a photo of a blue striped square wearing a hat on snow"

Prints, per token, ‖Δ‖ and the state's own norm ‖c‖ (and their ratio), then the mean ratio over the padding.
"""

from __future__ import annotations

import argparse

import torch

from retouch.backbone import load_backbone

PAIRS = (
    ("a photo of a red striped square wearing a hat on snow", "a photo of a blue striped square wearing a hat on snow"),
    ("a photo of a red striped circle wearing a hat on snow", "a photo of a red striped square wearing a hat on snow"),
)


def token_shifts(backbone, source: str, target: str) -> list[tuple[str, float, float]]:
    """(token, ‖E(target) − E(source)‖, ‖E(source)‖) per position, through the end-of-text token."""
    with torch.no_grad():
        a = backbone.encode_text([source]).hidden_states[0].float()
        b = backbone.encode_text([target]).hidden_states[0].float()
    tokenizer = backbone.tokenizers[0]
    ids = tokenizer(source).input_ids
    shift, norm = (b - a).norm(dim=-1), a.norm(dim=-1)
    rows = [(tokenizer.decode([t]), float(shift[k]), float(norm[k])) for k, t in enumerate(ids)]
    padding = (shift[len(ids):] / norm[len(ids):]).mean() if len(ids) < len(shift) else torch.tensor(float("nan"))
    rows.append(("(padding, mean)", float(padding), 1.0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--source")
    parser.add_argument("--target")
    args = parser.parse_args()
    backbone = load_backbone(args.model)
    pairs = [(args.source, args.target)] if args.source and args.target else PAIRS
    for source, target in pairs:
        print(f"\n{source!r} -> {target!r}")
        print(f"{'token':>16}  {'‖Δ‖':>6}  {'‖c‖':>6}  ratio")
        for token, shift, norm in token_shifts(backbone, source, target):
            print(f"{token:>16}  {shift:6.2f}  {norm:6.2f}  {shift / norm:5.2f}")


if __name__ == "__main__":
    main()
