"""Edit directions in text-embedding space from sentence banks (pix2pix-zero §3.2, Fig. 2).

Δc_edit = mean over target sentences − mean over source sentences of the per-token text states the
U-Net's cross-attention reads (77×768 for SD 1.x; both SDXL encoders' penultimate states concatenated,
via :meth:`Backbone.encode_text`). SDXL also conditions on a pooled text embedding; its direction is
the same mean difference of the pooled embeddings, and the edit adds it to the caption's pooled
embedding just as Δc is added to the caption's token states (c + Δc for both inputs).

Sentence banks come from built-in templates around the word, from the mini world's caption
generator (:func:`retouch.world.sentence_bank`), from the user's text files (one sentence per line),
or from a local causal language model that continues template openings (the paper used GPT-3).

Directions are cached as ``.safetensors`` files whose metadata records the text encoder's identity;
loading one built with another text encoder is refused, since the embedding spaces differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from retouch.errors import RetouchError, check_range, first_line

DIRECTION_FORMAT = "retouch-direction/1"
BANKS = ("templates", "world")
#: Sentences per side of a mini-world bank, and of a generated bank, when no count is given.
DEFAULT_BANK_SIZE = 64
_ENCODE_BATCH = 16

#: Sentence templates around a word: ``{a}`` is the word with its article ("a cat", "an owl"),
#: ``{w}`` the bare word. Varied framings, qualities and positions, so that the mean embedding
#: keeps what the word contributes and averages the rest away.
TEMPLATES = (
    "a photo of {a}",
    "a picture of {a}",
    "an image of {a}",
    "a close-up photo of {a}",
    "a blurry photo of {a}",
    "a bright photo of {a}",
    "a dark photo of {a}",
    "a cropped photo of {a}",
    "a good photo of {a}",
    "a photo of the {w}",
    "a photo of my {w}",
    "a rendering of {a}",
    "a drawing of {a}",
    "a painting of {a}",
    "a sketch of {a}",
    "{a} in the picture",
    "{a} in the scene",
    "{a} on the left",
    "{a} on the right",
    "{a} in the center",
    "there is {a} in this photo",
    "a photo showing {a}",
    "a snapshot of {a}",
    "a low resolution photo of {a}",
    "a high resolution photo of {a}",
    "a jpeg photo of {a}",
    "a photo of a small {w}",
    "a photo of a large {w}",
    "{a} seen from the front",
    "{a} seen from the side",
    "a close photo of {a} on a plain background",
    "a nice photo of {a} outdoors",
)


@dataclass(frozen=True)
class EditDirection:
    """Δc_edit for one source → target edit, with where it came from."""

    hidden_states: torch.Tensor  # (tokens, D): target mean − source mean of the per-token states
    pooled: torch.Tensor | None  # (D₂,) the same for SDXL's pooled embedding, else None
    source: str
    target: str
    source_count: int
    target_count: int
    encoder_id: str
    bank: str = ""

    def apply(self, conditioning):
        """c + Δc_edit (pix2pix-zero §3.3): the direction added to every row's token states (and pooled)."""
        hidden = conditioning.hidden_states + self.hidden_states.to(conditioning.hidden_states)
        pooled = conditioning.pooled
        if pooled is not None and self.pooled is not None:
            pooled = pooled + self.pooled.to(pooled)
        return type(conditioning)(hidden, pooled, conditioning.time_ids)


# ---------------------------------------------------------------------------------------------
# Sentence banks
# ---------------------------------------------------------------------------------------------
def _with_article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def template_bank(word: str, count: int | None = None) -> list[str]:
    """The first ``count`` (default: all) built-in template sentences around ``word``."""
    count = len(TEMPLATES) if count is None else count
    if not 1 <= count <= len(TEMPLATES):
        raise RetouchError(f"the template bank has 1 to {len(TEMPLATES)} sentences per word; asked for {count} "
                           "(use the world bank, a sentence file or a sentence generator for more)")
    return [template.format(a=_with_article(word), w=word) for template in TEMPLATES[:count]]


def world_bank(word: str, count: int = DEFAULT_BANK_SIZE, seed: int = 0) -> list[str]:
    """``count`` mini-world captions containing the attribute ``word`` (:func:`retouch.world.sentence_bank`)."""
    import numpy as np

    from retouch.world import VOCABULARIES, sentence_bank

    known = {w for words in VOCABULARIES.values() for w in words}
    if word not in known:
        raise RetouchError(f"'{word}' is not a mini-world word, so the world bank has no sentences for it; "
                           "use the template bank or a sentence file")
    if count < 1:
        raise RetouchError(f"a sentence bank needs at least 1 sentence; asked for {count}")
    return sentence_bank(word, count, np.random.default_rng(seed))


def file_bank(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, one sentence each."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RetouchError(f"sentence file '{path}' not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RetouchError(f"cannot read sentence file '{path}': {err}") from err
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise RetouchError(f"sentence file '{path}' has no sentences (one per line)")
    return sentences


def generated_bank(model_dir: str | Path, word: str, count: int = DEFAULT_BANK_SIZE, *, seed: int = 0,
                   max_new_tokens: int = 16) -> list[str]:
    """``count`` sentences about ``word`` from a LOCAL transformers causal language model folder.

    The paper generated its banks with GPT-3; here a local model continues the template openings
    ("a photo of a cat", "a sketch of a cat", …) by sampling, so every sentence contains the word
    and the model adds the variety. Sampling runs under a forked RNG seeded with ``seed``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not path.is_dir():
        raise RetouchError(f"sentence generator '{path}' not found: give a local folder with a transformers "
                           "causal language model (config.json, model.safetensors, tokenizer files)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    except (OSError, ValueError, KeyError) as err:
        raise RetouchError(f"cannot load the sentence generator from '{path}': {first_line(err)}") from err
    openings = [template.format(a=_with_article(word), w=word) for template in TEMPLATES]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sentences = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for i in range(count):
            opening = openings[i % len(openings)]
            inputs = tokenizer(opening, return_tensors="pt")
            output = model.generate(**inputs, do_sample=True, top_p=0.95, max_new_tokens=max_new_tokens,
                                    pad_token_id=pad)
            continuation = tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
            sentences.append(_one_sentence(opening + " " + continuation.strip()))
    return sentences


def sentence_banks(source: str, target: str, *, bank: str = "templates", count: int | None = None,
                   generator: str | Path = "", files: tuple[str | Path, str | Path] | None = None, seed: int = 0,
                   model: str = "") -> tuple[list[str], list[str], str]:
    """(source sentences, target sentences, bank label) for an edit, from the first source given of:
    two sentence ``files``, a local sentence ``generator`` folder, or the named ``bank``.

    ``bank="auto"`` picks the mini world's captions when ``model`` is the mini model and both words
    are mini-world words (its text encoder has only seen such captions), else the templates.
    """
    if files is not None:
        return file_bank(files[0]), file_bank(files[1]), "files"
    if generator:
        n = count or DEFAULT_BANK_SIZE
        return (generated_bank(generator, source, n, seed=seed), generated_bank(generator, target, n, seed=seed),
                "generator")
    if bank == "auto":
        from retouch.backbone import MINI_NAME
        from retouch.world import VOCABULARIES

        known = {w for words in VOCABULARIES.values() for w in words}
        bank = "world" if model == MINI_NAME and {source, target} <= known else "templates"
    if bank == "world":
        n = count or DEFAULT_BANK_SIZE
        return world_bank(source, n, seed), world_bank(target, n, seed), "world"
    if bank == "templates":
        return template_bank(source, count), template_bank(target, count), "templates"
    raise RetouchError(f"unknown sentence bank {bank!r}; choose one of {', '.join(BANKS)}")


def _one_sentence(text: str) -> str:
    """Up to the first line break or sentence end, with whitespace collapsed."""
    first = re.match(r"[^\n.!?]*[.!?]?", text.lstrip()).group(0)
    return " ".join(first.split())


# ---------------------------------------------------------------------------------------------
# Building, saving, loading
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def mean_text_embedding(backbone, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean per-token text states (tokens, D) of ``sentences``, and their mean pooled embedding (SDXL)."""
    hidden_sum, pooled_sum = None, None
    accumulate = torch.promote_types(backbone.dtype, torch.float32)  # fp16 models sum in fp32
    for start in range(0, len(sentences), _ENCODE_BATCH):
        cond = backbone.encode_text(sentences[start : start + _ENCODE_BATCH])
        part = cond.hidden_states.to(accumulate).sum(0)
        hidden_sum = part if hidden_sum is None else hidden_sum + part
        if cond.pooled is not None:
            pooled = cond.pooled.to(accumulate).sum(0)
            pooled_sum = pooled if pooled_sum is None else pooled_sum + pooled
    n = len(sentences)
    return hidden_sum / n, None if pooled_sum is None else pooled_sum / n


def build_direction(backbone, source_sentences: list[str], target_sentences: list[str], *, source: str,
                    target: str, bank: str = "") -> EditDirection:
    """Δc_edit = mean embedding of the target bank − mean embedding of the source bank (§3.2)."""
    if not source_sentences or not target_sentences:
        raise RetouchError("an edit direction needs at least one source and one target sentence")
    source_hidden, source_pooled = mean_text_embedding(backbone, source_sentences)
    target_hidden, target_pooled = mean_text_embedding(backbone, target_sentences)
    pooled = None if source_pooled is None else target_pooled - source_pooled
    return EditDirection(
        hidden_states=target_hidden - source_hidden, pooled=pooled, source=source, target=target,
        source_count=len(source_sentences), target_count=len(target_sentences),
        encoder_id=text_encoder_identity(backbone), bank=bank,
    )


def build_direction_file(source: str, target: str, output: str | Path, *, model: str = "mini", bank: str = "auto",
                         bank_files: tuple[str, str] | None = None, generator: str | Path | None = None,
                         count: int | None = None, seed: int = 0, device: str = "auto", allow_pickle: bool = False,
                         offline: bool | None = None) -> str:
    """``retouch directions build``: the direction SOURCE → TARGET for ``model``'s text encoder, saved to
    ``output`` (.safetensors); the arguments are checked before the model loads. Returns the line to print."""
    import time

    from retouch.backbone import load_backbone, resolve_device
    from retouch.edit_text import parse_edit

    output = Path(output)
    spec = parse_edit(f"{source}->{target}")
    if output.suffix.lower() != ".safetensors":
        raise RetouchError(f"an edit direction is saved as .safetensors; got '{output}'")
    if bank_files and any(output.resolve() == Path(p).resolve() for p in bank_files):
        raise RetouchError(f"the output '{output}' is one of the sentence files; choose another path")
    check_range("--count", count, 1)  # None: every sentence
    backbone = load_backbone(model, device=resolve_device(device), allow_pickle=allow_pickle, offline=offline)
    started = time.perf_counter()
    source_bank, target_bank, label = sentence_banks(
        spec.source, spec.target, bank=bank, count=count, generator=generator or "",
        files=tuple(bank_files) if bank_files else None, seed=seed, model=backbone.source,
    )
    direction = build_direction(backbone, source_bank, target_bank, source=spec.source, target=spec.target,
                                bank=label)
    save_direction(direction, output, model=str(model))
    return (f"wrote {output} ({spec}, {len(source_bank)}+{len(target_bank)} sentences ({label}), text encoder "
            f"{direction.encoder_id}, {time.perf_counter() - started:.1f} s)")


def text_encoder_identity(backbone) -> str:
    """A short hash identifying the text encoder(s) and tokenizer(s) a direction belongs to.

    Covers each encoder's class and config (minus bookkeeping keys), every parameter's name and shape
    and up to 4096 evenly spaced values of it rounded to float16 (so fp32 and fp16 copies of one
    model agree, and any fine-tune differs), and each tokenizer's vocabulary and maximum length.
    """
    digest = hashlib.sha256()
    for encoder in backbone.text_encoders:
        config = encoder.config.to_dict()
        for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation",
                         "_attn_implementation_autoset", "architectures"):
            config.pop(volatile, None)
        digest.update(type(encoder).__name__.encode())
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        for name, tensor in encoder.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)][:4096]
            digest.update(f"{name}:{tuple(tensor.shape)}".encode())
            digest.update(sample.to("cpu", torch.float16).numpy().tobytes())
    for tokenizer in backbone.tokenizers:
        vocab = sorted(tokenizer.get_vocab().items())
        digest.update(json.dumps([vocab, tokenizer.model_max_length]).encode())
    return digest.hexdigest()[:16]


def save_direction(direction: EditDirection, path: str | Path, *, model: str = "") -> Path:
    """Write ``direction`` to a ``.safetensors`` file atomically (a temporary file renamed into place)."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise RetouchError(f"an edit direction is saved as .safetensors; got '{path}'")
    tensors = {"hidden_states": direction.hidden_states.detach().float().cpu().contiguous()}
    if direction.pooled is not None:
        tensors["pooled"] = direction.pooled.detach().float().cpu().contiguous()
    metadata = {
        "format": DIRECTION_FORMAT, "source": direction.source, "target": direction.target,
        "source_count": str(direction.source_count), "target_count": str(direction.target_count),
        "text_encoder_id": direction.encoder_id, "bank": direction.bank, "model": model,
    }
    data = save(tensors, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_direction(path: str | Path, backbone=None) -> EditDirection:
    """Read a cached direction; with ``backbone``, refuse one built with a different text encoder."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RetouchError(f"edit direction file '{path}' not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise RetouchError(f"cannot read edit direction '{path}': not a valid safetensors file") from err
    if metadata.get("format") != DIRECTION_FORMAT or "hidden_states" not in tensors:
        raise RetouchError(f"'{path}' is not a retouch edit direction (build one with `retouch directions build`)")
    direction = EditDirection(
        hidden_states=tensors["hidden_states"], pooled=tensors.get("pooled"), source=metadata["source"],
        target=metadata["target"], source_count=int(metadata["source_count"]),
        target_count=int(metadata["target_count"]), encoder_id=metadata["text_encoder_id"],
        bank=metadata.get("bank", ""),
    )
    if backbone is not None:
        current = text_encoder_identity(backbone)
        if current != direction.encoder_id:
            raise RetouchError(
                f"edit direction '{path}' ({direction.source}->{direction.target}) was built with another text "
                f"encoder ({direction.encoder_id}, model '{metadata.get('model', '?')}') than this model's "
                f"({current}); rebuild it with `retouch directions build {direction.source} {direction.target} "
                f"--model ...`"
            )
    return direction
