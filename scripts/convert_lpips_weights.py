"""Write the LPIPS weights file that `dreambooth evaluate --lpips-net` reads (.safetensors).

Inputs, downloaded where there is network:

  alex.pth                  LPIPS' 1x1 heads (v0.1): `lpips/weights/v0.1/alex.pth` inside the lpips package
                            (`pip download lpips --no-deps`, then unzip the wheel)
  alexnet-owt-7be5be79.pth  torchvision's ImageNet AlexNet, the trunk LPIPS uses:
                            https://download.pytorch.org/models/alexnet-owt-7be5be79.pth

    python scripts/convert_lpips_weights.py alex.pth alexnet-owt-7be5be79.pth lpips_alex.safetensors

Both inputs are pickles; they are read here once with torch.load(weights_only=True), which rebuilds tensors
and nothing else. The output holds features.{0,3,6,8,10}.weight/.bias and lin{0..4}.model.1.weight.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

TRUNK_CONVS = (0, 3, 6, 8, 10)  # the conv layers of torchvision's alexnet().features


def convert(heads_path: str, trunk_path: str, out_path: str) -> None:
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    trunk = torch.load(trunk_path, map_location="cpu", weights_only=True)
    state = {f"features.{i}.{p}": trunk[f"features.{i}.{p}"] for i in TRUNK_CONVS for p in ("weight", "bias")}
    state.update({f"lin{i}.model.1.weight": heads[f"lin{i}.model.1.weight"] for i in range(5)})
    save_file({k: v.float().contiguous() for k, v in state.items()}, out_path)

    from dreambooth.evaluation.lpips import load_lpips

    load_lpips(out_path)  # the file has exactly the layout the evaluator expects
    print(f"{len(state)} tensors -> {out_path}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python scripts/convert_lpips_weights.py alex.pth alexnet-owt-7be5be79.pth OUT.safetensors")
    convert(*sys.argv[1:])
