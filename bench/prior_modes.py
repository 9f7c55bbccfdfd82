"""Prior preservation, three ways, on the same run: none, generated class images (the paper), base-prediction.

For each mode it prints the wall time of the whole job (class images included) and the drift it leaves on the
class prompt: the mean squared difference between the fine-tuned and the base UNet's predictions for
"a photo of a dog" on fixed noisy latents (lower = the class prior survived better).

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
    from dreambooth.latents import adapters_off
    from dreambooth.lora import load_lora
    from dreambooth.models import load_pipeline, native_resolution
    from dreambooth.text_encoding import encode_prompts

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--class-images", type=int, default=100)
    args = parser.parse_args()

    import diffusers

    from dreambooth.config import TrainConfig
    from dreambooth.train import train

    photos = Path(str(resources.files("dreambooth") / "assets" / "sample_subject" / "dog"))
    print(f"# prior modes: {args.model}, {args.steps} steps, batch 1 + 1, text-encoder LoRA rank 16, lr 1e-3")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, Python {sys.version.split()[0]}, "
          f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    print("| mode | whole job (s) | class-prompt drift |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("none", "generated", "base-prediction"):
            cfg = TrainConfig(model=args.model, instance_dir=str(photos), instance_prompt="a photo of sks dog",
                              output_dir=f"{tmp}/{mode}", with_prior_preservation=mode != "none",
                              prior_mode="base-prediction" if mode == "base-prediction" else "generated",
                              class_prompt="a photo of a dog", class_dir=f"{tmp}/class-{mode}", num_class_images=args.class_images,
                              train_text_encoder=True, learning_rate=1e-3, text_encoder_lr=1e-3, max_steps=args.steps, num_samples=0)
            started = time.time()
            train(cfg)
            seconds = time.time() - started
            print(f"| {mode} | {seconds:.1f} | {drift(Path(cfg.output_dir), args.model, 'a photo of a dog'):.5f} |", flush=True)


if __name__ == "__main__":
    main()
