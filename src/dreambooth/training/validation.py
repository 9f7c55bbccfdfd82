"""Validation that picks the checkpoint, every --validation-steps:

- a validation loss (--validation-loss): the photos and class images, each noised at fixed timesteps with fixed noise
  (the same at every validation, from generators of their own, so the training stream draws what it always drew),
  written to validation/loss.csv and plotted to loss.png;
- scores (--validation-prompts): each prompt drawn and the samples scored (the world's reader on the world model,
  DINO / CLIP-I / CLIP-T with --dino-model / --clip-model) into validation/scores.csv and scores.png;
- --keep-best METRIC: the trained weights of the best-scoring step are kept in validation/best.safetensors, and
  `finish` makes them the run's LoRA.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save

from .. import atomic
from ..config import LOWER_IS_BETTER, TrainConfig
from ..errors import UsageError
from ..families import text_encoders
from ..sampling import draw_each, eval_mode, grid
from .batches import device_generator
from .checkpoint import trainable
from .loss import weighted_mse

FOLDER = "validation"
BEST = "best.safetensors"
TIMESTEPS_PER_EXAMPLE = 4  # each held example is noised at 4 fixed levels: a steadier curve than one level
MAX_CLASS_EXAMPLES = 8


def validation_generator(seed: int, kind: str, index: int) -> torch.Generator:
    """Held examples draw from streams of their own, apart from every training example's (batches.example_generator)."""
    stream = {"instance": 0, "class": 1}[kind]
    return torch.Generator().manual_seed(((seed * 1_000_003 + index) * 2 + stream) ^ (0x7A11D << 40))


def read_prompts(path: str) -> list[str]:
    """--validation-prompts: one prompt a line; blank lines and lines starting with # are skipped."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise UsageError(f"--validation-prompts {path}: cannot read it ({why}); pass a text file, one prompt a line") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise UsageError(
            f"--validation-prompts {path}: holds no prompt; write one a line, e.g. 'a photo of sks dog on the beach'"
        )
    return prompts


# ---------------------------------------------------------------- the loss


def held_examples(run) -> list[dict]:
    """The held examples, made once: every photo (centre crop, its bucket) and up to 8 class images (square), each
    with its latents, noise and timesteps repeated at TIMESTEPS_PER_EXAMPLE fixed levels."""
    if "held" in run.validation:
        return run.validation["held"]
    cfg, ex, objective = run.cfg, run.examples, run.base.family.objective
    square = (cfg.resolution, cfg.resolution)
    picks = [("instance", i, ex.sizes[i]) for i in range(len(ex.sets["instance"]))]
    picks += [("class", i, square) for i in range(min(MAX_CLASS_EXAMPLES, len(ex.sets["class"])))]
    held = []
    for which, idx, size in picks:
        mean, std, geometry, _ = ex.encode_image(ex.sets[which][idx], size, True, None, False)
        own = [validation_generator(cfg.seed, which, idx * TIMESTEPS_PER_EXAMPLE + k) for k in range(TIMESTEPS_PER_EXAMPLE)]
        gens = [device_generator(g, mean.device) for g in own]
        k = TIMESTEPS_PER_EXAMPLE
        sample = torch.cat([mean + std * torch.randn(mean.shape, generator=g, device=mean.device).to(mean.dtype) for g in gens])
        latents = ex.family.normalised_latents(ex.vae, sample)
        noise = torch.cat([torch.randn((1, *latents.shape[1:]), generator=g, device=latents.device) for g in gens])
        timesteps = objective.timesteps(run.noise_scheduler, gens, latents, cfg)
        held.append(
            {
                "which": which,
                "latents": latents,
                "noise": noise.to(latents.dtype),
                "timesteps": timesteps,
                "geometry": geometry.repeat(k, 1),
                "prompt": ex.prompt(which, idx),
            }
        )
    run.validation["held"] = held
    return held


@torch.no_grad()
def validation_loss(run) -> dict[str, float]:
    """The mean loss of the held photos and, with class images, of the held class images, as the training loss weighs
    each example (min-SNR, the flow families' weighting); the denoiser as it is now, without dropout."""
    cfg, family = run.cfg, run.base.family
    objective, scheduler = family.objective, run.noise_scheduler
    denoiser = getattr(run.pipe, family.denoiser)  # the module itself: no data-parallel hooks on the main process alone
    encoders = list(text_encoders(run.pipe, family).values())
    held = held_examples(run)
    losses: dict[str, list[float]] = {"instance": [], "class": []}
    with eval_mode(denoiser, *encoders), run.accelerator.autocast():
        for item in held:
            latents, noise, t = item["latents"], item["noise"], item["timesteps"]
            k = latents.shape[0]
            embedded = family.encode_prompts(run.examples.tokenizers, encoders, [item["prompt"]] * k, latents.device)
            prompts = run.examples.with_guidance(embedded)
            noisy = objective.noise(scheduler, latents, noise, t)
            pred = family.denoise(denoiser, noisy, t, prompts, item["geometry"])
            target = objective.target(scheduler, latents, noise, t)
            weights = objective.weights(scheduler, t, cfg)
            losses[item["which"]].append(float(weighted_mse(pred.float(), target.float(), weights)))
    return {f"{which}_loss": sum(v) / len(v) for which, v in losses.items() if v}


# ---------------------------------------------------------------- the scores


def draw_prompts(run, step: int) -> dict[str, list]:
    """--num-validation-images samples of each validation prompt, with the run's sampling settings (the same seeds at
    every validation); saved as one grid a prompt a row, validation/prompts-step-NNNNNN.png."""
    cfg = run.cfg
    images = draw_each(
        run.pipe,
        run.validation["prompts"],
        cfg.num_validation_images,
        cfg.seed,
        cfg.sample_steps,
        cfg.guidance_scale,
        cfg.resolution,
        cfg.sample_batch_size,
        autocast=run.accelerator.autocast,
    )
    rows = [grid(imgs, cols=len(imgs)) for imgs in images.values()]
    atomic.save_image(grid(rows, cols=1), run.out / FOLDER / f"prompts-step-{step:06d}.png")
    return images


def score_checkpoint(run, images: dict[str, list], step: int) -> dict[str, float]:
    """Scores of the samples of each validation prompt, by the scorer the caller of `train` handed in
    (evaluation.validation_scores builds the tool's own)."""
    score = run.validation["score"]  # train refuses --validation-prompts without one
    folder = run.out / FOLDER / f"samples-step-{step:06d}"
    return score(images, folder, [p.path for p in run.examples.sets["instance"]])


# ---------------------------------------------------------------- keeping the best


def better(metric: str, value: float, than: float | None) -> bool:
    if than is None or math.isnan(than):
        return not math.isnan(value)
    return value < than if metric in LOWER_IS_BETTER else value > than


def best_so_far(out: Path) -> dict | None:
    """{"step", "metric", "value"} of the weights kept in validation/best.safetensors, or None."""
    path = out / FOLDER / BEST
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("kept", "null"))


def forget(out: Path) -> None:
    """Drop the kept weights of an earlier run in `out`."""
    (out / FOLDER / BEST).unlink(missing_ok=True)


def keep_if_best(run, step: int, scores: dict[str, float]) -> None:
    """--keep-best: the trained weights of `step` into validation/best.safetensors when its score beats the kept one."""
    metric = run.cfg.keep_best
    if metric not in scores:
        print(f"warning: --keep-best {metric}: no {metric} score at step {step} (do the validation prompts ask for it?)",
              flush=True)  # fmt: skip
        return
    kept = best_so_far(run.out)
    if kept is not None and kept["step"] < step and not better(metric, scores[metric], kept["value"]):
        return
    tensors = {k: p.detach().cpu().contiguous() for k, p in trainable(run.named).items()}
    record = {"step": step, "metric": metric, "value": scores[metric]}
    atomic.write_bytes(run.out / FOLDER / BEST, save(tensors, {"kept": json.dumps(record)}))


def restore_best(run) -> dict | None:
    """The kept step's weights into the trained modules (after the last checkpoint is saved); its record, or None."""
    kept = best_so_far(run.out)
    if kept is None:
        return None
    tensors = load_file(str(run.out / FOLDER / BEST))
    with torch.no_grad():
        for k, p in trainable(run.named).items():
            p.copy_(tensors[k])
    return kept


# ---------------------------------------------------------------- the files


def record(path: Path, step: int, values: dict[str, float]) -> list[dict]:
    """Add the row of `step` to the CSV at `path`, dropping rows of this step and later (a resumed run writes them
    again); returns every row."""
    rows: list[dict] = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) < step]
    rows.append({"step": step, **values})
    columns = ["step", *dict.fromkeys(k for r in rows for k in r if k != "step")]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, text.getvalue())
    return rows


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def plot(rows: list[dict], path: Path, title: str, marked: int | None = None) -> None:
    """A line chart of every column of `rows` against their step (PIL only), with the step `marked` as a dashed line."""
    width, height, left, right, top, bottom = 640, 360, 64, 170, 34, 40
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "step"))
    points = {c: [(int(r["step"]), float(r[c])) for r in rows if r.get(c) not in ("", None)] for c in columns}
    values = [v for ps in points.values() for _, v in ps if math.isfinite(v)]
    steps = [int(r["step"]) for r in rows]
    pen.text((left, 10), title, fill="black")
    if not values:
        atomic.save_image(image, path)
        return
    lo, hi = min(values), max(values)
    lo, hi = (lo - 0.5, hi + 0.5) if hi == lo else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    s0, s1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(step: float, value: float) -> tuple[float, float]:
        return left + (step - s0) / (s1 - s0) * plot_w, top + (hi - value) / (hi - lo) * plot_h

    pen.rectangle((left, top, left + plot_w, top + plot_h), outline="#888")
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        y = xy(s0, value)[1]
        pen.line((left - 4, y, left, y), fill="#888")
        pen.text((4, y - 6), f"{value:.4g}", fill="black")
    for step in sorted(set(steps)) if len(set(steps)) <= 10 else [s0, (s0 + s1) // 2, s1]:
        x = xy(step, lo)[0]
        pen.line((x, top + plot_h, x, top + plot_h + 4), fill="#888")
        pen.text((x - 10, top + plot_h + 8), str(step), fill="black")
    pen.text((left + plot_w // 2 - 10, height - 16), "step", fill="black")
    if marked is not None and s0 <= marked <= s1:
        x = xy(marked, lo)[0]
        for y in range(top, top + plot_h, 8):
            pen.line((x, y, x, min(y + 4, top + plot_h)), fill="black")
    for i, (column, ps) in enumerate(points.items()):
        colour = COLOURS[i % len(COLOURS)]
        line = [xy(s, v) for s, v in ps if math.isfinite(v)]
        if len(line) > 1:
            pen.line(line, fill=colour, width=2)
        for x, y in line:
            pen.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        y = top + 14 * i
        pen.line((width - right + 10, y + 6, width - right + 30, y + 6), fill=colour, width=2)
        pen.text((width - right + 36, y), column.replace("_", " "), fill="black")
    atomic.save_image(image, path)


def validate(run, step: int) -> dict:
    """This step's validation: the loss (--validation-loss), the scores of the prompts (--validation-prompts) and, with
    --keep-best, the weights if they score best so far. Returns {"loss": ..., "scores": ...} of what was made."""
    cfg, folder, made = run.cfg, run.out / FOLDER, {}
    kept = None
    if cfg.validation_loss:
        losses = validation_loss(run)
        plot(record(folder / "loss.csv", step, losses), folder / "loss.png", "validation loss (fixed noise and timesteps)")
        made["loss"] = losses
    if cfg.validation_prompts and step > 0:
        scores = score_checkpoint(run, draw_prompts(run, step), step)
        rows = record(folder / "scores.csv", step, scores)
        if cfg.keep_best:
            keep_if_best(run, step, scores)
            kept = best_so_far(run.out)
        plot(rows, folder / "scores.png", "validation scores" + (f" (kept: best {cfg.keep_best})" if cfg.keep_best else ""),
             kept["step"] if kept else None)  # fmt: skip
        made["scores"] = scores
    return made


def wanted(cfg: TrainConfig) -> bool:
    return cfg.validation_loss or bool(cfg.validation_prompts)
