"""Readers: a small classifier that says, for an image of the world, the object's class, colour and pattern and the
context it stands in. It learns from renders (whose truth is known exactly) that are blurred, noised, tinted, shifted
and passed through the autoencoder, because generated images carry such artefacts and a reader trained on clean
renders misreads them. Its accuracy on fresh renders is measured when it is trained and saved beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .. import atomic
from .fit import fit, to_tensor
from .render import CLASSES, COLOURS, CONTEXTS, PATTERNS, batch

HEADS = {"cls": CLASSES, "colour": tuple(COLOURS), "pattern": PATTERNS, "context": tuple(CONTEXTS)}
WEIGHTS, INFO = "reader.safetensors", "reader.json"


class Reader(torch.nn.Module):
    def __init__(self, width: int = 48):
        super().__init__()
        layers, c_in = [], 3
        for c_out, stride in ((width, 1), (width, 2), (2 * width, 2), (4 * width, 2)):
            layers += [torch.nn.Conv2d(c_in, c_out, 3, stride, 1), torch.nn.GroupNorm(8, c_out), torch.nn.SiLU()]
            c_in = c_out
        self.features = torch.nn.Sequential(*layers, torch.nn.Flatten())  # 4x4 cells: where things are tells a shape
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(c_in * 16, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: head(f) for k, head in self.heads.items()}


def labels(scenes) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([names.index(getattr(s, k)) for s in scenes]) for k, names in HEADS.items()}


def artefacts(x: torch.Tensor, vae, generator: torch.Generator) -> torch.Tensor:
    """What sampling does to an image: an autoencoder round trip, blur, 2x2-periodic ripples, tint, noise, shift."""
    n = len(x)

    def some(p):
        return (torch.rand(n, 1, 1, 1, generator=generator) < p).float()

    with torch.no_grad():
        if vae is not None:
            x = x + some(0.7) * (vae.decode(vae.encode(x).latent_dist.sample(generator)).sample - x)
        blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
        x = x + some(0.3) * (blurred - x)
        ripple = torch.randn(n, 3, 2, 2, generator=generator).repeat(1, 1, 16, 16) * 0.06
        x = x + some(0.5) * ripple
        x = x * (1 + 0.1 * torch.randn(n, 3, 1, 1, generator=generator)) + 0.08 * torch.randn(n, 3, 1, 1, generator=generator)
        x = x + some(0.5) * 0.05 * torch.randn(x.shape, generator=generator)
        dy, dx = torch.randint(-2, 3, (2,), generator=generator).tolist()
        x = torch.roll(x, (dy, dx), dims=(2, 3))
    return x.clamp(-1, 1)


def accuracy(reader: Reader, vae, seed: int, n: int = 1024) -> dict[str, dict[str, float]]:
    """Per-head accuracy on fresh renders, clean and with artefacts."""
    scenes, images = batch(np.random.default_rng([seed, 9]), n, held_out=True)
    truth = labels(scenes)
    x = to_tensor(images)
    result = {}
    for name, inputs in (("clean", x), ("artefacts", artefacts(x, vae, torch.Generator().manual_seed(seed)))):
        with torch.no_grad():
            out = reader.eval()(inputs)
        result[name] = {k: round(float((out[k].argmax(1) == truth[k]).float().mean()), 4) for k in HEADS}
    return result


def train_reader(cfg, folder: Path, vae) -> Path:
    """Train on streamed renders (held-out combinations included: a reader must see the subjects); save with accuracy."""
    if (folder / INFO).is_file():
        return folder
    torch.manual_seed(cfg.seed + 3)
    reader = Reader()
    generator = torch.Generator().manual_seed(cfg.seed + 4)

    def loss_at(step):
        scenes, images = batch(np.random.default_rng([cfg.seed, 4, step]), cfg.batch_size, held_out=True)
        out = reader(artefacts(to_tensor(images), vae, generator))
        truth = labels(scenes)
        return sum(F.cross_entropy(out[k], truth[k]) for k in HEADS)

    fit("reader", reader, cfg.reader_steps, cfg.learning_rate, loss_at)
    measured = accuracy(reader, vae, cfg.seed, cfg.reader_check_renders)
    print(f"reader accuracy on {cfg.reader_check_renders} fresh renders: {json.dumps(measured)}", flush=True)
    save(reader, folder, {"accuracy": measured, "heads": HEADS})
    return folder


def save(reader: Reader, folder: Path, info: dict) -> None:
    tmp = atomic.temp_dir_beside(folder)
    save_file({k: v.contiguous() for k, v in reader.state_dict().items()}, str(tmp / WEIGHTS))
    (tmp / INFO).write_text(json.dumps(info, indent=1))
    atomic.replace_dir(tmp, folder)


def load(folder: Path) -> tuple[Reader, dict]:
    reader = Reader()
    reader.load_state_dict(load_file(str(Path(folder) / WEIGHTS)))
    return reader.eval(), json.loads((Path(folder) / INFO).read_text())


def read(reader: Reader, images, batch_size: int = 256) -> list[dict[str, str]]:
    """What the reader sees in each image: {'cls': 'dog', 'colour': 'purple', 'pattern': 'dotted', 'context': 'beach'}."""
    found = []
    for start in range(0, len(images), batch_size):
        with torch.no_grad():
            out = reader(to_tensor(images[start : start + batch_size]))
        picks = {k: out[k].argmax(1).tolist() for k in HEADS}
        found += [{k: HEADS[k][picks[k][i]] for k in HEADS} for i in range(len(picks["cls"]))]
    return found
