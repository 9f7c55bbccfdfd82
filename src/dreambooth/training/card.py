"""The model card written beside a trained LoRA: what it was trained on and how, and how to use it."""

from __future__ import annotations

from pathlib import Path

from ..config import LOWER_IS_BETTER, Method, PriorMode, TrainConfig
from ..lora.files import COMFYUI_NAME, KOHYA_NAME, WEIGHT_NAME
from ..lora.kohya import has_kohya_layout
from ..methods.embeddings import file_name, trigger
from ..methods.tokens import NewTokens
from ..models import Base, pipeline_class
from .subjects import read_subjects


def prior_words(cfg: TrainConfig) -> str:
    mode = cfg.prior()
    if mode is PriorMode.BASE_PREDICTION:
        return f"yes: `{cfg.class_prompt}`, targets from the base model's own predictions, λ = {cfg.prior_loss_weight}"
    if mode is PriorMode.GENERATED:
        prompts = f"`{cfg.class_prompt}`" if cfg.class_prompt else ""
        if cfg.class_prompts_file:
            prompts += f"{' and ' if prompts else ''}the prompts of `{cfg.class_prompts_file}`"
        dropped = ""
        if cfg.class_caption_dropout:
            dropped = f" ({cfg.class_caption_dropout:g} of them with an empty prompt"
            dropped += ", aimed at the base model's own prediction)" if cfg.preserve_unconditional else ")"
        return f"yes: {prompts}, {cfg.num_class_images} class images{dropped}, λ = {cfg.prior_loss_weight}"
    return "no"


def comfyui_left_out(cfg: TrainConfig, base: Base) -> list[str]:
    """Adapted modules of the family's denoiser that ComfyUI's key map has no diffusers name for."""
    unmapped = list(base.family.comfyui_unmapped)
    if cfg.target_modules == ["all-linear"]:
        return unmapped
    return [m for m in unmapped if any(m == t or m.endswith("." + t) or t in m.split(".") for t in cfg.target_modules)]


def comfyui_words(cfg: TrainConfig, base: Base, quote: str = "") -> str:
    """Which file ComfyUI loads whole: the diffusers file, or its copy with ComfyUI's own names for the modules its
    key map has no diffusers name for (`write_comfyui_copy`)."""
    left_out = comfyui_left_out(cfg, base)
    if not left_out:
        return f"ComfyUI loads {quote}{WEIGHT_NAME}{quote} as it is"
    return (
        f"ComfyUI loads {quote}{COMFYUI_NAME}{quote} whole: the same LoRA, with the {len(left_out)} modules its key map "
        f"has no diffusers name for ({', '.join(left_out)}) under its own names; from {quote}{WEIGHT_NAME}{quote} "
        f"it would leave them out"
    )


def files_words(cfg: TrainConfig, base: Base) -> list[str]:
    """Which file of the folder each program loads."""
    lines = [
        "## Files",
        "",
        "| file | load it in |",
        "|---|---|",
        f"| `{WEIGHT_NAME}` | diffusers (`load_lora_weights`, below), `dreambooth generate` |"
        if cfg.adapter == "lora"
        else f"| `{WEIGHT_NAME}` | `dreambooth generate` |",
    ]
    if cfg.export == "kohya" and cfg.adapter != "lora":
        lines += [f"| `{KOHYA_NAME}` | ComfyUI (`models/loras/`), A1111 / Forge (`models/Lora/`): LyCORIS' layout |", ""]
    elif cfg.export == "kohya":
        lines += [
            f"| `{KOHYA_NAME}` | ComfyUI (`models/loras/`, a LoRA loader node), A1111 / Forge (`models/Lora/`, "
            f"`<lora:{KOHYA_NAME.removesuffix('.safetensors')}:1>` in the prompt), kohya's sd-scripts (`--network_weights`) |",
            "",
        ]
    elif base.family.comfyui_reads_diffusers_file and not has_kohya_layout(base.family):
        lines += ["", f"{comfyui_words(cfg, base, '`')} (`models/loras/`, a LoRA loader node).", ""]
    elif has_kohya_layout(base.family):
        lines += [
            "",
            f"For ComfyUI, A1111 / Forge and sd-scripts: `dreambooth export --lora path/to/this/folder` writes `{KOHYA_NAME}`.",
            "",
        ]
    else:
        lines += [
            "",
            f"No file in the kohya layout (A1111 / Forge, sd-scripts): this tool does not write {base.family.title} LoRAs in it yet.",
            "",
        ]
    return lines


def validation_words(cfg: TrainConfig, kept: dict | None) -> list[str]:
    """Which step the LoRA is and why (--keep-best), and the validation curves."""
    lines = []
    if kept is not None:
        lines += [
            "## The kept step",
            "",
            f"This LoRA is the weights of step {kept['step']} of {cfg.max_steps}: `--keep-best {kept['metric']}` kept "
            f"the validation step with the {'lowest' if kept['metric'] in LOWER_IS_BETTER else 'highest'} "
            f"{kept['metric']} ({kept['value']:.4f}) on the prompts of `{cfg.validation_prompts}` "
            f"(every step's scores: `validation/scores.csv`).",
            "",
        ]
    if cfg.validation_loss or cfg.validation_prompts:
        lines += ["## Validation", ""]
        lines += ["![validation loss](validation/loss.png)", ""] if cfg.validation_loss else []
        lines += ["![validation scores](validation/scores.png)", ""] if cfg.validation_prompts else []
    return lines


def token_words(cfg: TrainConfig, base: Base, tokens: NewTokens) -> list[str]:
    """What to write for each subject in each program, and how plain diffusers loads the embeddings."""
    out = Path(cfg.output_dir)
    n, name = len(tokens.per_subject), file_name(out)
    lines = [
        "## New tokens",
        "",
        f"`{cfg.token_abstraction}` in the prompts was trained as new tokens; write in its place:",
        "",
        *(
            ["| subject | diffusers, `dreambooth generate` | ComfyUI | A1111 / Forge |", "|---|---|---|---|"]
            if base.family.embeddings_elsewhere
            else ["| subject | diffusers, `dreambooth generate` |", "|---|---|"]
        ),
        *[
            f"| {k + 1} | `{tokens.written(k)}` |"
            + (f" `embedding:{trigger(out, k, n)}` | `{trigger(out, k, n)}` |" if base.family.embeddings_elsewhere else "")
            for k in range(n)
        ],
        "",
        f"`{name}` holds each text encoder's rows ({', '.join(f'`{v}`' for v in base.family.embedding_keys.values())}).",
        "",
    ]
    return lines


def pipeline_takes_embeddings(family) -> bool:
    """The family's diffusers pipeline has `load_textual_inversion` itself (SD, SDXL, FLUX.1)."""
    from diffusers.loaders import TextualInversionLoaderMixin

    return issubclass(pipeline_class(family), TextualInversionLoaderMixin)


def embedding_loading(cfg: TrainConfig, base: Base, tokens: NewTokens) -> list[str]:
    """Plain diffusers' lines that load the new tokens into `pipe`."""
    name, tokenizer_of = file_name(Path(cfg.output_dir)), dict(zip(base.family.text_encoders, base.family.tokenizers))
    keys = {k: v for k, v in base.family.embedding_keys.items() if v != "t5" or cfg.t5_tokens}
    lines = ["from safetensors.torch import load_file", f'emb = load_file("path/to/this/folder/{name}")']
    has_loader = pipeline_takes_embeddings(base.family)
    for encoder, key in keys.items():
        loader = "pipe.load_textual_inversion" if has_loader else "TextualInversionLoaderMixin.load_textual_inversion"
        pipe_arg = "" if loader.startswith("pipe.") else "pipe, "
        lines.append(f'{loader}({pipe_arg}emb["{key}"], token={list(tokens.strings)}, '
                     f"text_encoder=pipe.{encoder}, tokenizer=pipe.{tokenizer_of[encoder]})")  # fmt: skip
    if any(not line.startswith(("pipe.", "from", "emb")) for line in lines):
        lines.insert(0, "from diffusers.loaders import TextualInversionLoaderMixin  # the loader works on any pipeline")
    return lines


def learning_rates(cfg: TrainConfig, base: Base) -> str:
    if cfg.method is Method.TEXTUAL_INVERSION:
        return f"| learning rate | {cfg.learning_rate} new tokens, {cfg.lr_scheduler} |"
    tokens = f", {cfg.text_encoder_lr} new tokens" if cfg.method is Method.PIVOTAL else ""
    te = cfg.text_encoder_lr if cfg.train_text_encoder else "–"
    return (
        f"| learning rate | {cfg.learning_rate} {base.family.adapters_words[0]}, {te} text encoder{tokens}, {cfg.lr_scheduler} |"
    )


METHOD_TITLES = {Method.DREAMBOOTH: "DreamBooth", Method.TEXTUAL_INVERSION: "Textual inversion", Method.PIVOTAL: "Pivotal tuning"}


def model_card(
    cfg: TrainConfig, base: Base, final_loss: float | None, has_samples: bool, seconds: float, kept: dict | None = None,
    tokens: NewTokens | None = None,
) -> str:  # fmt: skip
    pipeline = base.family.pipeline_class
    te = base.family.adapters_words[1 if cfg.train_text_encoder else 0]
    prior = prior_words(cfg)
    subjects = read_subjects(cfg.subjects, cfg.with_prior_preservation, cfg.num_class_images) if cfg.subjects else []
    prompt = " | ".join(s.instance_prompt for s in subjects) or cfg.instance_prompt
    first = subjects[0].instance_prompt if subjects else cfg.instance_prompt
    if tokens:
        prompt = " | ".join(tokens.in_prompt(p, k) for k, p in enumerate(prompt.split(" | ")))
        first = tokens.in_prompt(first)
    lora = cfg.method is not Method.TEXTUAL_INVERSION
    photos = f"the {len(subjects)} subjects of {cfg.subjects}" if subjects else f"the subject of {cfg.instance_dir}"
    kind = {"lora": "LoRA", "lokr": "LoKr", "loha": "LoHa"}[cfg.adapter]
    lines = [
        "---",
        f"base_model: {cfg.model}",
        "library_name: diffusers",
        "tags: [text-to-image, stable-diffusion, lora, dreambooth]",
        f"instance_prompt: {prompt}",
        "---",
        "",
        f"# {METHOD_TITLES[cfg.method]}{f' {kind}' if lora else ''}: `{prompt}`",
        "",
        f"{'A LoRA' if lora else 'New token embeddings'} for **{cfg.model}** ({base.summary()}; load "
        f"{'it' if lora else 'them'} onto that base model only) that bind{'s' if lora else ''} {photos} to the prompt "
        f"`{prompt}`.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {cfg.method}"
        + (f" ({cfg.tokens_per_subject} new tokens per subject" if tokens else "")
        + (
            f", trained for the first {cfg.ti_fraction:g} of the steps)"
            if cfg.method is Method.PIVOTAL
            else ")"
            if tokens
            else ""
        )
        + " |",
        f"| adapters | {kind} on {te}, rank {cfg.rank}, alpha {cfg.lora_alpha or cfg.rank} |"
        if lora
        else "| adapters | none: the new token embeddings alone train |",
        f"| prior preservation | {prior} |",
        f"| steps × batch | {cfg.max_steps} × {cfg.batch_size} (accumulation {cfg.gradient_accumulation_steps}) |",
        learning_rates(cfg, base),
        f"| resolution | {cfg.resolution} px |",
        f"| precision | {cfg.mixed_precision} |",
        f"| seed | {cfg.seed} |",
        f"| CPU threads | {cfg.threads} |",
        f"| final loss | {final_loss:.4f} |" if final_loss is not None else "| final loss | – |",
        f"| training time | {seconds:.0f} s |",
        "",
    ]
    if kept is not None:
        row = f"| kept step | {kept['step']} (best {kept['metric']}, {kept['value']:.4f}) |"
        lines.insert(lines.index(f"| training time | {seconds:.0f} s |"), row)
    if has_samples:
        lines += ["![samples](samples.png)", ""]
    lines += validation_words(cfg, kept)
    lines += token_words(cfg, base, tokens) if tokens else []
    lines += files_words(cfg, base) if lora else []
    lines += [
        "## Use",
        "",
        "```bash",
        f'dreambooth generate --lora path/to/this/folder --prompt "{first} on the grass" --output-dir out',
        "```",
        "",
    ]
    if cfg.adapter == "lora" or not lora:
        lines += [
            "or in plain diffusers (for a hub or local base model):",
            "",
            "```python",
            f"from diffusers import {pipeline}",
            f'pipe = {pipeline}.from_pretrained("{cfg.model}")',
            *(embedding_loading(cfg, base, tokens) if tokens else []),
            *(['pipe.load_lora_weights("path/to/this/folder")'] if lora else []),
            f'pipe(prompt="{first} on the grass").images[0]',  # by name: FLUX.2 [klein]'s pipeline takes images first
            "```",
            "",
        ]
    else:
        lines += [f"diffusers' `load_lora_weights` does not read a {kind} for this base; `dreambooth generate` does.", ""]
    lines += [
        "The full settings are in `config.yaml`.",
        "",
    ]
    return "\n".join(lines)
