"""Photos and class images -> the latents, prompts and conditioning of one micro-batch.

Everything random about an example (which photo, flip, crop, latent sample, noise, timestep) comes from a
generator seeded by (seed, its position in the stream): a resumed run draws exactly what an uninterrupted
one would, and N processes draw what one process with N times the batch would."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PriorMode, TrainConfig
from ..families import Family, PromptEmbeddings
from ..lora.adapter import adapters_off
from .photos import Size, bucket_of, buckets, crop_like, resize_and_crop, to_tensor


def example_generator(seed: int, kind: str, position: int) -> torch.Generator:
    stream = {"instance": 0, "class": 1, "prior": 2}[kind]
    return torch.Generator().manual_seed((seed * 1_000_003 + position) * 4 + stream)


def device_generator(g: torch.Generator, device: torch.device) -> torch.Generator | None:
    """The generator an example draws its latent sample, noise and timestep from, on the device that uses them:
    drawn there, they cost no host-to-device copy, which would make the host wait for the device every step.
    On the CPU it is the example's own generator (so CPU runs draw what they always drew); on the meta device
    (shapes only) none."""
    if device.type == "cpu":
        return g
    if device.type == "meta":
        return None
    return torch.Generator(device).manual_seed(g.initial_seed())


def stream_indices(pos: int, count: int, n: int, seed: int) -> list[int]:
    """Items pos..pos+count-1 of an endless stream of shuffled epochs over n items."""
    out = []
    for p in range(pos, pos + count):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + p // n))
        out.append(int(perm[p % n]))
    return out


def bucket_stream(
    micro_step: int, groups: list[list[int]], global_batch: int, first: int, count: int, seed: int
) -> tuple[int, list[int]]:
    """--bucketing: which bucket global batch `micro_step` is drawn from, and items first..first+count-1 of it (this
    process's share of the global batch). An epoch gives each bucket ceil(its photos / global batch) batches, in an
    order shuffled by (seed, epoch); within a bucket its photos are shuffled per epoch and taken in turn. Everything
    follows from (seed, micro_step): a resumed run draws what an uninterrupted one would."""
    slots = [(b, k) for b, group in enumerate(groups) for k in range(-(-len(group) // global_batch))]
    epoch, at = divmod(micro_step, len(slots))
    order = torch.randperm(len(slots), generator=torch.Generator().manual_seed((seed * 7919 + epoch) * 2 + 1))
    b, k = slots[int(order[at])]
    group = groups[b]
    shuffled = torch.randperm(len(group), generator=torch.Generator().manual_seed((seed * 7919 + epoch) * 1009 + b))
    return b, [group[int(shuffled[(k * global_batch + p) % len(group)])] for p in range(first, first + count)]


@dataclass
class Batch:
    latents: torch.Tensor  # instance examples first, then class examples
    prompts: list[str]
    num_class: int
    geometry: torch.Tensor  # per example: original height and width, the crop's top and left, target height and width
    rngs: list  # each example's generator on the device (see device_generator), to draw its noise and timestep next
    masks: torch.Tensor | None = None  # --masked-loss: (B, 1, h, w) share of subject in each latent cell; 1 for class examples


class Examples:
    """Draws micro-batches. With a centre crop the VAE posterior of each (image, flip) is computed once and
    reused (with its mask, under --masked-loss); each step still samples a fresh latent from it, as encoding anew
    would. Prompt embeddings are cached while the text encoders are frozen."""

    def __init__(
        self,
        cfg: TrainConfig,
        family: Family,
        vae,
        tokenizers: list,
        encoders: list,
        device,
        dtype,
        instance: list,
        classes: list,
        rank: int = 0,
        num_processes: int = 1,
        groups: list[tuple[list[int], list[int]]] | None = None,
        live: tuple[str, ...] | None = None,
    ):
        self.cfg, self.family, self.vae, self.tokenizers, self.encoders = cfg, family, vae, tokenizers, encoders
        self.rank, self.num_processes = rank, num_processes  # this process's share of the stream of examples
        self.device, self.dtype = device, dtype
        self.sets = {"instance": instance, "class": classes}
        # --subjects: each subject's (photo indices, class image indices); the stream interleaves the subjects
        self.subject_groups = groups
        # the text encoders that run every step (a LoRA or new tokens train in them); the others' part is cached
        if live is None and family is not None:
            trained = [n for n in family.text_encoders if n not in family.frozen_text_encoders]
            live = tuple(trained) if cfg.train_text_encoder else ()
        self.live = live or ()
        self.posteriors: dict = {}
        self.embeddings: dict = {}
        self.guidance: dict[int, torch.Tensor] = {}
        square = (cfg.resolution, cfg.resolution)
        # --bucketing: each photo's bucket (else every photo is the square), and the photos of each bucket
        choices = buckets(cfg.resolution, family.resolution_multiple) if cfg.bucketing else [square]
        self.sizes: list[Size] = (
            [bucket_of(p.image.size, choices) for p in instance] if cfg.bucketing else [square] * len(instance)
        )
        self.bucket_sizes: list[Size] = sorted(set(self.sizes))
        self.bucket_members = [[i for i, size in enumerate(self.sizes) if size == b] for b in self.bucket_sizes]

    def posterior(self, which: str, idx: int, flip: bool, g: torch.Generator | None, size: Size | None = None):
        """The VAE posterior of one image at `size` (width, height; default: the photo's bucket, or the square), with
        its SDXL time ids and latent mask; cached for fixed crops."""
        which = "instance" if which == "prior" else which
        size = size or (self.sizes[idx] if which == "instance" else (self.cfg.resolution, self.cfg.resolution))
        key = (which, idx, flip, size)
        if key in self.posteriors:
            return self.posteriors[key]
        fixed = self.cfg.center_crop or which == "class"
        out = self.encode_image(self.sets[which][idx], size, fixed, g, flip)
        if fixed:
            self.posteriors[key] = out
        return out

    def encode_image(self, photo, size: Size, fixed: bool, g: torch.Generator | None, flip: bool):
        image, (top, left) = resize_and_crop(photo.image, size, fixed, g, flip)
        with torch.no_grad():
            dist = self.family.encode_images(self.vae, to_tensor(image)[None].to(self.device))
        w, h = size
        geometry = torch.tensor(
            [[photo.image.height, photo.image.width, top, left, h, w]], dtype=torch.float32, device=self.device
        )
        # an fp32 VAE's posterior joins the rest of the batch in the compute dtype, as a VAE in that dtype gave it
        mask = self.latent_mask(photo, size, flip, (top, left), dist.mean)
        return dist.mean.to(self.dtype), dist.std.to(self.dtype), geometry, mask

    def latent_mask(self, photo, size: Size, flip: bool, corner: tuple[int, int], latents: torch.Tensor) -> torch.Tensor | None:
        """The photo's mask, cropped and flipped as the photo was, then area-averaged onto the latent grid (whatever the
        VAE's downsampling factor): each latent cell's share of subject. None without --masked-loss or a mask."""
        if not self.cfg.masked_loss or photo.mask is None:
            return None
        cropped = crop_like(photo.mask, size, flip, corner)
        pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0)[None, None].to(self.device)
        return F.interpolate(pixels, size=latents.shape[-2:], mode="area")

    def prompt(self, which: str, idx: int) -> str:
        if which == "class":  # the prompt the class image was drawn from (--class-prompts-file)
            return self.sets["class"][idx].caption or self.cfg.class_prompt
        if which == "prior":
            return self.cfg.class_prompt
        return self.sets["instance"][idx].caption or self.cfg.instance_prompt

    @property
    def cached_encoders(self) -> tuple[str, ...]:
        return tuple(n for n in self.family.text_encoders if n not in self.live)

    def encode(self, prompts: list[str]) -> PromptEmbeddings:
        if not self.live:
            return self.with_guidance(self.cached(prompts, base=False))
        if not self.cached_encoders:
            return self.with_guidance(self.family.encode_prompts(self.tokenizers, self.encoders, prompts, self.device))
        # the live encoders run every step; the others' part (T5's) comes from the cache
        names = self.family.text_encoders
        live = [e if name in self.live else None for name, e in zip(names, self.encoders)]
        embedded = self.family.encode_prompts(self.tokenizers, live, prompts, self.device)
        return self.with_guidance({**self.cached(prompts, base=False, only_frozen=True), **embedded})

    def with_guidance(self, embedded: PromptEmbeddings) -> PromptEmbeddings:
        """The guidance value a guidance-distilled transformer (FLUX.1 [dev]) is given while training, one per
        example, made on the device; other families never read it."""
        n = next(iter(embedded.values())).shape[0]
        if n not in self.guidance:  # made once per batch size, not every step
            self.guidance[n] = torch.full((n,), self.cfg.training_guidance, device=self.device)
        return {**embedded, "guidance": self.guidance[n]}

    def precompute(self) -> None:
        """Encode every fixed-crop image (both flips when flipping) and, with frozen text encoders, every prompt."""
        flips = (False, True) if self.cfg.random_flip else (False,)
        for which, photos in self.sets.items():
            if which == "class" or self.cfg.center_crop:
                # class images join batches of every bucket, so they are cropped to each
                sizes = self.bucket_sizes if which == "class" and self.cfg.bucketing else [None]
                for idx in range(len(photos)):
                    for flip in flips:
                        for size in sizes:
                            self.posterior(which, idx, flip, None, size)
        if self.cached_encoders:
            prompts = [self.prompt("instance", i) for i in range(len(self.sets["instance"]))]
            prompts += [self.cfg.class_prompt] if self.cfg.prior() and self.cfg.class_prompt else []
            prompts += [self.prompt("class", i) for i in range(len(self.sets["class"]))]
            dropping = self.cfg.caption_dropout > 0 or self.cfg.class_caption_dropout > 0
            prompts += [""] if dropping else []  # what a dropped caption reads
            self.cached(prompts, base=False, only_frozen=bool(self.live))
        if self.cfg.prior() is PriorMode.BASE_PREDICTION:
            self.base_encode([self.cfg.class_prompt])
        if self.cfg.preserve_unconditional:
            self.base_encode([""])

    def base_encode(self, prompts: list[str]) -> PromptEmbeddings:
        """Embeddings from the text encoders with their adapters off: the frozen base model's view.
        With frozen encoders that is what `encode` gives, so both share one cache then."""
        return self.with_guidance(self.cached(prompts, base=self.cfg.train_text_encoder))

    def cached(self, prompts: list[str], base: bool, only_frozen: bool = False) -> PromptEmbeddings:
        """Embeddings of `prompts`, each computed once (with adapters off when `base`; from the encoders that do not
        run every step alone when `only_frozen`)."""
        key = "frozen" if only_frozen else base
        missing = [p for p in dict.fromkeys(prompts) if (key, p) not in self.embeddings]
        if missing:
            encoders = self.encoders
            if only_frozen:
                cached = self.cached_encoders
                encoders = [e if name in cached else None for name, e in zip(self.family.text_encoders, encoders)]
            with torch.no_grad(), adapters_off(*self.encoders) if base else contextlib.nullcontext():
                embedded = self.family.encode_prompts(self.tokenizers, encoders, missing, self.device)
            for i, p in enumerate(missing):
                self.embeddings[(key, p)] = {name: tensor[i] for name, tensor in embedded.items()}
        names = self.embeddings[(key, prompts[0])]
        return {name: torch.stack([self.embeddings[(key, p)][name] for p in prompts]) for name in names}

    def subject_picks(self, first: int, count: int, with_classes: bool) -> list[tuple[str, int, int]]:
        """Positions first..first+count-1 of the --subjects stream: position p is subject p mod S (so the subjects
        take turns, whatever the batch size), which draws from its own endless shuffle of its photos; with prior
        preservation each subject's example brings a class image of its own class prompt."""
        groups = self.subject_groups or []
        seed, picks, classes = self.cfg.seed, [], []
        for pos in range(first, first + count):
            photos, class_images = groups[pos % len(groups)]
            turn = pos // len(groups)  # how many examples of this subject came before
            stream = seed * 1009 + 2 * (pos % len(groups))
            picks.append(("instance", photos[stream_indices(turn, 1, len(photos), stream)[0]], pos))
            if with_classes:
                classes.append(("class", class_images[stream_indices(turn, 1, len(class_images), stream + 1)[0]], pos))
        return picks + classes

    def batch(self, micro_step: int) -> Batch:
        """Micro-batch `micro_step` of this process. Its examples are positions of one global stream, and each
        example draws its flip, crop, latent sample, noise and timestep from its own generator: N processes with
        batch b see exactly the examples and randomness of one process with batch N*b."""
        cfg, bs = self.cfg, self.cfg.batch_size
        first = (micro_step * self.num_processes + self.rank) * bs
        prior = cfg.prior()
        size = None  # each photo at its own size: the square, without --bucketing
        if self.subject_groups:
            picks = self.subject_picks(first, bs, prior is PriorMode.GENERATED)
        else:
            if cfg.bucketing:
                # every example of the global batch from one bucket; class examples are cropped to it
                b, instance = bucket_stream(
                    micro_step, self.bucket_members, self.num_processes * bs, self.rank * bs, bs, cfg.seed
                )
                size = self.bucket_sizes[b]
            else:
                instance = stream_indices(first, bs, len(self.sets["instance"]), cfg.seed)
            picks = [("instance", i, first + j) for j, i in enumerate(instance)]
        if prior is PriorMode.BASE_PREDICTION:
            # the class half: the same photos, read with the class prompt; the target comes from the base model
            picks += [("prior", idx, pos) for _, idx, pos in picks]
        elif prior is PriorMode.GENERATED and not self.subject_groups:
            classes = stream_indices(first, bs, len(self.sets["class"]), cfg.seed + 1)
            picks += [("class", i, first + j) for j, i in enumerate(classes)]
        samples, geometry, rngs, prompts, masks = [], [], [], [], []
        for which, idx, pos in picks:
            g = example_generator(cfg.seed, which, pos)
            flip = cfg.random_flip and bool(torch.randint(0, 2, (1,), generator=g))
            # drawn only when asked for, so that runs without it draw exactly what they always drew
            p = {"instance": cfg.caption_dropout, "class": cfg.class_caption_dropout}.get(which, 0.0)
            dropped = p > 0 and bool(torch.rand(1, generator=g) < p)
            prompts.append("" if dropped else self.prompt(which, idx))
            mean, std, ids, mask = self.posterior(which, idx, flip, g, size)
            dg = device_generator(g, mean.device)
            noise = torch.randn(mean.shape, generator=dg, device=mean.device).to(mean.dtype)
            samples.append(mean + std * noise)
            geometry.append(ids)
            rngs.append(dg)
            # only the photos are masked: class examples (and the prior half, judged against the base) count whole
            whole = mask is None or which != "instance"
            masks.append(torch.ones((1, 1, *mean.shape[-2:]), device=mean.device) if whole else mask)
        latents = self.family.normalised_latents(self.vae, torch.cat(samples))
        batch_masks = torch.cat(masks) if cfg.masked_loss else None
        return Batch(latents, prompts, len(picks) - bs, torch.cat(geometry), rngs, batch_masks)
