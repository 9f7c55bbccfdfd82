"""`dreambooth pretrain-world`: train the world's base model from scratch on streamed renders.

Three stages, each skipped when its output exists, so a killed run goes on where it stopped:
autoencoder -> UNet + text encoder (checkpointed every few minutes) -> reader. The result, output_dir/model, is a
diffusers StableDiffusionPipeline folder in fp16 with the reader beside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import atomic
from ..errors import UsageError, warn
from ..families.sd import encode_prompts
from ..objectives.ddpm import snr_weights, training_target
from ..training import checkpoint
from ..training.loss import weighted_mse
from . import PretrainWorldConfig
from . import model as M
from .fit import cosine, fit, progress, to_tensor
from .render import SIZE, batch, caption

MADE_BY = "MADE_BY.md"


def train_autoencoder(cfg: PretrainWorldConfig, folder: Path):
    """A near-lossless 2x autoencoder for renders; its latent scale is set so latents have unit variance."""
    from diffusers import AutoencoderKL

    if (folder / "config.json").is_file():
        return AutoencoderKL.from_pretrained(folder)
    vae = M.build_autoencoder(cfg.seed)

    def loss_at(step):
        x = to_tensor(batch(np.random.default_rng([cfg.seed, 1, step]), cfg.batch_size)[1])
        posterior = vae.encode(x).latent_dist
        out = vae.decode(posterior.sample()).sample
        return F.mse_loss(out, x) + 0.5 * F.l1_loss(out, x) + 1e-6 * posterior.kl().mean()

    fit("autoencoder", vae, cfg.autoencoder_steps, cfg.learning_rate, loss_at)
    with torch.no_grad():
        _, images = batch(np.random.default_rng([cfg.seed, 2]), 512)
        std = vae.encode(to_tensor(images)).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    tmp = atomic.temp_dir_beside(folder)
    vae.save_pretrained(tmp)
    atomic.replace_dir(tmp, folder)
    return vae


def diffusion_loss(unet, text_encoder, tokenizer, vae, scheduler, images, captions, generator) -> torch.Tensor:
    """The model's target (v) with min-SNR-5 weights, which converge several times faster than uniform ones."""
    with torch.no_grad():
        latents = vae.encode(to_tensor(images)).latent_dist.sample(generator) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = scheduler.add_noise(latents, noise, t)
    cond = encode_prompts([tokenizer], [text_encoder], captions, "cpu")["hidden"]
    pred = unet(noisy, t, cond).sample
    return weighted_mse(pred, training_target(scheduler, latents, noise, t), snr_weights(scheduler, t, 5.0))


def step_data(seed: int, step: int, n: int):
    """The renders and captions of one step, a function of (seed, step) only so a resumed run sees the same."""
    rng = np.random.default_rng([seed, 3, step])
    scenes, images = batch(rng, n)
    # one caption in ten is empty, which classifier-free guidance needs
    captions = [caption(s, rng) if rng.random() > 0.1 else "" for s in scenes]
    return images, captions


def train_diffusion(cfg: PretrainWorldConfig, out: Path, vae):
    tokenizer = M.build_tokenizer()
    text_encoder, unet = M.build_text_encoder(tokenizer, cfg.seed + 1), M.build_unet(cfg.seed + 2)
    scheduler = M.build_scheduler()
    vae.requires_grad_(False).eval()
    models = {"unet": unet, "text_encoder": text_encoder}
    params = [p for m in models.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.01)
    schedule = cosine(optimizer, 200, cfg.diffusion_steps)
    ckpt_dir = out / "checkpoints"
    checkpoint.remove_partial(ckpt_dir)
    # the stage's data and optimiser follow from these (a longer run may continue a shorter one): a checkpoint made
    # with others belongs to another run
    identity = {k: getattr(cfg, k) for k in ("seed", "batch_size", "learning_rate")}
    found, damaged = checkpoint.newest_intact(ckpt_dir)
    for path, why in damaged:
        warn(f"checkpoint {path} is damaged ({why}); passing over it")
    first = 0
    if found:
        then = checkpoint.read_meta(found).get("identity") or identity
        changed = [f"--{k.replace('_', '-')} {then[k]} then, {v} now" for k, v in identity.items() if then.get(k, v) != v]
        if changed:
            raise UsageError(f"--output-dir {cfg.output_dir}: its diffusion checkpoints were made with other settings "
                             f"({'; '.join(changed)}); pass those, or another --output-dir")  # fmt: skip
        first = checkpoint.load(found, models, optimizer, schedule)
        print(f"resuming the diffusion stage from {found.name}", flush=True)
    started = last_save = time.time()
    total = 0.0
    for step in range(first + 1, cfg.diffusion_steps + 1):
        images, captions = step_data(cfg.seed, step, cfg.batch_size)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss = diffusion_loss(unet, text_encoder, tokenizer, vae, scheduler, images, captions, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step(), schedule.step(), optimizer.zero_grad(set_to_none=True)
        total += loss.item()
        if step % 50 == 0:
            progress("diffusion", step, cfg.diffusion_steps, total / 50, started, first)
            total = 0.0
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.diffusion_steps:
            checkpoint.save_or_stop(ckpt_dir, step, models, optimizer, schedule, keep=2, identity=identity)
            last_save = time.time()
    return M.assemble(vae, text_encoder, tokenizer, unet)


def made_by(cfg: PretrainWorldConfig) -> str:
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(cfg).items() if k not in ("output_dir", "checkpoint_minutes")
    )
    return (
        "# The world's base model\n\nTrained from scratch on renders of `dreambooth.world.render` by\n\n"
        f"```\ndreambooth pretrain-world --output-dir OUT {flags}\n```\n\n"
        "(then `OUT/model` copied here). Everything it knows comes from those renders.\n"
    )


def save_model(pipe, reader_dir: Path | None, cfg: PretrainWorldConfig, folder: Path) -> None:
    tmp = atomic.temp_dir_beside(folder)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    pipe.to(torch.float32)
    for config in tmp.glob("*/config.json"):  # from_pretrained recorded the stage folder: a path of this machine
        settings = json.loads(config.read_text())
        if settings.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    (tmp / MADE_BY).write_text(made_by(cfg))
    if reader_dir is not None:
        import shutil

        shutil.copytree(reader_dir, tmp / "reader")
    atomic.replace_dir(tmp, folder)


def pretrain_world(cfg: PretrainWorldConfig) -> Path:
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    vae = train_autoencoder(cfg, out / "autoencoder")
    print(f"autoencoder ready ({out / 'autoencoder'})", flush=True)
    pipe = train_diffusion(cfg, out, vae)
    save_model(pipe, None, cfg, out / "model")
    print(f"diffusion model ready ({out / 'model'})", flush=True)
    from . import readers

    reader_dir = readers.train_reader(cfg, out / "reader", vae)
    save_model(pipe, reader_dir, cfg, out / "model")
    print(f"world model written to {out / 'model'}", flush=True)
    return out / "model"


assert SIZE == 32  # the architecture in model.py is sized for 32 px renders
