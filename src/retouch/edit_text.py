"""Edit strings ("cat->dog") and word swaps on captions, shared by every text-driven method and the direction builder.

An edit names a source word (or phrase) and a target one. Methods that need a full source and target
prompt (prompt-to-prompt, DDIM/DDPM inversion + word swap, SDEdit + word swap) get them by swapping
the words inside the input's caption; pix2pix-zero uses the two words to pick sentence banks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retouch.errors import RetouchError

ARROW = "->"


@dataclass(frozen=True)
class EditSpec:
    source: str
    target: str

    def __str__(self) -> str:
        return f"{self.source}{ARROW}{self.target}"


def parse_edit(text: str) -> EditSpec:
    """``"cat->dog"`` → EditSpec("cat", "dog"); anything else is a one-line RetouchError."""
    if text is None or text.count(ARROW) != 1:
        raise RetouchError(f"bad edit {text!r}: write it as SOURCE->TARGET, e.g. 'cat->dog'")
    source, target = (part.strip() for part in text.split(ARROW))
    if not source or not target:
        raise RetouchError(f"bad edit {text!r}: both sides of '->' must name a word, e.g. 'cat->dog'")
    if source == target:
        raise RetouchError(f"bad edit {text!r}: source and target are the same")
    for part in (source, target):
        if not re.fullmatch(r"[\w' -]+", part):
            raise RetouchError(f"bad edit {text!r}: {part!r} must be plain words")
    return EditSpec(source, target)


def _word_pattern(phrase: str) -> re.Pattern:
    return re.compile(rf"(?<![\w]){re.escape(phrase)}(?![\w])", flags=re.IGNORECASE)


def swap_words(caption: str, edit: EditSpec) -> str:
    """The caption with every whole-word occurrence of ``edit.source`` replaced by ``edit.target``.

    Raises RetouchError when the caption does not mention the source word: a word swap then edits
    nothing, which is never what the user meant.
    """
    pattern = _word_pattern(edit.source)
    if not pattern.search(caption):
        raise RetouchError(f"the caption {caption!r} does not contain the edit's source word {edit.source!r}; "
                           "give a caption that mentions it (--source-text) or explicit texts")
    return pattern.sub(edit.target, caption)


def prompt_texts(caption: str, edit: EditSpec | None, target_text: str | None = None) -> tuple[str, str]:
    """(source prompt, target prompt) from a caption plus either an edit or an explicit target text."""
    if target_text:
        return caption, target_text
    if edit is None:
        raise RetouchError("an edit needs either --edit SOURCE->TARGET or --target-text")
    return caption, swap_words(caption, edit)
