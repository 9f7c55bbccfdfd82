"""Does a LoRA folder written by `dreambooth train` load and apply in an older diffusers stack as it does here?

    python scripts/old_stack_check.py reference BASE LORA REFERENCE.safetensors        # this project's environment
    .venv-old/bin/python scripts/old_stack_check.py check BASE LORA REFERENCE.safetensors   # transformers 4, diffusers 0.32

BASE is the tiny model as `bench/save_tiny_model.py` writes it; LORA a folder of `dreambooth train --model BASE
--train-text-encoder` (best with --lora-alpha other than --rank, so that the strength is checked too). Both modes load
BASE, then each LoRA file of the folder with plain diffusers' `StableDiffusionPipeline.load_lora_weights`, and measure
the UNet's output on fixed inputs and the text encoder's hidden states for a fixed prompt. `reference` writes them;
`check` fails (exit 1, one line) unless, in its stack, the LoRA's UNet part and its text-encoder part each change their
output, and by what they change it by in the reference. `scripts/old_stack_check.sh` runs the whole check.

Only torch, safetensors, transformers and diffusers are imported: the older stack cannot install this project.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PROMPT = "a photo of sks dog"
FILES = ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors")  # the folder's LoRA files, each checked
# Same inputs, same torch, two diffusers versions: the outputs agree to float rounding (measured: below 1e-6).
TOLERANCE = 1e-5
CHANGED = 1e-4  # a part of the LoRA "changes the output" when the largest difference exceeds this


def load_base(folder: Path):
    """The pipeline in BASE, loaded the same way by transformers 4 and 5: transformers 5 saves a CLIP text encoder
    without the `text_model.` level that transformers 4 (and released checkpoints) name its weights with."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    own = set(encoder.state_dict())
    saved = load_file(str(folder / "text_encoder" / "model.safetensors"))
    spelled = {}
    for key, tensor in saved.items():
        candidates = [key, key.removeprefix("text_model."), "text_model." + key]
        spelled[next((c for c in candidates if c in own), key)] = tensor
    encoder.load_state_dict(spelled, strict=False)
    missing = sorted(k for k in own - set(spelled) if not k.endswith("position_ids"))
    if missing:
        sys.exit(f"old-stack check: {folder}: the text encoder's {missing[0]} is not in its weights")
    return StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=encoder.eval(),
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
        scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def outputs(pipe) -> dict[str, torch.Tensor]:
    """The text encoder's hidden states for PROMPT, and the UNet's output for fixed noise, timestep and hidden
    states (not the text encoder's: each part of the LoRA is measured on its own)."""
    ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
    config, g = pipe.unet.config, torch.Generator().manual_seed(0)
    latents = torch.randn(1, config.in_channels, config.sample_size, config.sample_size, generator=g)
    hidden = torch.randn(1, pipe.tokenizer.model_max_length, config.cross_attention_dim, generator=g)
    return {
        "text_encoder": pipe.text_encoder(ids.input_ids)[0],
        "unet": pipe.unet(latents, torch.tensor([500]), hidden).sample,
    }


def measure(base: Path, lora: Path) -> dict[str, torch.Tensor]:
    """'base.<part>' and '<file>.<part>' for each LoRA file in `lora`."""
    found = {f"base.{part}": value for part, value in outputs(load_base(base)).items()}
    for name in FILES:
        if not (lora / name).is_file():
            sys.exit(f"old-stack check: {lora} holds no {name}")
        pipe = load_base(base)
        try:
            pipe.load_lora_weights(str(lora), weight_name=name)
        except Exception as e:  # whatever the stack raises, one line naming it
            sys.exit(f"old-stack check: {name} does not load in {stack()}: {type(e).__name__}: {str(e)[:200]}")
        found.update({f"{name}.{part}": value for part, value in outputs(pipe).items()})
    return found


def stack() -> str:
    import diffusers
    import peft
    import transformers

    return f"transformers {transformers.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}"


def check(found: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> list[str]:
    """One line per LoRA file and part; the first failure ends the check."""
    lines = []
    for key, value in found.items():
        if key.startswith("base."):
            if not torch.allclose(value, reference[key], atol=TOLERANCE, rtol=0):
                sys.exit(f"old-stack check: the base model's {key[5:]} differs from the reference: not the same base")
            continue
        name, part = key.rsplit(".", 1)
        change = (value - found[f"base.{part}"]).abs().max().item()
        off = (value - reference[key]).abs().max().item()
        if change <= CHANGED:
            sys.exit(f"old-stack check: {name} does not change the {part}'s output in {stack()} (largest change {change:.2e})")
        if off > TOLERANCE:
            sys.exit(
                f"old-stack check: {name} changes the {part}'s output in {stack()} by other amounts than here (off by {off:.2e})"
            )
        lines.append(f"{name}: {part} changed by up to {change:.4f}, as here to {off:.1e}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("reference", "check"))
    p.add_argument("base", type=Path)
    p.add_argument("lora", type=Path)
    p.add_argument("reference", type=Path)
    args = p.parse_args()
    torch.manual_seed(0)
    found = measure(args.base, args.lora)
    if args.mode == "reference":
        check(found, found)  # here too, each part must change its output
        save_file({k: v.contiguous() for k, v in found.items()}, str(args.reference))
        print(f"old-stack check: reference outputs of {args.lora} in {stack()} -> {args.reference}")
        return
    for line in check(found, load_file(str(args.reference))):
        print(f"old-stack check ({stack()}): {line}")


if __name__ == "__main__":
    main()
