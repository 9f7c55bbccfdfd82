"""Pipeline -> images: seeded, batched, with a fast solver, and image grids. Used for class images, validation
images, model-card samples, `dreambooth generate` and the reports."""

from __future__ import annotations

import contextlib
import inspect
import math

import torch
from PIL import Image

from . import threads
from .errors import UsageError
from .families import components, family_of


def sampling_dtype(device) -> torch.dtype:
    """What images are drawn in on `device`: fp16 on a GPU (about twice as fast, the same images to the eye; the VAE
    still decodes in fp32 where it must), fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def autocast_in(device, dtype: torch.dtype):
    """The autocast (a context factory) that runs `device`'s work in `dtype`; none for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(torch.device(device).type, dtype=dtype)


def device_precision(device):
    """The autocast images are drawn under on `device` (see `sampling_dtype`)."""
    return autocast_in(device, sampling_dtype(device))


@contextlib.contextmanager
def eval_mode(*models):
    was = [m.training for m in models if m is not None]
    for m in models:
        if m is not None:
            m.eval()
    try:
        yield
    finally:
        for m, t in zip([m for m in models if m is not None], was):
            m.train(t)


def refresh_threads_each_step(pipe) -> dict:
    """A step callback that takes the CPU threads again between denoising steps (threads.refresh): a batch of tens
    of images takes seconds, and another process may start or end meanwhile."""
    if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
        return {}

    def refresh(_pipe, _step, _timestep, callback_kwargs):
        threads.refresh()
        return callback_kwargs

    return {"callback_on_step_end": refresh}


def draw(
    pipe,
    prompt: str,
    num: int,
    seed: int,
    steps: int,
    guidance: float,
    resolution: int,
    batch_size: int = 4,
    negative_prompt: str = "",
    first_index: int = 0,
    on_batch=None,
    autocast=contextlib.nullcontext,
) -> list:
    """`num` images of `prompt`; image i is drawn with seed `seed + first_index + i` whatever the batch size.

    `autocast` is the precision the denoiser and text encoders run in; the pipeline stops at the latents and they are
    decoded here (by the family: see `Family.decoded_latents`), so that a VAE that must run in fp32 does, outside it
    (see `autoencoder`)."""
    jobs = [(prompt, seed + first_index + i) for i in range(num)]
    return draw_jobs(pipe, jobs, steps, guidance, resolution, batch_size, negative_prompt, on_batch, autocast)


def draw_each(
    pipe, prompts: list[str], num: int, seed: int, steps: int, guidance: float, resolution: int, batch_size: int = 4,
    autocast=contextlib.nullcontext,
) -> dict[str, list]:  # fmt: skip
    """`num` images of each prompt, image i of each with seed `seed + i` (as `draw` gives them one prompt at a time),
    with the prompts sharing batches: on a CPU a batch of small images costs little more than one image."""
    jobs = [(p, seed + i) for p in prompts for i in range(num)]
    images = draw_jobs(pipe, jobs, steps, guidance, resolution, batch_size, autocast=autocast)
    return {p: images[k * num : (k + 1) * num] for k, p in enumerate(prompts)}


def draw_jobs(
    pipe,
    jobs: list[tuple[str, int]],
    steps: int,
    guidance: float,
    resolution: int,
    batch_size: int = 4,
    negative_prompt: str = "",
    on_batch=None,
    autocast=contextlib.nullcontext,
) -> list:
    """One image per (prompt, seed), in that order, `batch_size` at a time."""
    family = family_of(pipe)
    if negative_prompt and "negative_prompt" not in inspect.signature(pipe.__call__).parameters:
        raise UsageError(f"--negative-prompt: {family.pipeline_class} takes no negative prompt; leave it out")
    sampler, pipe.scheduler = pipe.scheduler, family.objective.sampler(pipe)
    pipe.set_progress_bar_config(disable=True)
    images = []
    try:
        with eval_mode(*components(pipe, family).values()), torch.no_grad(), autocast():
            for start in range(0, len(jobs), batch_size):
                batch_jobs = jobs[start : start + batch_size]
                n = len(batch_jobs)
                threads.refresh()
                generators = [torch.Generator().manual_seed(s) for _, s in batch_jobs]
                negative = [negative_prompt] * n if negative_prompt else None
                latents = pipe(
                    prompt=[p for p, _ in batch_jobs],  # by name: FLUX.2 [klein]'s pipeline takes images first
                    height=resolution,
                    width=resolution,
                    num_inference_steps=steps,
                    generator=generators,
                    output_type="latent",
                    **refresh_threads_each_step(pipe),
                    **family.guidance_options(guidance, negative, n),
                ).images
                batch = to_images(pipe, family.sampled_latents(pipe, latents, resolution, resolution))
                images += batch
                if on_batch:
                    on_batch(batch)
    finally:
        pipe.scheduler = sampler
    return images


def to_images(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """The pipeline's latents -> its images, as the pipeline would have finished them (watermark where it has one)."""
    image = family_of(pipe).decoded_latents(pipe.vae, latents)
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    return pipe.image_processor.postprocess(image, output_type="pil")


def grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or min(len(images), 4)
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    out = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        out.paste(im.convert("RGB").resize((w, h)), ((i % cols) * w, (i // cols) * h))
    return out
