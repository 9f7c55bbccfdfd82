"""`dreambooth generate`: base pipeline + LoRA (separate denoiser / text-encoder strengths) -> PNGs and a grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tqdm.auto import tqdm

from . import atomic, threads
from .config import GenerateConfig, check_generate
from .errors import UsageError
from .fields import to_yaml
from .lora.files import WEIGHT_NAME, find_weights, load_lora, training_config
from .methods import embeddings
from .models import load_pipeline, load_vae, native_resolution
from .sampling import device_precision, draw, grid


def generate(cfg: GenerateConfig) -> list[Path]:
    check_generate(cfg)
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {cfg.output_dir}: is a file; pass a folder path")
    if cfg.lora:
        weights, found = run_files(cfg.lora, cfg.allow_pickle)  # fail on a bad path before the model loads
        saved = training_config((weights or found or Path(cfg.lora)).parent)
        cfg = dataclasses.replace(cfg, model=cfg.model or saved.get("model", ""), vae=cfg.vae or saved.get("vae", ""))
    cfg = dataclasses.replace(cfg, model=cfg.model or "tiny")
    with threads.workload(cfg.threads) as count:
        return draw_images(dataclasses.replace(cfg, threads=count), out)


def run_files(lora: str, allow_pickle: bool) -> tuple[Path | None, Path | None]:
    """What --lora names: (the LoRA file, the new tokens' embeddings file); a textual-inversion run has no LoRA, and
    `<name>_emb.safetensors` may be given alone."""
    path = Path(lora).expanduser()
    if path.is_file() and path.name.endswith(embeddings.SUFFIX):
        return None, path
    found = embeddings.find(path) if path.is_dir() else None
    if found is not None and not (path / WEIGHT_NAME).is_file():
        return None, found
    return find_weights(lora, allow_pickle), found


def trained(run: Path) -> bool:
    """`run` holds a finished run's weights: its LoRA, or a textual-inversion run's embeddings."""
    return (run / WEIGHT_NAME).is_file() or embeddings.find(run) is not None


def load_run(
    pipe, lora: str | Path, unet_scale: float = 1.0, text_encoder_scale: float = 1.0, allow_pickle: bool = False,
    model: str = "the base model",
) -> list[str]:  # fmt: skip
    """What --lora names, into `pipe`: the new tokens' embeddings (returned, in order) and the LoRA, whichever the run
    has."""
    from .families import family_of

    weights, found = run_files(str(lora), allow_pickle)
    tokens: list[str] = []
    if found is not None:
        tokens = embeddings.load_into(pipe, family_of(pipe), found)
        print(f"new tokens {''.join(tokens)} from {found.name}", flush=True)
    if weights is not None:
        load_lora(pipe, weights, unet_scale, text_encoder_scale, allow_pickle, model)
    return tokens


def draw_images(cfg: GenerateConfig, out: Path) -> list[Path]:
    pipe = load_pipeline(cfg.model, allow_pickle=cfg.allow_pickle)
    if cfg.vae:
        pipe.vae = load_vae(cfg.vae)
    if cfg.lora:
        load_run(pipe, cfg.lora, cfg.unet_scale, cfg.text_encoder_scale, cfg.allow_pickle, cfg.model)
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
