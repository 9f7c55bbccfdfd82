"""Image grids and the model card written beside a trained LoRA."""

from __future__ import annotations

import math

from PIL import Image


def grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or min(len(images), 4)
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    out = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        out.paste(im.convert("RGB").resize((w, h)), ((i % cols) * w, (i // cols) * h))
    return out


def model_card(cfg, model_info: dict, final_loss: float | None, has_samples: bool, seconds: float) -> str:
    sdxl = "sdxl" in model_info["family"]
    pipeline = "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
    te = ("UNet + both text encoders" if sdxl else "UNet + text encoder") if cfg.train_text_encoder else "UNet"
    prior = "no"
    if cfg.with_prior_preservation and cfg.prior_mode == "base-prediction":
        prior = f"yes: `{cfg.class_prompt}`, targets from the base model's own predictions, λ = {cfg.prior_loss_weight}"
    elif cfg.with_prior_preservation:
        prior = f"yes: `{cfg.class_prompt}`, {cfg.num_class_images} class images, λ = {cfg.prior_loss_weight}"
    lines = [
        "---",
        f"base_model: {cfg.model}",
        "library_name: diffusers",
        "tags: [text-to-image, stable-diffusion, lora, dreambooth]",
        f"instance_prompt: {cfg.instance_prompt}",
        "---",
        "",
        f"# DreamBooth LoRA: `{cfg.instance_prompt}`",
        "",
        f"A LoRA for **{cfg.model}** ({model_info['family']}, {model_info['prediction_type']} prediction; load it onto that "
        f"base model only) "
        f"that binds the subject of {cfg.instance_dir} to the prompt `{cfg.instance_prompt}`.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| adapters | {te}, rank {cfg.rank}, alpha {cfg.lora_alpha or cfg.rank} |",
        f"| prior preservation | {prior} |",
        f"| steps × batch | {cfg.max_steps} × {cfg.batch_size} (accumulation {cfg.gradient_accumulation_steps}) |",
        f"| learning rate | {cfg.learning_rate} UNet, {cfg.text_encoder_lr if cfg.train_text_encoder else '–'} text encoder, {cfg.lr_scheduler} |",
        f"| resolution | {cfg.resolution} px |",
        f"| precision | {cfg.mixed_precision} |",
        f"| seed | {cfg.seed} |",
        f"| final loss | {final_loss:.4f} |" if final_loss is not None else "| final loss | – |",
        f"| training time | {seconds:.0f} s |",
        "",
    ]
    if has_samples:
        lines += ["![samples](samples.png)", ""]
    lines += [
        "## Use",
        "",
        "```bash",
        f'dreambooth generate --lora path/to/this/folder --prompt "{cfg.instance_prompt} on the grass" --output-dir out',
        "```",
        "",
        "or in plain diffusers (for a hub or local base model):",
        "",
        "```python",
        f"from diffusers import {pipeline}",
        f'pipe = {pipeline}.from_pretrained("{cfg.model}")',
        'pipe.load_lora_weights("path/to/this/folder")',
        f'pipe("{cfg.instance_prompt} on the grass").images[0]',
        "```",
        "",
        "The full settings are in `config.yaml`.",
        "",
    ]
    return "\n".join(lines)
