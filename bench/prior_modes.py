"""Prior preservation, three ways, on the same run: none, generated class images (the paper), base-prediction.

For each mode it prints the wall time of the whole job (class images included) and what the mode did to the
class prior:

- `--model world` (the shipped base model that draws real classes): the demo's run (a held-out subject, 1000 steps)
  scored by the world's reader, 32 samples per prompt -- subject fidelity, subject in context, class drift (share
  of "a photo of a dog" samples that show the subject) and class diversity (the paper's PRES and DIV).
- any other model (e.g. `tiny`, random weights): the mean squared difference between the fine-tuned and the base
  UNet's predictions for "a photo of a dog" on fixed noisy latents (lower = the class prior survived better).

    python bench/prior_modes.py --model world [--steps 1000] [--samples 32]
    python bench/prior_modes.py [--steps 300] [--model tiny] [--class-images 100]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch


def drift(lora_dir: Path, model: str, prompt: str, samples: int = 16) -> float:
    """E ||eps_lora(x_t, t, c) - eps_base(x_t, t, c)||^2 over fixed random latents and timesteps."""
    from dreambooth.families.sd import encode_prompts
    from dreambooth.lora.adapter import adapters_off
    from dreambooth.lora.files import load_lora
    from dreambooth.models import load_pipeline, native_resolution

    pipe = load_pipeline(model)
    load_lora(pipe, lora_dir)
    size = native_resolution(pipe) // pipe.vae_scale_factor
    g = torch.Generator().manual_seed(1234)
    latents = torch.randn(samples, pipe.unet.config.in_channels, size, size, generator=g)
    timesteps = torch.randint(0, 1000, (samples,), generator=g)
    encoders = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if len(encoders) == 2 else [])
    with torch.no_grad():
        hidden, _ = encode_prompts(tokenizers, encoders, [prompt] * samples, "cpu")
        tuned = pipe.unet(latents, timesteps, hidden).sample
        with adapters_off(pipe.unet, *encoders):
            base_hidden, _ = encode_prompts(tokenizers, encoders, [prompt] * samples, "cpu")
            base = pipe.unet(latents, timesteps, base_hidden).sample
    return float(((tuned - base) ** 2).mean())


def world_modes(steps: int, samples: int, cls: str = "dog", contexts=("beach", "snow", "grass")) -> None:
    """The demo's subject and settings, trained once per mode, each LoRA scored by the world's reader."""
    import dataclasses

    from dreambooth.lora.files import load_lora
    from dreambooth.models import load_pipeline
    from dreambooth.training.loop import train
    from dreambooth.world import MODEL as WORLD
    from dreambooth.world import TEXT_ENCODER_SCALE, readers
    from dreambooth.world import folder as world_dir
    from dreambooth.world.demo import demo_train_config, write_photos
    from dreambooth.world.scores import sample_and_score

    names = ("subject_fidelity", "subject_in_context", "class_drift", "class_diversity")
    print(
        f"# the world's demo run: a held-out {cls}, {steps} steps, batch 2 + 2, UNet + text-encoder LoRA rank 8; "
        f"{samples} samples per prompt, contexts {', '.join(contexts)}"
    )
    print(
        "| mode | whole job (s) | start -> first step (s) | steps 1 -> last (s) | "
        + " | ".join(n.replace("_", " ") for n in names)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(names))
    reader, _ = readers.load(world_dir() / "reader")
    pipe = load_pipeline(WORLD)
    base, _ = sample_and_score(pipe, reader, cls, samples, contexts=contexts)
    print("| base model (no training) | | | | " + " | ".join(f"{base[n]:.2f}" for n in names) + " |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(cls, Path(tmp) / "subject")
        for mode in ("none", "generated", "base-prediction"):
            cfg = demo_train_config(cls, photos, Path(tmp) / mode, steps, prior=mode != "none")
            cfg = dataclasses.replace(
                cfg, prior_mode="base-prediction" if mode == "base-prediction" else "generated", class_dir=f"{tmp}/class-{mode}"
            )
            started, stamps = time.time(), {}
            train(cfg, on_event=lambda e: stamps.setdefault(e.get("step"), time.time()) if e["kind"] == "step" else None)
            seconds = time.time() - started
            pipe = load_pipeline(WORLD)
            load_lora(pipe, Path(cfg.output_dir), text_encoder_scale=TEXT_ENCODER_SCALE, model=WORLD)
            scores, _ = sample_and_score(pipe, reader, cls, samples, contexts=contexts)
            print(
                f"| {mode} | {seconds:.1f} | {stamps[1] - started:.1f} | {stamps[steps] - stamps[1]:.1f} | "
                + " | ".join(f"{scores[n]:.2f}" for n in names)
                + " |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--class-images", type=int, default=100)
    parser.add_argument("--samples", type=int, default=32, help="world: samples per prompt to score")
    args = parser.parse_args()

    import diffusers

    from dreambooth.config import TrainConfig
    from dreambooth.training.loop import train

    if args.model == "world":
        print(
            f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, Python {sys.version.split()[0]}, "
            f"torch {torch.__version__}, diffusers {diffusers.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        )
        world_modes(args.steps, args.samples)
        return
    photos = Path(str(resources.files("dreambooth") / "assets" / "sample_subject" / "dog"))
    print(f"# prior modes: {args.model}, {args.steps} steps, batch 1 + 1, text-encoder LoRA rank 16, lr 1e-3")
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    )
    print("| mode | whole job (s) | class-prompt drift |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("none", "generated", "base-prediction"):
            cfg = TrainConfig(
                model=args.model,
                instance_dir=str(photos),
                instance_prompt="a photo of sks dog",
                output_dir=f"{tmp}/{mode}",
                with_prior_preservation=mode != "none",
                prior_mode="base-prediction" if mode == "base-prediction" else "generated",
                class_prompt="a photo of a dog",
                class_dir=f"{tmp}/class-{mode}",
                num_class_images=args.class_images,
                train_text_encoder=True,
                learning_rate=1e-3,
                text_encoder_lr=1e-3,
                max_steps=args.steps,
                num_samples=0,
            )
            started = time.time()
            train(cfg)
            seconds = time.time() - started
            print(f"| {mode} | {seconds:.1f} | {drift(Path(cfg.output_dir), args.model, 'a photo of a dog'):.5f} |", flush=True)


if __name__ == "__main__":
    main()
