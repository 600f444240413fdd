"""Captions of input images: the text c that pix2pix-zero inverts and edits with (§3, "we generate
an initial text prompt c using BLIP").

Where the caption comes from, in order:

1. the user's text (``--source-text``), the same for every image;
2. a LOCAL BLIP captioning folder (transformers ``BlipForConditionalGeneration`` + ``BlipProcessor``);
3. ``"mini"`` (or, with no captioner named, whenever the model is the shipped mini model): a caption
   assembled from the mini world's judge classifying shape, colour, pattern and background
   zero-shot, in the world's own caption wording;
4. otherwise a one-line error asking for ``--source-text``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from retouch.errors import RetouchError, first_line

MINI_CAPTIONER = "mini"
#: BLIP is prompted with this opening, as the official pix2pix-zero code's LAVIS BLIP ("base_coco") is.
BLIP_PROMPT = "a picture of"
BLIP_MAX_NEW_TOKENS = 40
#: Attributes the mini judge classifies for a caption, and the phrasing it was trained on
#: (``retouch.train.mini.partial_caption``). Accessories are left out: the judge is not trained to
#: tell them reliably, and a wrong "wearing a hat" would put a word into c that the image lacks.
_MINI_PROMPTS = {
    "shape": "a photo of a {}",
    "colour": "a photo of a {} object",
    "pattern": "a photo of a {} object",
    "background": "a photo of a object on {}",
}


def caption_images(images: torch.Tensor, *, source_text: str = "", captioner: str = "", backbone=None) -> list[str]:
    """One caption per image of ``images`` (B, 3, H, W) in [−1, 1] (see the module docstring for the order)."""
    batch = images.shape[0]
    if source_text:
        return [source_text] * batch
    if captioner and captioner != MINI_CAPTIONER:
        return BlipCaptioner(captioner, device=images.device)(images)
    from retouch.backbone import MINI_NAME

    if captioner == MINI_CAPTIONER or (backbone is not None and backbone.source == MINI_NAME):
        return MiniWorldCaptioner(device=images.device)(images)
    raise RetouchError("no caption for the input: pass --source-text with a caption of the image (e.g. 'a photo "
                       "of a cat'), or --captioner with a local BLIP captioning folder")


def _unit_range(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


class BlipCaptioner:
    """A local BLIP captioning model (Li et al. 2022) folder; nothing is downloaded."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        from transformers import BlipForConditionalGeneration, BlipProcessor

        path = Path(folder)
        if not path.is_dir():
            raise RetouchError(f"captioner '{path}' not found: give a local folder with a transformers "
                               "BlipForConditionalGeneration and its BlipProcessor, or pass --source-text")
        try:
            self.processor = BlipProcessor.from_pretrained(path, local_files_only=True)
            self.model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True,
                                                                      use_safetensors=True)
        except (OSError, ValueError, TypeError) as err:
            raise RetouchError(f"cannot load the BLIP captioner from '{path}': {first_line(err)}") from err
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[str]:
        arrays = [image.permute(1, 2, 0).cpu().numpy() for image in _unit_range(images)]
        inputs = self.processor(images=arrays, text=[BLIP_PROMPT] * len(arrays), do_rescale=False,
                                return_tensors="pt").to(self.device)
        tokens = self.model.generate(**inputs, max_new_tokens=BLIP_MAX_NEW_TOKENS)
        captions = [" ".join(text.split()) for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]
        if not all(captions):
            raise RetouchError("the BLIP captioner returned an empty caption; pass --source-text instead")
        return captions


class MiniWorldCaptioner:
    """Captions mini-world scenes with the shipped judge's zero-shot attribute classification."""

    def __init__(self, device: str | torch.device = "cpu"):
        from retouch.backbone import MINI_DIR
        from retouch.metrics.semantic import TransformersCLIPJudge

        folder = MINI_DIR / "judge"
        if not (folder / "config.json").is_file():
            raise RetouchError(f"the mini world's judge is not in this installation ({folder}), so it cannot "
                               "caption the input; pass --source-text, or train it with `retouch train mini`")
        self.judge = TransformersCLIPJudge(folder, device=device)

    def classify(self, images01: torch.Tensor, attribute: str) -> list[str]:
        """The most similar vocabulary word of ``attribute`` for each image (CLIP zero-shot)."""
        import torch.nn.functional as F

        from retouch.world import VOCABULARIES

        words = list(VOCABULARIES[attribute])
        prompts = [_MINI_PROMPTS[attribute].format(word) for word in words]
        texts = F.normalize(self.judge.encode_texts(prompts).float(), dim=-1)
        pictures = F.normalize(self.judge.encode_images(images01).float(), dim=-1)
        return [words[i] for i in (pictures @ texts.to(pictures.device).T).argmax(dim=-1).tolist()]

    def __call__(self, images: torch.Tensor) -> list[str]:
        images01 = _unit_range(images)
        found = {attribute: self.classify(images01, attribute) for attribute in _MINI_PROMPTS}
        captions = []
        for i in range(images.shape[0]):
            words = [found["colour"][i]]
            if found["pattern"][i] != "plain":
                words.append(found["pattern"][i])
            words.append(found["shape"][i])
            phrase = " ".join(words)
            article = "an" if phrase[0] in "aeiou" else "a"
            # The world's canonical caption: "{things} on {background}" (retouch.world.captions).
            captions.append(f"{article} {phrase} on {found['background'][i]}")
        return captions
