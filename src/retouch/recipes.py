"""Per-method recipes for real checkpoints (SD 1.5, SD 2.1, SDXL), and the doc generated from them.

A recipe names the settings that matter for a method (their values are the method config's defaults,
which carry the papers' values), the changes a family needs (pix2pix-zero's cross-attention guidance
≤ 0.01 on SD 2.x), the families it cannot run on and why, which components it loads, and an example
command. Weight memory comes from :func:`retouch.families.parameter_counts`.

``docs/checkpoints.md`` holds :func:`render` between two markers; ``retouch recipes --write
docs/checkpoints.md`` regenerates it, ``--check`` fails when it is stale (and a test runs the check), so
the doc cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from retouch.families import BYTES_PER_WEIGHT, FAMILIES, Family, parameter_counts

TEXT_TO_IMAGE = ("unet", "vae", "text encoders", "tokenizers")


@dataclass(frozen=True)
class MethodRecipe:
    method: str
    #: config fields that make up the recipe, shown with the config's defaults
    settings: tuple[str, ...]
    #: the model the method's paper ran on
    paper_model: str = ""
    #: family key → field values that replace the defaults on that family
    overrides: dict[str, dict] = field(default_factory=dict)
    #: family key → why the method cannot run on it
    unsupported: dict[str, str] = field(default_factory=dict)
    #: what the method loads of a checkpoint
    components: tuple[str, ...] = TEXT_TO_IMAGE
    #: the method's own inputs in an example command (files are placeholders)
    example: tuple[str, ...] = ()
    notes: str = ""


_WORD_SWAP = ("--edit", "cat->dog", "--source-text", "a photo of a cat")
_EXEMPLAR = ("--exemplar", "exemplar.png", "--map", "exemplar_map.png")
_SD2_XA = {"sd21": {"xa_guidance": 0.01}}
_SD2_XA_NOTE = "λ_xa 0.01 on SD 2.x: larger steps make the latents explode (official pix2pix-zero notes)"

RECIPES: dict[str, MethodRecipe] = {r.method: r for r in (
    MethodRecipe("sdedit", ("num_steps", "guidance_scale", "strength"), "SD 1.4 (pix2pix-zero's baseline)",
                 example=("--prompt", "a watercolor painting of a cat")),
    MethodRecipe("ddim", ("num_steps", "guidance_scale", "inversion"), "SD 1.4 (pix2pix-zero Table 2, B)",
                 example=_WORD_SWAP),
    MethodRecipe("ddpm", ("num_steps", "guidance_scale", "mode", "strength"), "SD 1.4 (pix2pix-zero Table 2, A)",
                 example=_WORD_SWAP),
    MethodRecipe("p2p", ("num_steps", "guidance_scale", "cross_replace_steps", "self_replace_steps"),
                 "SD 1.4 (prompt-to-prompt)", example=_WORD_SWAP),
    MethodRecipe("pix2pix-zero", ("num_steps", "guidance_scale", "xa_guidance", "lambda_auto_corr", "lambda_kl",
                                  "num_reg_steps"), "SD 1.4", overrides=_SD2_XA, example=_WORD_SWAP,
                 notes=_SD2_XA_NOTE),
    MethodRecipe("zerocon", ("num_steps", "guidance_scale", "xa_guidance", "lambda_xa", "lambda_cut",
                             "cut_temperature"), "SD 1.5", overrides=_SD2_XA, example=_WORD_SWAP,
                 notes=_SD2_XA_NOTE),
    MethodRecipe("pixels", ("num_steps", "guidance_scale", "strength", "threshold"), "SDXL (SD 2.1 in its appendix)",
                 example=_EXEMPLAR),
    MethodRecipe("latent-surgery", ("num_steps", "guidance_scale", "strength"), "SDXL (PIXELS' baseline)",
                 example=_EXEMPLAR),
    MethodRecipe("scaled-noise", ("num_steps", "guidance_scale", "strength"), "SDXL (PIXELS' baseline)",
                 example=_EXEMPLAR),
    MethodRecipe("multitask", ("num_steps", "start"), "an LDM text-to-image model (trained on one A10, 24 GB)",
                 components=("unet (widened to 11 input channels)", "vae", "f_θ"),
                 example=("--blur", "0.3", "--grain", "0.05"),
                 notes="a checkpoint is the init of `retouch train multitask --init MODEL`; `edit` then loads the "
                       "trained folder (no classifier-free guidance); on SDXL the pooled text embedding is zero "
                       "and the time ids are the image size, uncropped"),
    MethodRecipe("diffedit", ("num_steps", "guidance_scale", "strength", "mask_strength", "mask_draws",
                              "mask_threshold"), "Stable Diffusion (DiffEdit; the MCDM paper's baseline)",
                 example=_WORD_SWAP),
    MethodRecipe("portrait", ("num_steps", "spatial_scale", "image_scale", "text_scale", "mask_guidance"),
                 "Stable Diffusion, version not stated (MCDM §3.3)",
                 components=("unet (widened to 8 input channels)", "vae", "text encoders", "tokenizers",
                             "c_im MLP", "CLIP image encoder"),
                 example=("--edit", "striped"),
                 notes="a checkpoint is the init of `retouch train portrait --init MODEL` (CLIP_im: a local CLIP "
                       "folder, e.g. openai/clip-vit-large-patch14, as `--image-encoder`); `edit` then loads the "
                       "trained folder; the weights column counts the CLIP image tower as ViT-L/14's 304 M"),
)}

#: Methods whose model is trained from the checkpoint first: method → its output folder in the commands.
TRAINED = {"multitask": "mt", "portrait": "mcdm"}
#: CLIP ViT-L/14's image tower (the MCDM's CLIP_im on real checkpoints), weights and embedding width.
CLIP_IMAGE_PARAMETERS, CLIP_IMAGE_WIDTH = 303_966_976, 768


def recipe_for(method_name: str) -> MethodRecipe:
    """The recipe of a registered method; methods without one get their steps and guidance defaults."""
    from retouch.methods import get_method

    if method_name in RECIPES:
        return RECIPES[method_name]
    names = get_method(method_name).option_names()
    return MethodRecipe(method_name, tuple(n for n in ("num_steps", "guidance_scale") if n in names))


def settings(method_name: str, family_key: str) -> dict:
    """The recipe's field values for ``method_name`` on family ``family_key``: defaults + that family's changes."""
    from retouch.methods import get_method

    recipe = recipe_for(method_name)
    defaults = {f.name: f.default for f in dataclasses.fields(get_method(method_name).config_class)}
    values = {name: defaults[name] for name in recipe.settings}
    return {**values, **recipe.overrides.get(family_key, {})}


def supported(method_name: str, family_key: str) -> bool:
    return family_key not in recipe_for(method_name).unsupported


def method_parameters(method_name: str, family_key: str) -> int:
    """Weights a method holds for family ``family_key`` (all components; multitask: its widened U-Net + VAE + f_θ)."""
    counts = parameter_counts(family_key)
    if method_name == "portrait":
        return _portrait_parameters(family_key, counts)
    if method_name != "multitask":
        return sum(counts.values())
    import torch

    from retouch.networks.multitask import MappingNetwork, MultitaskSpec

    spec, unet = MultitaskSpec(), FAMILIES[family_key].unet
    widened = (spec.input_channels - unet["in_channels"]) * unet["block_out_channels"][0] * 3 * 3
    with torch.device("meta"):
        mapping = MappingNetwork(spec.vector_size, unet["cross_attention_dim"], spec.mapping_depth, spec.mapping_tokens)
    return counts["unet"] + counts["vae"] + widened + sum(p.numel() for p in mapping.parameters())


def _portrait_parameters(family_key: str, counts: dict) -> int:
    """The backbone, c_s's 4 extra input channels, the c_im MLP and a ViT-L/14 image tower."""
    import torch

    from retouch.networks.portrait import ImageEmbeddingMLP, PortraitSpec

    unet = FAMILIES[family_key].unet
    spec = PortraitSpec(clip_dim=CLIP_IMAGE_WIDTH, latent_channels=unet["in_channels"])
    widened = spec.latent_channels * unet["block_out_channels"][0] * 3 * 3
    with torch.device("meta"):
        mlp = ImageEmbeddingMLP(spec, unet["cross_attention_dim"])
    return sum(counts.values()) + widened + sum(p.numel() for p in mlp.parameters()) + CLIP_IMAGE_PARAMETERS


def commands(method_name: str, family_key: str) -> list[list[str]]:
    """Example command lines (argument lists) running the method on the family's reference checkpoint.

    Multitask and the MCDM first train from the checkpoint (``retouch train …`` writes ``OUTPUT_DIR/final``).
    """
    family, recipe = FAMILIES[family_key], recipe_for(method_name)
    lines, model = [], family.repo_id
    if method_name in TRAINED:
        folder = TRAINED[method_name]
        data = ["--data", "DATA"] if method_name == "multitask" else ["--data", "PAIRS", "--image-encoder", "CLIP_FOLDER"]
        lines.append(["retouch", "train", method_name, *data, "--init", model, "--output-dir", folder,
                      "--mixed-precision", "bf16" if family.recommended_dtype == "bfloat16" else "fp16"])
        model = f"{folder}/final"
    args = ["retouch", "edit", "in.png", "-o", "out.png", "--method", method_name, "--model", model,
            "--dtype", family.recommended_dtype, *recipe.example]
    for name, value in recipe.overrides.get(family_key, {}).items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return lines + [args]


# ---------------------------------------------------------------------------------------------
# The doc
# ---------------------------------------------------------------------------------------------
BEGIN, END = "<!-- recipes:begin (generated by `retouch recipes --write`) -->", "<!-- recipes:end -->"


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _family_table(family: Family) -> list[str]:
    counts = parameter_counts(family.key)
    classes = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}
    for i, (cls, _) in enumerate(family.text_encoders):
        classes["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = cls
    lines = [f"### {family.title}", "",
             f"Reference checkpoint `{family.repo_id}`; {family.resolution}² pixels; predicts "
             f"{'v' if family.prediction_type == 'v_prediction' else 'ε'}; scheduler `{family.scheduler_class}` "
             f"(retouch samples with DDIM on its noise schedule); `{family.pipeline}` folder; recommended "
             f"`--dtype {family.recommended_dtype}`.", "",
             "| component | folder | class | single-file key prefix | parameters | float32 | float16 / bfloat16 |",
             "|---|---|---|---|---:|---:|---:|"]
    for name, count in counts.items():
        lines.append(f"| {name} | `{name}/` | `{classes[name]}` | `{family.single_file_prefixes[name]}` | "
                     f"{count:,} | {_gib(count * 4)} | {_gib(count * 2)} |")
    for i in range(len(family.text_encoders)):
        suffix = "" if i == 0 else f"_{i + 1}"
        lines.append(f"| tokenizer{suffix} | `tokenizer{suffix}/` | `CLIPTokenizer` (pad `{family.pad_tokens[i]}`) "
                     f"| — (retouch's single file: in its metadata; an original one: from `config=`) | — | — | — |")
    lines.append("| scheduler | `scheduler/` | `" + family.scheduler_class + "` | — | — | — | — |")
    total = sum(counts.values())
    lines.append(f"| **all weights** | | | | **{total:,}** | **{_gib(total * 4)}** | **{_gib(total * 2)}** |")
    extra = [f"- {note}" for note in family.notes]
    if family.unused_components:
        extra.insert(0, "- the folder also lists " + ", ".join(f"`{n}`" for n in family.unused_components)
                     + "; retouch does not load them")
    return lines + ([""] + extra if extra else [])


def _value(value) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def render() -> str:
    """The generated part of docs/checkpoints.md."""
    from retouch.methods import available_methods

    lines = [BEGIN, "", "## Architectures and components", ""]
    for family in FAMILIES.values():
        lines += _family_table(family) + [""]
    lines += ["## Methods", "",
              "Settings are the method's defaults (the papers' values; `retouch edit --help` cites each); a "
              "family column names what changes on that family, and the weights the method holds there in "
              f"float16 / bfloat16 ({BYTES_PER_WEIGHT['float16']} bytes per weight; activations come on top, "
              "see the benchmark below).", "",
              "| method | components | settings | " + " | ".join(f.title.split(" (")[0] for f in FAMILIES.values())
              + " | paper's model |",
              "|---|---|---|" + "---|" * len(FAMILIES) + "---|"]
    methods = sorted(available_methods())
    for name in methods:
        recipe = recipe_for(name)
        base = settings(name, "")
        cells = []
        for family in FAMILIES.values():
            if not supported(name, family.key):
                cells.append("not supported: " + recipe.unsupported[family.key])
                continue
            changed = recipe.overrides.get(family.key, {})
            weights = _gib(method_parameters(name, family.key) * 2)
            cells.append(weights + "".join(f"; **{k} {_value(v)}**" for k, v in changed.items()))
        shown = ", ".join(f"{k} {_value(v)}" for k, v in base.items()) or "—"
        lines.append(f"| `{name}` | {', '.join(recipe.components)} | {shown} | " + " | ".join(cells)
                     + f" | {recipe.paper_model or '—'} |")
    notes = [f"- `{name}`: {recipe_for(name).notes}" for name in methods if recipe_for(name).notes]
    lines += ([""] + notes if notes else []) + ["", "## Command lines", ""]
    for family in FAMILIES.values():
        lines += [f"{family.title}:", "", "```sh"]
        lines += [shlex.join(args) for name in methods if supported(name, family.key)
                  for args in commands(name, family.key)]
        lines += ["```", ""]
    return "\n".join(lines + [END])


def _splice(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"the doc lacks the markers {BEGIN!r} … {END!r}")
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def check_doc(path: str | Path) -> bool:
    """True when the generated block of ``path`` equals :func:`render`."""
    text = Path(path).read_text(encoding="utf-8")
    return _splice(text, render()) == text


def write_doc(path: str | Path) -> None:
    path = Path(path)
    path.write_text(_splice(path.read_text(encoding="utf-8"), render()), encoding="utf-8")

