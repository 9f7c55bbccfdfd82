"""Write a FLUX.1 [dev]- or SD3.5 Medium-shaped pipeline folder with random weights, for timing whole jobs.

    python bench/save_flow_model.py OUT_DIR --shape flux|sd35            # real shapes, built on the GPU in bf16
    python bench/save_flow_model.py OUT_DIR --shape flux|sd35 --tiny     # the tool's tiny-flux / tiny-sd3 (CPU smoke)

Real shapes: the transformer is gpu_step.py's (FLUX.1 [dev] 11.90 B parameters, SD3.5 Medium 2.24 B), and so is the
VAE; the text encoders keep their widths (CLIP-L 768, CLIP-G 1280, T5-XXL 4096: the prompt embeddings the
transformer reads have the real shapes) but only --text-layers layers each (default 1): both `dreambooth train`
and diffusers' scripts encode the prompts once before training and never train T5, so the encoders' depth changes
the start-up only, and a 4.8 B T5 would add 9.5 GB to write and read. The tokenizers are the real SD one the
package ships and the tiny models' T5 tokenizer (its ids all fall in T5-XXL's vocabulary). Both tools load the
folder (`--model OUT_DIR`, `--pretrained_model_name_or_path OUT_DIR`) without a download. FLUX.1's folder is
about 24 GB (bf16), SD3.5's about 5 GB. --blocks N keeps only N transformer blocks (FLUX.1: N joint + 2N single):
the real widths at a size a CPU can load, to check the folder against both tools there.

The folder is written beside OUT_DIR and renamed into place when complete, so an interrupted run leaves no
half-written model that a later run would take for a whole one.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_step import build_flux_pipeline, build_sd35_pipeline  # noqa: E402

BUILD = {"flux": build_flux_pipeline, "sd35": build_sd35_pipeline}
TINY = {"flux": "dreambooth.families.flux", "sd35": "dreambooth.families.sd3"}
DENOISER = "transformer"


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(shape: str, tiny: bool, device: str, text_layers: int, blocks: int | None):
    if tiny:
        import importlib

        return importlib.import_module(TINY[shape]).build_tiny()
    # built where it will be cast, in the precision it is stored in: 12 B fp32 parameters would be 48 GB
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with default_dtype(dtype):
        return BUILD[shape](device=device, text_layers=text_layers, blocks=blocks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--shape", required=True, choices=tuple(BUILD))
    p.add_argument("--tiny", action="store_true", help="the tool's tiny-flux / tiny-sd3 instead of the real shape")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the real shape is built (cuda: in bf16; cpu: fp32, with --blocks)",
    )
    p.add_argument("--text-layers", type=int, default=1, help="layers of each text encoder (their widths are kept)")
    p.add_argument("--blocks", type=int, default=None, help="transformer blocks to keep (default: all of the real model)")
    args = p.parse_args()
    out = Path(args.out_dir)
    if (out / "model_index.json").is_file():
        raise SystemExit(f"{out} already holds a model; remove it or choose another folder")
    started = time.time()
    pipe = build(args.shape, args.tiny, args.device, args.text_layers, args.blocks)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(partial, safe_serialization=True, max_shard_size="10GB")
    shutil.rmtree(out, ignore_errors=True)  # an empty or half-written folder from elsewhere
    partial.rename(out)
    names = [n for n in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, n, None)]
    count = {n: sum(t.numel() for t in getattr(pipe, n).parameters()) / 1e6 for n in names}
    dtype = next(getattr(pipe, DENOISER).parameters()).dtype
    what = f"tiny {args.shape}" if args.tiny else f"{args.shape}-shaped"
    print(
        f"{what} pipeline, random weights ({', '.join(f'{k} {v:.1f} M' for k, v in count.items())}; {dtype}) "
        f"saved to {out} in {time.time() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
