"""Photos and class images -> the latents, prompts and conditioning of one micro-batch.

Everything random about an example (which photo, flip, crop, latent sample, noise, timestep) comes from a
generator seeded by (seed, its position in the stream): a resumed run draws exactly what an uninterrupted
one would, and N processes draw what one process with N times the batch would."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch

from .data import resize_and_crop, to_tensor
from .text_encoding import encode_prompts


def example_generator(seed: int, kind: str, position: int) -> torch.Generator:
    stream = {"instance": 0, "class": 1, "prior": 2}[kind]
    return torch.Generator().manual_seed((seed * 1_000_003 + position) * 4 + stream)


def stream_indices(pos: int, count: int, n: int, seed: int) -> list[int]:
    """Items pos..pos+count-1 of an endless stream of shuffled epochs over n items."""
    out = []
    for p in range(pos, pos + count):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + p // n))
        out.append(int(perm[p % n]))
    return out


_TUNER_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tuner_layers(model) -> list:
    """peft's adapter-carrying layers of `model`, listed once per set of adapters. diffusers' and transformers'
    disable_adapters walk every module and check peft's version on each call: about 4 % of a base-prediction
    step on the world model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    key = tuple(model.peft_config)
    cached = _TUNER_LAYERS.get(model)
    if cached is None or cached[0] != key:
        cached = _TUNER_LAYERS[model] = (key, [m for m in model.modules() if isinstance(m, BaseTunerLayer)])
    return cached[1]


@contextlib.contextmanager
def adapters_off(*models):
    """Run the frozen base model: LoRA adapters of `models` (those that have any) switched off."""
    layers = [layer for m in models if getattr(m, "peft_config", None) for layer in tuner_layers(m)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@dataclass
class Batch:
    latents: torch.Tensor  # instance examples first, then class examples
    prompts: list[str]
    num_class: int
    time_ids: torch.Tensor  # SDXL micro-conditioning per example: original size, crop corner, target size
    rngs: list  # each example's generator, to draw its noise and timestep next


class Examples:
    """Draws micro-batches. With a centre crop the VAE posterior of each (image, flip) is computed once and
    reused; each step still samples a fresh latent from it, as encoding anew would. Prompt embeddings
    are cached while the text encoders are frozen."""

    def __init__(self, cfg, vae, tokenizers: list, encoders: list, device, dtype, instance: list, classes: list,
                 rank: int = 0, world: int = 1):
        self.cfg, self.vae, self.tokenizers, self.encoders = cfg, vae, tokenizers, encoders
        self.rank, self.world = rank, world  # this process's share of the stream of examples
        self.device, self.dtype = device, dtype
        self.sets = {"instance": instance, "class": classes}
        self.posteriors: dict = {}
        self.embeddings: dict = {}

    def posterior(self, which: str, idx: int, flip: bool, g: torch.Generator):
        which = "instance" if which == "prior" else which
        key = (which, idx, flip)
        if key in self.posteriors:
            return self.posteriors[key]
        photo = self.sets[which][idx]
        fixed = self.cfg.center_crop or which == "class"
        image, (top, left) = resize_and_crop(photo.image, self.cfg.resolution, fixed, g, flip)
        pixels = to_tensor(image)[None].to(self.device, self.dtype)
        with torch.no_grad():
            dist = self.vae.encode(pixels).latent_dist
        res = self.cfg.resolution
        time_ids = torch.tensor([[photo.image.height, photo.image.width, top, left, res, res]], dtype=torch.float32)
        out = (dist.mean, dist.std, time_ids)
        if fixed:
            self.posteriors[key] = out
        return out

    def prompt(self, which: str, idx: int) -> str:
        if which in ("class", "prior"):
            return self.cfg.class_prompt
        return self.sets["instance"][idx].caption or self.cfg.instance_prompt

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cfg.train_text_encoder:
            return encode_prompts(self.tokenizers, self.encoders, prompts, self.device)
        return self.cached(prompts, base=False)

    def precompute(self) -> None:
        """Encode every fixed-crop image (both flips when flipping) and, with frozen text encoders, every prompt."""
        flips = (False, True) if self.cfg.random_flip else (False,)
        for which, photos in self.sets.items():
            if which == "class" or self.cfg.center_crop:
                for idx in range(len(photos)):
                    for flip in flips:
                        self.posterior(which, idx, flip, None)
        if not self.cfg.train_text_encoder:
            prompts = [self.prompt("instance", i) for i in range(len(self.sets["instance"]))]
            self.encode(prompts + ([self.cfg.class_prompt] if self.cfg.with_prior_preservation else []))
        if self.cfg.with_prior_preservation and self.cfg.prior_mode == "base-prediction":
            self.base_encode([self.cfg.class_prompt])

    def base_encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings from the text encoders with their adapters off: the frozen base model's view.
        With frozen encoders that is what `encode` gives, so both share one cache then."""
        return self.cached(prompts, base=self.cfg.train_text_encoder)

    def cached(self, prompts: list[str], base: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings of `prompts`, each computed once (with adapters off when `base`)."""
        missing = [p for p in dict.fromkeys(prompts) if (base, p) not in self.embeddings]
        if missing:
            with torch.no_grad(), (adapters_off(*self.encoders) if base else contextlib.nullcontext()):
                hidden, pooled = encode_prompts(self.tokenizers, self.encoders, missing, self.device)
            for i, p in enumerate(missing):
                self.embeddings[(base, p)] = (hidden[i], None if pooled is None else pooled[i])
        hidden = torch.stack([self.embeddings[(base, p)][0] for p in prompts])
        first = self.embeddings[(base, prompts[0])][1]
        return hidden, None if first is None else torch.stack([self.embeddings[(base, p)][1] for p in prompts])

    def batch(self, micro_step: int) -> Batch:
        """Micro-batch `micro_step` of this process. Its examples are positions of one global stream, and each
        example draws its flip, crop, latent sample, noise and timestep from its own generator: N processes with
        batch b see exactly the examples and randomness of one process with batch N*b."""
        cfg, bs = self.cfg, self.cfg.batch_size
        first = (micro_step * self.world + self.rank) * bs
        instance = stream_indices(first, bs, len(self.sets["instance"]), cfg.seed)
        picks = [("instance", i, first + j) for j, i in enumerate(instance)]
        if cfg.with_prior_preservation and cfg.prior_mode == "base-prediction":
            # the class half: the same photos, read with the class prompt; the target comes from the base model
            picks += [("prior", idx, pos) for _, idx, pos in picks]
        elif cfg.with_prior_preservation:
            classes = stream_indices(first, bs, len(self.sets["class"]), cfg.seed + 1)
            picks += [("class", i, first + j) for j, i in enumerate(classes)]
        latents, time_ids, rngs = [], [], []
        for which, idx, pos in picks:
            g = example_generator(cfg.seed, which, pos)
            flip = cfg.random_flip and bool(torch.randint(0, 2, (1,), generator=g))
            mean, std, ids = self.posterior(which, idx, flip, g)
            noise = torch.randn(mean.shape, generator=g).to(mean.device, mean.dtype)
            latents.append(mean + std * noise)
            time_ids.append(ids)
            rngs.append(g)
        latents = torch.cat(latents) * self.vae.config.scaling_factor
        prompts = [self.prompt(which, idx) for which, idx, _ in picks]
        return Batch(latents, prompts, len(picks) - bs, torch.cat(time_ids).to(self.device), rngs)
