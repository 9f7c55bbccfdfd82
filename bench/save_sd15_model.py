"""Write a Stable Diffusion 1.5-shaped pipeline folder with random weights, for timing whole jobs.

    python bench/save_sd15_model.py OUT_DIR [--dtype fp16|fp32]

UNet (859.5 M parameters), VAE (83.7 M) and CLIP ViT-L/14 text encoder (123.1 M) are built by
gpu_step.py's `build_sd15_pipeline` (the model it times), the tokenizer is the real SD 1.x one the package
ships, the scheduler is SD 1.5's. Same shapes as the real model, so the same cost per step, per class image and per sample: both
`dreambooth train --model OUT_DIR` and diffusers' scripts (`--pretrained_model_name_or_path OUT_DIR`) load
it, and neither needs a download. Random weights draw noise: the folder is for speed and memory only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_step import build_sd15_pipeline  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"), help="stored precision (SD 1.5's own files are fp16)")
    args = p.parse_args()
    started = time.time()
    pipe = build_sd15_pipeline()
    if args.dtype == "fp16":
        pipe.to(torch.float16)
    pipe.save_pretrained(args.out_dir, safe_serialization=True)
    count = {name: sum(t.numel() for t in getattr(pipe, name).parameters()) / 1e6 for name in ("unet", "vae", "text_encoder")}
    print(
        f"SD 1.5-shaped pipeline, random weights ({', '.join(f'{k} {v:.1f} M' for k, v in count.items())}, {args.dtype}) "
        f"saved to {args.out_dir} in {time.time() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
