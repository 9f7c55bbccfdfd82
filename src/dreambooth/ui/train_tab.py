"""The Train tab's actions: check photos, start / stop / resume a training job, report its progress."""

from __future__ import annotations

import dataclasses
import html
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import atomic
from ..config import TrainConfig, check_train
from ..errors import UsageError
from ..fields import settings
from . import controls, pictures, runs
from .jobs import FINISHED, Jobs, clock, status_line
from .uploads import MAX_PHOTOS, MIN_PHOTOS, Rejected, check_photo, folder_sources, mask_of, shown_name, store_photos


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


MEASURED_POOL = 12  # rare candidates the page measures for one suggestion; it proposes the weakest


def measurable(model: str) -> bool:
    """The page measures identifiers on the embedded base models, built in seconds; a real model's encoders would
    mean a download or gigabytes loaded at a click, so there the page names the command that measures them."""
    from ..models import EMBEDDED

    entry = EMBEDDED.get(model)
    return entry is not None and entry.build is not None


@lru_cache(maxsize=1)
def measuring_pipeline(model: str):
    from ..families import family_of
    from ..models import load_pipeline

    pipe = load_pipeline(model)
    return pipe, family_of(pipe)


def suggest_measured(seed: int, model: str, class_noun: str, current: str = "") -> tuple[str, str]:
    """'Suggest another': (the identifier, what the page says of it). On an embedded base model, the candidate of
    `MEASURED_POOL` whose prompt the text encoders move least from the class prompt (the paper's §4.1: an identifier
    with a prior is unlearnt in training), measured beside the identifier in the box; elsewhere an unmeasured
    candidate and the command that measures them."""
    from ..training import identifier_prior as P

    noun = " ".join(class_noun.split())
    if not noun:
        return suggest(seed), "Type the class noun to measure identifiers against it"
    command = f"`dreambooth identifier --measure --model {shlex.quote(model)} --class-noun {shlex.quote(noun)}`"
    if not measurable(model):
        ranks = f"{html.escape(command, quote=False)} ranks identifiers by {html.escape(model)}'s prior"
        return suggest(seed), f"Not measured here: {ranks}"
    pipe, family = measuring_pipeline(model)
    pool = [w for w, _ in candidates_of(pipe, family, seed)]
    if not pool:  # a byte-level vocabulary has no rare whole-word tokens: the paper's `sks`
        return "sks", f"{html.escape(model)}'s vocabulary has no rare one-token words to measure; `sks` it is"
    mine = current.strip().lower()
    words = [*pool, mine] if len(mine.split()) == 1 and mine not in pool else pool
    ratios = P.relative_shifts(pipe, family, words, noun)
    ranked = sorted(pool, key=lambda w: ratios[w])
    best = ranked[0]
    shown = " · ".join(f"**{w}** {ratios[w]:.2f}" for w in ranked[:4])
    text = (
        f"Measured on {html.escape(model)} for *{html.escape(noun)}*: how far each word moves "
        f"*{html.escape(P.prompts('X', noun)[0])}* from *{html.escape(P.prompts('a', noun)[1])}*, in multiples of "
        f"what rare tokens measure (over {P.STRONG}: a prior that training must unlearn). Weakest of "
        f"{len(pool)}: {shown}"
    )
    if mine in ratios and mine not in pool:
        flag = " (a prior)" if ratios[mine] > P.STRONG else ""
        text += f"  \nThe one you had, **{html.escape(mine)}**: {ratios[mine]:.2f}{flag}"
    return best, text


def candidates_of(pipe, family, seed: int) -> list[tuple[str, int]]:
    from ..families import tokenizers
    from ..training.identifier import candidates

    return candidates(tokenizers(pipe, family)[0], count=MEASURED_POOL, seed=int(seed))


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
    """What the page says right after photos are dropped: each unusable file by name, and the count (masks,
    name.mask.png beside name.jpg, are counted apart)."""
    files = files or []
    problems, good, masks = [], 0, 0
    for f in files:
        try:
            check_photo(Path(f))
            if mask_of(Path(f).name):
                masks += 1
            else:
                good += 1
        except Rejected as e:
            problems.append(f"Warning: {html.escape(shown_name(Path(f).name))} {e}; it will be skipped")
    lines = [
        f"{good} usable photo{'s' if good != 1 else ''}"
        + (f" (at most {MAX_PHOTOS} are used)" if good > MAX_PHOTOS else "")
        + (f", {masks} mask{'s' if masks != 1 else ''}" if masks else "")
    ]
    if files and good < MIN_PHOTOS:
        lines.append(f"3–5 photos of the subject give a better likeness than {good}")
    return "  \n".join(problems + lines) if files else ""


def proposed_model() -> str:
    """The base the page starts with: without a GPU, the world (it draws real scenes on a CPU and learns a subject in
    minutes); with one, the small test model, until a hub base is chosen."""
    import torch

    return "tiny" if torch.cuda.is_available() else "world"


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def page_settings(model: str, class_noun: str = "") -> dict:
    """The controls' values (controls.SHOWN, by field name) for a base model: on the world with one of its classes,
    exactly what `dreambooth demo` trains (world.demo.demo_settings: masks, class prompts in every context, class caption
    dropout, validation...), the class prompts and validation prompts as the text of their files; else the model's
    recommended settings (an embedded model's) or the general defaults."""
    from ..world import MODEL
    from ..world.render import CLASSES

    model, cls = (model or "").strip() or "tiny", (class_noun or "").strip()
    texts = dict.fromkeys(controls.TEXT_FILES, "")
    if model == MODEL and cls in CLASSES:
        from ..world.demo import demo_settings

        with tempfile.TemporaryDirectory() as tmp:  # demo_settings writes its prompt files into its output folder
            cfg = demo_settings(cls, Path(tmp))
            for name in ("class_prompts_file", "validation_prompts"):
                texts[name] = Path(getattr(cfg, name)).read_text(encoding="utf-8") if getattr(cfg, name) else ""
    else:
        cfg = settings(TrainConfig, model=model)
    values = {name: controls.shown_value(cfg, name) for name in controls.SHOWN}
    values.update(texts)
    if not values["class_prompt"] and cls:
        values["class_prompt"] = f"a photo of a {cls}"
    return values


def defaults_for(model: str, class_noun: str = "") -> tuple:
    """The controls' values (all but the model's own) when a base model is chosen: its settings (`page_settings`)."""
    values = page_settings(model, class_noun)
    return tuple(values[name] for name in controls.SHOWN if name != "model")


def class_settings(model: str, class_noun: str) -> tuple:
    """When the class noun is typed: its class prompt; on the world, its class prompts in contexts and validation prompts
    as well (elsewhere those are left as they are)."""
    import gradio as gr

    from ..world import MODEL

    values = page_settings(model, class_noun)
    if (model or "").strip() != MODEL:
        return values["class_prompt"], gr.skip(), gr.skip()
    return values["class_prompt"], values["class_prompts_file"], values["validation_prompts"]


def implied_rates(optimizer: str, model: str, lr, te_lr) -> tuple:
    """The learning rates when the optimiser changes: Prodigy's 1.0 (TrainConfig.implied), and back from it the base
    model's own."""
    implied = TrainConfig.implied({"optimizer": optimizer})
    if implied:
        return implied["learning_rate"], implied["text_encoder_lr"]
    if max(float(lr or 0), float(te_lr or 0)) >= 1:  # Prodigy's: no rate for AdamW
        cfg = settings(TrainConfig, model=(model or "").strip() or "tiny")
        return cfg.learning_rate, cfg.text_encoder_lr
    return lr, te_lr


def sample_subject(workspace: Path, subject: str) -> tuple:
    """The world's subject as `dreambooth demo` renders it: (its five photos and their masks, class noun, identifier,
    base model, message, then the demo's settings for it, one value per control but the model). The photos are
    rendered (the same each time) into WORKSPACE/samples/<class>/."""
    from ..world.demo import write_photos
    from ..world.render import HELD_OUT

    colour, pattern = HELD_OUT[subject]  # the page's list offers only these five
    written = sorted(write_photos(subject, workspace / "samples" / subject).glob(f"{subject}-*.png"))
    message = (
        f"The world's sample subject: a {colour} {pattern} {subject}, which its base model never drew, with its masks; "
        "the settings are the demo's. Press Start."
    )
    return ([str(p) for p in written], subject, "sks", "world", message, *defaults_for("world", subject))


def start(workspace: Path, jobs: Jobs, files, folder, class_noun, identifier, *values, photo_roots: Sequence[Path] = ()) -> str:
    """The Start button: `values` are the controls' values in controls.SHOWN's order (see `start_with`)."""
    if len(values) != len(controls.SHOWN):
        return f"Error: the page sent {len(values)} settings, not {len(controls.SHOWN)}; reload it"
    return start_with(workspace, jobs, files, folder, class_noun, identifier, dict(zip(controls.SHOWN, values)),
                      photo_roots=photo_roots)  # fmt: skip


def start_with(
    workspace: Path,
    jobs: Jobs,
    files,
    folder,
    class_noun,
    identifier,
    shown: dict,
    *,
    photo_roots: Sequence[Path] = (),
) -> str:
    """Validate everything that needs no model, store the photos and the settings' text files, queue the job; the
    message for the page. `shown`: the controls' values by field name (controls.SHOWN, each TEXT_FILES field as the
    text of its file). The config is built as the command line builds it from the same values as flags.

    The folder field, and the subjects' folders, read only the workspace and `photo_roots` (the --photo-root folders)."""
    class_noun, identifier, folder = (class_noun or "").strip(), (identifier or "").strip(), (folder or "").strip()
    shown = dict(shown)
    texts = {name: str(shown.pop(name, "") or "").strip() for name in controls.TEXT_FILES}
    several = bool(texts["subjects"])
    page: dict = {"output_dir": "-"}  # placeholders: the real folders are named once the photos are in
    if several:  # each subject names its own photos, prompt and class prompt
        shown["class_prompt"], texts["class_prompts_file"] = "", ""
    else:
        if not class_noun:
            return "Error: Name the subject's class, e.g. dog"
        if len(identifier.split()) != 1:
            return "Error: the identifier must be one word, e.g. the suggested one"
        if str(shown.get("method") or "dreambooth") != "dreambooth":  # new tokens take the identifier's place
            identifier = str(shown.get("token_abstraction") or "").strip() or identifier
        page.update(instance_prompt=instance_prompt(identifier, class_noun), instance_dir="-")
        shown["class_prompt"] = str(shown.get("class_prompt") or "").strip() or f"a photo of a {class_noun}"
    try:
        cfg = controls.config({**shown, **{name: "-" if text else "" for name, text in texts.items()}}, **page)
        check_train(cfg)
    except (UsageError, TypeError, ValueError) as e:
        return f"Error: {e}"
    roots = [workspace, *photo_roots]
    sources = [(Path(f).name, Path(f)) for f in files or []]
    problems: list[str] = []
    if folder and not several:
        found, problems = folder_sources(folder, roots)
        sources += found
    if not sources and not several:
        return (
            "  \n".join(f"Error: {html.escape(p)}" for p in problems)
            or "Error: Add 3–10 photos of the subject, or name a folder of them"
        )
    name = runs.new_run_name(workspace, class_noun or "subjects")
    upload_dir = workspace / "uploads" / name
    written: dict[str, Any] = {}
    for field_name, text in texts.items():
        if text:
            path = workspace / runs.SETTINGS / name / controls.TEXT_FILES[field_name]
            atomic.write_text(path, text + "\n")
            written[field_name] = str(path)
    try:
        if several:
            written["subjects"], problems = store_subjects(Path(written["subjects"]), upload_dir, roots, cfg)
            stored: list[Path] = []
        else:
            stored, rejected = store_photos(sources, upload_dir)
            problems += rejected
            if not stored:
                raise UsageError("No usable photo, training not started")
    except UsageError as e:
        shutil.rmtree(upload_dir, ignore_errors=True)
        shutil.rmtree(workspace / runs.SETTINGS / name, ignore_errors=True)
        notes = "".join(f"  \nWarning: {html.escape(p)}" for p in problems)
        return f"Error: {html.escape(str(e))}{notes}"
    notes = "".join(f"  \nWarning: {html.escape(p)}" for p in problems)
    cfg = dataclasses.replace(cfg, **written, output_dir=str(workspace / "runs" / name))
    if not several:
        cfg.instance_dir = str(upload_dir)
    jobs.submit(name, cfg, problems)
    if several:
        return f"{name}: queued with {len(read_subjects(cfg))} subjects{notes}"
    return f"{name}: queued with {len(stored)} photo{'s' if len(stored) != 1 else ''}{notes}"


def read_subjects(cfg: TrainConfig) -> list:
    from ..training.subjects import read_subjects as read

    return read(cfg.subjects, cfg.with_prior_preservation, cfg.num_class_images)


def store_subjects(path: Path, upload_dir: Path, roots: Sequence[Path], cfg: TrainConfig) -> tuple[str, list[str]]:
    """The page's subjects file with each subject's photos copied as the photos field's are (from a folder in `roots`
    only) to upload_dir/subject-N; the file is rewritten to name the copies, then read as training will read it.
    Returns its path and the files left out; UsageError for a subject that cannot be used."""
    import yaml

    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise UsageError("Several subjects: not readable YAML; write a list of subjects, each with instance_dir, "
                         "instance_prompt and class_prompt") from None  # fmt: skip
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError("Several subjects: write a YAML list of subjects, each with instance_dir, instance_prompt and "
                         "class_prompt")  # fmt: skip
    problems: list[str] = []
    for n, entry in enumerate(entries, 1):
        found, missing = folder_sources(str(entry.get("instance_dir") or ""), roots)
        if not found:
            raise UsageError(f"Several subjects: subject {n}: " + ("; ".join(missing) or "no photos in its instance_dir"))
        stored, rejected = store_photos(found, upload_dir / f"subject-{n}")
        problems += missing + rejected
        entry["instance_dir"] = str(upload_dir / f"subject-{n}")
    atomic.write_text(path, yaml.safe_dump(entries, sort_keys=False, allow_unicode=True))
    read_subjects(dataclasses.replace(cfg, subjects=str(path)))
    return str(path), problems


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


CURVES = (("loss.png", "validation loss (fixed noise and timesteps)"), ("scores.png", "validation scores"))


def validation_pictures(run_dir: Path, workspace: Path | None) -> list[tuple[str, str]]:
    """(picture, caption) of the run's validation images (--validation-prompt) and of its newest grid of the validation
    prompts (a prompt a row), small ones enlarged."""
    found = sorted(run_dir.glob("validation/step-*.png")) + sorted(run_dir.glob("validation/prompts-step-*.png"))[-1:]
    shown = []
    for p in found:
        step = int(p.stem.rsplit("-", 1)[1])
        caption = f"validation prompts, step {step}" if p.name.startswith("prompts-") else f"step {step}"
        shown.append((str(pictures.enlarged(p, workspace) if workspace else p), caption))
    return shown


def curves_html(run_dir: Path) -> tuple[str, list]:
    """The validation curves (validation/loss.png, scores.png) as the run writes them, and a key that changes with them."""
    found = [(run_dir / "validation" / name, title) for name, title in CURVES if (run_dir / "validation" / name).is_file()]
    key = [(str(p), p.stat().st_mtime_ns) for p, _ in found]
    figures = "".join(
        f"<figure><img alt='{html.escape(title)}' src='{file_url(p)}?v={stamp}'><figcaption>{html.escape(title)}"
        f"</figcaption></figure>"
        for (p, title), (_, stamp) in zip(found, key)
    )
    return (f"<div class='curves'>{figures}</div>" if figures else ""), key


def file_url(path: Path) -> str:
    # served by the page's file route, which serves only the workspace (see server.allowed_paths)
    return "/gradio_api/file=" + html.escape(str(path))


def progress(jobs: Jobs, shown: list, workspace: Path | None = None) -> tuple:
    """Polled by a timer: (status HTML, validation images or no change, queue, what the gallery and curves show,
    validation curves or no change)."""
    import gradio as gr

    from ..training import progress as run_progress

    job, all_jobs = current(jobs)
    others = "".join(outside_runs(workspace, all_jobs))
    if job is None:
        status = f"<div class='train-status'>No training yet.{others}</div>"
        return status, gr.skip(), "", shown, gr.skip()
    line = status_line(job, jobs.place(job.id))
    value, top = (job.step, max(job.max_steps, 1))
    bar = f"<progress value='{value}' max='{top}'></progress>"
    notes = "".join(f"<div class='note'>{html.escape(n)}</div>" for n in job.notes)
    run_dir = Path(job.cfg.output_dir)
    curve = loss_curve(run_progress.read(run_dir), job.max_steps)
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
    images = validation_pictures(run_dir, workspace)
    curves, stamps = curves_html(run_dir)
    key = [job.id, *(p for p, _ in images), *(f"{p}:{t}" for p, t in stamps)]
    if key == shown:
        return status, gr.skip(), queue, shown, gr.skip()
    return status, images, queue, key, curves


def finished_runs(jobs: Jobs) -> int:
    """How many jobs have ended: the Generate and Evaluate run lists refresh when it changes."""
    return sum(1 for j in jobs.snapshot() if j.state in FINISHED)
