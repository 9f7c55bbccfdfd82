"""`dreambooth generate`: base pipeline + LoRA (separate denoiser / text-encoder strengths) -> PNGs and a grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tqdm.auto import tqdm

from . import atomic, threads
from .config import GenerateConfig, check_generate
from .errors import UsageError
from .fields import to_yaml
from .lora.files import find_weights, load_lora, training_config
from .models import load_pipeline, load_vae, native_resolution
from .sampling import device_precision, draw, grid


def generate(cfg: GenerateConfig) -> list[Path]:
    check_generate(cfg)
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {cfg.output_dir}: is a file; pass a folder path")
    if cfg.lora:
        weights = find_weights(cfg.lora, cfg.allow_pickle)  # fail on a bad path before the model loads
        saved = training_config(weights.parent)
        cfg = dataclasses.replace(cfg, model=cfg.model or saved.get("model", ""), vae=cfg.vae or saved.get("vae", ""))
    cfg = dataclasses.replace(cfg, model=cfg.model or "tiny")
    with threads.workload(cfg.threads) as count:
        return draw_images(dataclasses.replace(cfg, threads=count), out)


def draw_images(cfg: GenerateConfig, out: Path) -> list[Path]:
    pipe = load_pipeline(cfg.model, allow_pickle=cfg.allow_pickle)
    if cfg.vae:
        pipe.vae = load_vae(cfg.vae)
    if cfg.lora:
        load_lora(pipe, cfg.lora, cfg.unet_scale, cfg.text_encoder_scale, cfg.allow_pickle, cfg.model)
    import torch

    if torch.cuda.is_available():
        pipe.to("cuda")
    cfg = dataclasses.replace(cfg, resolution=cfg.resolution or native_resolution(pipe))
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=cfg.num_images, desc="generating", unit="img")
    images = draw(
        pipe,
        cfg.prompt,
        cfg.num_images,
        cfg.seed,
        cfg.steps,
        cfg.guidance,
        cfg.resolution,
        cfg.batch_size,
        cfg.negative_prompt,
        on_batch=lambda b: bar.update(len(b)),
        autocast=device_precision(pipe.device),
    )
    bar.close()
    paths = []
    for i, image in enumerate(images):
        path = out / f"image-{i:03d}.png"
        atomic.save_image(image, path)
        paths.append(path)
    atomic.save_image(grid(images), out / "grid.png")
    atomic.write_text(out / "config.yaml", to_yaml(cfg))
    print(f"{len(paths)} images -> {out}", flush=True)
    return paths
