"""The Train tab's actions: check photos, start / stop / resume a training job, report its progress."""

from __future__ import annotations

import html
import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from ..config import TrainConfig, check_train
from ..errors import UsageError
from ..fields import settings
from . import runs
from .jobs import FINISHED, Jobs, clock, status_line
from .uploads import MAX_PHOTOS, MIN_PHOTOS, Rejected, check_photo, folder_sources, shown_name, store_photos


@lru_cache(maxsize=1)
def clip_tokenizer():
    # The families but Qwen-Image read prompts with CLIP's BPE vocabulary, so the packaged tokenizer answers for
    # them without downloading one.
    from ..families.clip import load_clip_tokenizer

    return load_clip_tokenizer()


def suggest(seed: int) -> str:
    """A rare one-token identifier, as `dreambooth identifier` lists them; another one for each seed."""
    from ..training.identifier import candidates

    found = candidates(clip_tokenizer(), count=1, seed=int(seed))
    return found[0][0] if found else "sks"


def instance_prompt(identifier: str, class_noun: str) -> str:
    return f"a photo of {identifier.strip()} {class_noun.strip()}".strip()


def tokens_markdown(identifier: str, class_noun: str) -> str:
    """How the instance prompt tokenises; a warning when the identifier is not one token."""
    from ..training.identifier import tokenise

    prompt = instance_prompt(identifier, class_noun)
    parts = []
    for word, tokens in tokenise(clip_tokenizer(), prompt):
        pieces = " + ".join(f"`{t}`({i})" for t, i in tokens)
        parts.append(f"**{html.escape(word)}** → {pieces}")
    text = f"Instance prompt: *{html.escape(prompt)}*  \n" + " · ".join(parts)
    ident = identifier.strip()
    if ident:
        n = len(tokenise(clip_tokenizer(), ident)[0][1]) if len(ident.split()) == 1 else 0
        if n != 1:
            text += f"  \nWarning: the identifier should be one rare token; **{html.escape(ident)}** is not"
    return text


def check_uploads(files: list[str] | None) -> str:
    """What the page says right after photos are dropped: each unusable file by name, and the count."""
    files = files or []
    problems, good = [], 0
    for f in files:
        try:
            check_photo(Path(f))
            good += 1
        except Rejected as e:
            problems.append(f"Warning: {html.escape(shown_name(Path(f).name))} {e}; it will be skipped")
    lines = [
        f"{good} usable photo{'s' if good != 1 else ''}" + (f" (at most {MAX_PHOTOS} are used)" if good > MAX_PHOTOS else "")
    ]
    if files and good < MIN_PHOTOS:
        lines.append(f"3–5 photos of the subject give a better likeness than {good}")
    return "  \n".join(problems + lines) if files else ""


def proposed_model() -> str:
    """The base the page starts with: without a GPU, the world (it draws real scenes on a CPU and learns a subject in
    minutes); with one, the small test model, until a hub base is chosen."""
    import torch

    return "tiny" if torch.cuda.is_available() else "world"


def sample_subject(workspace: Path, subject: str) -> tuple:
    """The world's subject as `dreambooth demo` renders it: (its five photos, class noun, identifier, base model,
    message). The photos are rendered (the same each time) into WORKSPACE/samples/<class>/."""
    from ..training.photos import MASK_SUFFIX
    from ..world.demo import write_photos
    from ..world.render import HELD_OUT

    colour, pattern = HELD_OUT[subject]  # the page's list offers only these five
    written = write_photos(subject, workspace / "samples" / subject).glob(f"{subject}-*.png")
    photos = sorted(p for p in written if not p.name.endswith(MASK_SUFFIX))  # the masks beside them are not photos
    message = f"The world's sample subject: a {colour} {pattern} {subject}, which its base model never drew. Press Start."
    return [str(p) for p in photos], subject, "sks", "world", message


def defaults_for(model: str) -> tuple:
    """The settings fields' values for `model`: an embedded model's recommended ones, else the general defaults
    (steps, rank, learning rates, resolution, text-encoder LoRA, class images)."""
    cfg = settings(TrainConfig, model=(model or "").strip())
    return (cfg.max_steps, cfg.rank, cfg.learning_rate, cfg.text_encoder_lr, cfg.resolution, cfg.train_text_encoder,
            cfg.num_class_images)  # fmt: skip


def start(
    workspace: Path,
    jobs: Jobs,
    files,
    folder,
    class_noun,
    identifier,
    model,
    prior,
    class_prompt,
    num_class_images,
    steps,
    rank,
    lr,
    te_lr,
    resolution,
    train_te,
    validation_every,
    kohya,
    *,
    photo_roots: Sequence[Path] = (),
) -> str:
    """Validate everything that needs no model, store the photos, queue the job; the message for the page.

    The folder field reads only the workspace and `photo_roots` (the --photo-root folders)."""
    class_noun, identifier, folder = (class_noun or "").strip(), (identifier or "").strip(), (folder or "").strip()
    if not class_noun:
        return "Error: Name the subject's class, e.g. dog"
    if len(identifier.split()) != 1:
        return "Error: the identifier must be one word, e.g. the suggested one"
    prompt = instance_prompt(identifier, class_noun)
    try:
        every = int(validation_every or 0)
        cfg = settings(  # over an embedded model's recommended settings, as the command line does
            TrainConfig,
            model=(model or "").strip() or "tiny",
            instance_prompt=prompt,
            with_prior_preservation=bool(prior),
            class_prompt=(class_prompt or "").strip() or f"a photo of a {class_noun}",
            num_class_images=int(num_class_images),
            max_steps=int(steps),
            rank=int(rank),
            learning_rate=float(lr),
            text_encoder_lr=float(te_lr),
            resolution=int(resolution or 0),
            train_text_encoder=bool(train_te),
            validation_prompt=prompt if every > 0 else "",
            validation_steps=max(every, 1),
            num_validation_images=2,
            export="" if kohya else "none",  # empty: the family's file for ComfyUI / A1111 / Forge, where it has one
            instance_dir="-",
            output_dir="-",
        )  # placeholders: the real folders are named once the photos are in
        check_train(cfg)
    except (UsageError, TypeError, ValueError) as e:
        return f"Error: {e}"
    sources = [(Path(f).name, Path(f)) for f in files or []]
    problems: list[str] = []
    if folder:
        found, problems = folder_sources(folder, [workspace, *photo_roots])
        sources += found
    if not sources:
        return (
            "  \n".join(f"Error: {html.escape(p)}" for p in problems)
            or "Error: Add 3–10 photos of the subject, or name a folder of them"
        )
    name = runs.new_run_name(workspace, class_noun)
    upload_dir = workspace / "uploads" / name
    stored, rejected = store_photos(sources, upload_dir)
    problems += rejected
    notes = "".join(f"  \nWarning: {html.escape(p)}" for p in problems)
    if not stored:
        shutil.rmtree(upload_dir, ignore_errors=True)
        return f"Error: No usable photo, training not started{notes}"
    cfg.instance_dir, cfg.output_dir = str(upload_dir), str(workspace / "runs" / name)
    jobs.submit(name, cfg, problems)
    return f"{name}: queued with {len(stored)} photo{'s' if len(stored) != 1 else ''}{notes}"


def current(jobs: Jobs):
    """The job the page shows: the running one, else the newest."""
    all_jobs = jobs.snapshot()
    running = [j for j in all_jobs if j.state == "running"]
    shown = running or all_jobs
    return (shown[-1] if shown else None), all_jobs


def stop(jobs: Jobs) -> str:
    job, all_jobs = current(jobs)
    waiting = [j for j in all_jobs if j.state in ("running", "queued")]
    if not waiting:
        return "Nothing is training"
    target = next((j for j in waiting if j.state == "running"), waiting[-1])
    jobs.stop(target.id)
    return (
        f"Stopping {target.name} after this step (a checkpoint is saved)"
        if target.state == "running"
        else f"Cancelled {target.name}"
    )


def resume(jobs: Jobs) -> str:
    stopped = [j for j in jobs.snapshot() if j.state in ("stopped", "failed")]
    if not stopped:
        return "No stopped run to resume"
    job = jobs.resume(stopped[-1].id)
    return f"{job.name}: resumes from its newest checkpoint" if job else "No stopped run to resume"


def loss_curve(lines: list[dict], max_steps: int, width: int = 360, height: int = 120) -> str:
    """The loss the run read (every 10 steps) as an inline SVG line over the whole run's steps; '' before the first."""
    if not lines:
        return ""
    losses = [e["loss"] for e in lines]
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    top = max(max_steps, lines[-1]["step"], 1)
    pad = 4
    points = " ".join(
        f"{pad + (width - 2 * pad) * e['step'] / top:.1f},{pad + (height - 2 * pad) * (high - e['loss']) / span:.1f}"
        for e in lines
    )
    return (
        f"<svg class='loss' viewBox='0 0 {width} {height}' role='img' aria-label='loss curve' "
        f"data-points='{len(lines)}' preserveAspectRatio='none'>"
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='none' stroke='#ddd'/>"
        f"<polyline fill='none' stroke='#2563eb' stroke-width='1.5' points='{points}'/></svg>"
        f"<div class='axis'>loss {low:.4f} – {high:.4f} over steps 0–{top}</div>"
    )


def outside_runs(workspace: Path | None, jobs: list) -> list[str]:
    """One status line per run training in the workspace that no job of this page started (the command line's)."""
    if workspace is None:
        return []
    from ..training import progress as run_progress

    mine = {Path(j.cfg.output_dir).resolve() for j in jobs}
    shown = []
    for run_dir in runs.active_runs(workspace):
        if run_dir.resolve() in mine:
            continue
        lines = run_progress.read(run_dir)
        first, last = lines[0], lines[-1]
        left = ""
        if last["step"] > first["step"]:  # the rate between the first and the last loss read: loading left out
            rate = (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])
            left = f" · {clock(rate * (int(last['max_steps']) - last['step']))} left"
        name = run_dir.relative_to(workspace).as_posix()
        shown.append(
            f"<div class='outside' data-run='{html.escape(name)}'><div class='line'>{html.escape(name)} (started outside "
            f"the page): step {last['step']}/{last['max_steps']} · loss {last['loss']:.4f}{left}</div>"
            f"{loss_curve(lines, int(last['max_steps']))}</div>"
        )
    return shown


def progress(jobs: Jobs, shown: list, workspace: Path | None = None) -> tuple:
    """Polled by a timer: (status HTML, validation images or no change, queue, what the gallery shows)."""
    import gradio as gr

    from ..training import progress as run_progress

    job, all_jobs = current(jobs)
    others = "".join(outside_runs(workspace, all_jobs))
    if job is None:
        status = f"<div class='train-status'>No training yet.{others}</div>"
        return status, gr.skip(), "", shown
    line = status_line(job, jobs.place(job.id))
    value, top = (job.step, max(job.max_steps, 1))
    bar = f"<progress value='{value}' max='{top}'></progress>"
    notes = "".join(f"<div class='note'>{html.escape(n)}</div>" for n in job.notes)
    curve = loss_curve(run_progress.read(Path(job.cfg.output_dir)), job.max_steps)
    status = (
        f"<div class='train-status' data-state='{job.state}'>{bar}<div class='line'>{html.escape(line)}</div>{notes}"
        f"{curve}{others}</div>"
    )
    rows = []
    for j in reversed(all_jobs[-10:]):
        place = jobs.place(j.id)
        where = f"place {place}" if place else (f"{j.step}/{j.max_steps}" if j.state not in ("queued", "cancelled") else "")
        rows.append(f"| {j.id} | {j.name} | {j.state} | {where} |")
    queue = "| job | run | state | step / place |\n|---|---|---|---|\n" + "\n".join(rows)
    images = [p for p in job.validations if Path(p).is_file()]
    key = [job.id, *images]
    gallery = gr.skip() if key == shown else [(p, Path(p).stem) for p in images]
    return status, gallery, queue, key


def finished_runs(jobs: Jobs) -> int:
    """How many jobs have ended: the Generate and Evaluate run lists refresh when it changes."""
    return sum(1 for j in jobs.snapshot() if j.state in FINISHED)
