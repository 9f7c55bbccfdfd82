"""LPIPS (Zhang et al. 2018, the 'alex' network, v0.1) in plain torch: the perceptual distance DIV averages.

An AlexNet conv trunk; at each of its five ReLU outputs the features are scaled to unit length along the
channels, the squared difference of two images' features goes through a learned 1x1 head (one output),
and is averaged over space; the five numbers are summed.

Weights file (.safetensors, float32), the names torchvision and the lpips package use:

    features.{0,3,6,8,10}.weight / .bias   AlexNet trunk (torchvision `alexnet().features`)
    lin{0..4}.model.1.weight               1x1 heads, shape [1, C, 1, 1], C = 64, 192, 384, 256, 256

`scripts/convert_lpips_weights.py` writes this file from the official `alex.pth` and torchvision's AlexNet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UsageError

CHANNELS = (64, 192, 384, 256, 256)
TAPS = (1, 4, 7, 9, 11)  # the ReLU outputs LPIPS compares (indices into `features`)
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS' input scaling layer, for images in [-1, 1]
SCALE = (0.458, 0.448, 0.450)


class Head(nn.Module):
    """lpips' NetLinLayer: dropout (inactive in eval) then a 1x1 conv to one channel, no bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPS(nn.Module):
    shift: torch.Tensor  # buffers: ImageNet normalisation in the [-1, 1] input range
    scale: torch.Tensor

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
        )
        for i, c in enumerate(CHANNELS):
            self.add_module(f"lin{i}", Head(c))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images [N, 3, H, W] in [-1, 1] -> the five unit-normalised feature maps."""
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(unit_normalise(x))
        return out

    def distance(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS between the images whose taps are `a` and `b` (same batch size): [N]."""
        per_tap = [getattr(self, f"lin{i}")((fa - fb) ** 2).mean(dim=(2, 3)) for i, (fa, fb) in enumerate(zip(a, b))]
        return torch.stack(per_tap).sum(dim=0)[:, 0]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(self.taps(x), self.taps(y))


def unit_normalise(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def load_lpips(path: str) -> LPIPS:
    """The network with the weights of a .safetensors file (never a pickle), in eval mode."""
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if p.suffix.lower() != ".safetensors":
        raise UsageError(
            f"--lpips-net {path}: must be a .safetensors file; convert the official weights with scripts/convert_lpips_weights.py"
        )
    if not p.is_file():
        raise UsageError(f"--lpips-net {path}: no such file; pass the LPIPS weights (.safetensors, see the README)")
    try:
        state = load_file(str(p))
    except Exception as e:  # safetensors raises its own error type for a damaged header
        raise UsageError(f"--lpips-net {path}: not a readable safetensors file ({type(e).__name__})") from None
    net = LPIPS()
    expected = net.state_dict()
    lacking = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if lacking or extra or wrong:
        detail = (
            f"missing {', '.join(lacking[:3])}"
            if lacking
            else f"unexpected {', '.join(extra[:3])}"
            if extra
            else f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}"
        )
        raise UsageError(f"--lpips-net {path}: not the LPIPS AlexNet layout ({detail}); see the README for the key names")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


def image_tensor(image) -> torch.Tensor:
    """RGB image -> [3, H, W] in [-1, 1], LPIPS' input range."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@torch.no_grad()
def pairwise(net: LPIPS, images: list, device: torch.device | None = None, chunk: int = 16) -> list[float]:
    """LPIPS of every unordered pair (i < j) of `images`, at the first image's size (others are resized to it)."""
    if len(images) < 2:
        return []
    from PIL import Image

    device = device or torch.device("cpu")
    net = net.to(device)
    size = images[0].size
    batch = torch.stack([image_tensor(im if im.size == size else im.resize(size, Image.Resampling.BICUBIC)) for im in images])
    taps = net.taps(batch.to(device))  # each image's features once; pairs only index them
    rows, cols = torch.triu_indices(len(images), len(images), offset=1).to(device)
    out = []
    for start in range(0, len(rows), chunk):  # the pairs' feature differences are large at full size
        i, j = rows[start : start + chunk], cols[start : start + chunk]
        out += net.distance([t[i] for t in taps], [t[j] for t in taps]).float().cpu().tolist()
    return out
