"""CLIP-format BPE tokenizers built offline from a text corpus.

Real checkpoints ship their CLIP tokenizer; our tiny test models and the mini world cannot download
one, so we train a byte-level BPE on a corpus and write it in CLIP's own file format (``vocab.json`` +
``merges.txt``, ``</w>`` end-of-word marks, ``<|startoftext|>``/``<|endoftext|>``). The result loads
with transformers' ``CLIPTokenizer`` exactly like Stable Diffusion's, so every code path that
tokenizes a prompt is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
CLIP_MAX_LENGTH = 77

# A small built-in corpus for the tiny test configurations: enough words that prompts used in tests
# become single tokens; anything else falls back to byte-level characters, as in CLIP.
TINY_CORPUS = (
    "a photo of a cat sitting on the grass",
    "a photo of a dog sitting on the grass",
    "a red circle on sand",
    "a blue square on water",
    "a green striped triangle on snow",
    "a painting of a horse in the style of van gogh",
    "a zebra and a horse in a field",
    "an image of a tree by the lake",
)


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP uses for raw bytes (GPT-2's byte-to-unicode table)."""
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: ord(ch))


def train_clip_bpe(corpus: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a CLIP-style BPE: returns (vocab, merges) in CLIP's order (bytes, bytes+</w>, merges, specials)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    alphabet = _byte_alphabet()
    base_size = 2 * len(alphabet) + 2
    if vocab_size < base_size:
        raise ValueError(f"a CLIP-format vocabulary needs at least {base_size} entries, asked for {vocab_size}")
    bpe = Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(
        # The trainer's vocabulary is alphabet + merges; ours adds the </w> variants and two specials.
        vocab_size=vocab_size - len(alphabet) - 2,
        end_of_word_suffix=END_OF_WORD,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in model["merges"]]

    tokens = alphabet + [ch + END_OF_WORD for ch in alphabet]
    seen = set(tokens)
    for left, right in merges:
        merged = left + right
        if merged not in seen:
            seen.add(merged)
            tokens.append(merged)
    budget = vocab_size - 2
    tokens = tokens[:budget]
    kept = set(tokens)
    merges = [(a, b) for a, b in merges if a + b in kept]
    vocab = {token: i for i, token in enumerate(tokens + [BOS, EOS])}
    return vocab, merges


def write_clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], directory: Path,
                         max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """Write ``vocab.json``/``merges.txt`` and return the ``CLIPTokenizer`` loaded from them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length, pad_token=EOS
    )
    tokenizer.save_pretrained(directory)  # keeps model_max_length and the special tokens with the files
    return tokenizer


def build_clip_tokenizer(corpus: Iterable[str], vocab_size: int, directory: Path,
                         max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """Train on ``corpus`` and write a CLIP tokenizer of ``vocab_size`` entries into ``directory``."""
    vocab, merges = train_clip_bpe(corpus, vocab_size)
    return write_clip_tokenizer(vocab, merges, directory, max_length)
