"""`dreambooth bench`: the DreamBooth paper's protocol on a DreamBench-layout dataset.

For each subject: train a LoRA (or reuse one), draw N images for each of its 25 prompts and for the class
prompt `a <class>` (for PRES), score them against the subject's photos; then one row per subject, the mean
and the paper's reference rows (bench.md / .csv / .json / .html). A subject whose scores.json was made
with the same settings is not run again; a trained LoRA and finished prompt folders are reused, so an
interrupted run picks up where it stopped.

    OUT/<subject>/lora/                 the trained LoRA (train's output folder)
    OUT/<subject>/images/NN-<prompt>/   image-000.png ... and config.yaml (as `dreambooth generate` writes)
    OUT/<subject>/class/                images of the class prompt, for PRES
    OUT/<subject>/scores.json           evaluate's scores for the subject, and the settings that made them
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tqdm.auto import tqdm

from .. import atomic, threads
from ..config import BenchConfig, EvaluateConfig, GenerateConfig, Method, TrainConfig, check_bench
from ..errors import UsageError
from ..fields import all_names, fields_of, from_dict, read_yaml, saved_settings, settings, to_dict, to_yaml
from ..generation import trained
from ..methods.textual_inversion import LORA_OPTIONS
from ..methods.tokens import new_tokens
from ..training.photos import slug
from ..training.setup import MODEL_DECIDES
from . import bench_report, dreambench
from .evaluate import CACHE_NAME, Evaluator
from .inputs import find_images

BENCH_OWNED = (
    "model",
    "instance_dir",
    "instance_prompt",
    "output_dir",
    "with_prior_preservation",
    "class_prompt",
    "class_dir",
    "num_class_images",
    "max_steps",
    "seed",
    "resume",
    "threads",
    "method",
)


def train_settings(path: str, model: str) -> TrainConfig:
    """Training settings for every subject: the defaults for `model` (no model-card samples) <- --train-config."""
    data = {}
    if path:
        data = read_yaml(path, flag="--train-config")
        owned = {name for f in fields_of(TrainConfig) if f.name in BENCH_OWNED for name in all_names(f)}
        for key in data:
            if str(key) in owned:
                raise UsageError(
                    f"--train-config {path}: '{key}' is set by the bench for each subject; "
                    f"remove it (bench flags: --model, --max-steps, --num-class-images, --seed, ...)"
                )
    return from_dict(TrainConfig, {"model": model, "num_samples": 0, **data}, source=f"--train-config {path}")


def pick_subjects(cfg: BenchConfig, benchmark: dreambench.Benchmark, dataset: Path) -> list[str]:
    present = dreambench.subjects_present(benchmark, dataset)
    if not cfg.subjects:
        if not present:
            raise UsageError(f"--dataset {cfg.dataset}: none of the subjects in {dreambench.PROMPTS_FILE} has a folder there")
        return present
    for s in cfg.subjects:
        if s not in benchmark.classes:
            raise UsageError(f"--subjects {s}: not in {dreambench.PROMPTS_FILE}; choose from {', '.join(benchmark.classes)}")
        if s not in present:
            raise UsageError(f"--subjects {s}: no folder {dataset / s} with its photos; add it or leave the subject out")
    return list(dict.fromkeys(cfg.subjects))


def method_of(cfg: BenchConfig) -> Method:
    """The one method a bench of one method runs (`run_bench` runs each of several as a bench of its own)."""
    assert len(cfg.method) == 1, cfg.method
    return Method(cfg.method[0])


def prompt_identifier(cfg: BenchConfig, base: TrainConfig) -> str:
    """What the prompts say for the subject: the identifier, or the new tokens of textual inversion / pivotal tuning
    (`<s0><s1>`), which CLIP-T then deletes as it deletes an identifier."""
    if not method_of(cfg).new_tokens:
        return cfg.identifier
    return new_tokens(base.token_abstraction, 1, base.tokens_per_subject).written()


def eval_config(cfg: BenchConfig) -> EvaluateConfig:
    return EvaluateConfig(dino_model=cfg.dino_model, clip_model=cfg.clip_model, lpips_net=cfg.lpips_net)


def settings_of(cfg: BenchConfig, base: TrainConfig) -> dict:
    """Everything that changes a subject's scores; a finished subject is reused only when they are equal."""
    keep = (
        "num_prompts",
        "images_per_prompt",
        "model",
        "identifier",
        "max_steps",
        "with_prior_preservation",
        "num_class_images",
        "loras",
        "steps",
        "guidance",
        "seed",
        "dino_model",
        "clip_model",
        "lpips_net",
    )
    train_extra = {k: v for k, v in to_dict(base).items() if k not in BENCH_OWNED}
    return {**{k: getattr(cfg, k) for k in keep}, "method": method_of(cfg).value, "train": train_extra}


# ---------------------------------------------------------------- one subject

NOT_COMPARED = (
    "output_dir",
    "instance_dir",
    "class_dir",
    "resume",
    "checkpoint_every",
    "checkpoints_total_limit",
    "num_samples",
    "validation_prompt",
    "validation_steps",
    "num_validation_images",
    "validation_loss",
    "validation_prompts",
    "dino_model",
    "clip_model",
    "sample_steps",
    "threads",  # how fast, not what: the count a run used is no reason to train it again
)


def differences(saved: dict, wanted: TrainConfig) -> list[str]:
    """Settings in which a LoRA folder's config.yaml differs from the training the bench would run."""
    out = []
    for key, value in to_dict(wanted).items():
        if key in NOT_COMPARED or key not in saved or (key in MODEL_DECIDES and not value):
            continue  # left empty, the model decides it; train writes the value it used
        if saved[key] != value:
            out.append(f"{key} {saved[key]!r}, not {value!r}")
    return out


def given_lora(cfg: BenchConfig, subject: str) -> Path | None:
    if cfg.loras:
        given = Path(cfg.loras).expanduser() / subject
        if trained(given):
            return given
    return None


def subject_train_config(cfg: BenchConfig, base: TrainConfig, subject: str, noun: str, dataset: Path, out: Path) -> TrainConfig:
    """What the bench trains for `subject` (of class `noun`) into OUT/<subject>/lora. Textual inversion trains no LoRA:
    the LoRA settings of --train-config are left out of it (the model's own defaults stay)."""
    method = method_of(cfg)
    if method is Method.TEXTUAL_INVERSION:
        plain = settings(TrainConfig, model=cfg.model, method=method.value)
        base = dataclasses.replace(base, export="", **{name: getattr(plain, name) for name in LORA_OPTIONS})
    word = base.token_abstraction if method.new_tokens else cfg.identifier
    return dataclasses.replace(
        base,
        model=cfg.model,
        method=method,
        instance_dir=str(dataset / subject),
        instance_prompt=f"a photo of {word} {noun}",
        output_dir=str(out / subject / "lora"),
        with_prior_preservation=cfg.with_prior_preservation,
        # Class images come from train's shared bank (keyed by model, prompt, sampler, seed): one set per class noun.
        class_prompt=f"a photo of a {noun}" if cfg.with_prior_preservation else "",
        num_class_images=cfg.num_class_images,
        max_steps=cfg.max_steps,
        seed=cfg.seed,
        threads=cfg.threads,
    )


def train_subject(cfg: BenchConfig, base: TrainConfig, subject: str, noun: str, dataset: Path, out: Path) -> Path:
    """The subject's LoRA: from --loras, from an earlier run with the same settings, or trained now."""
    given = given_lora(cfg, subject)
    if given is not None:
        return given
    lora_dir = out / subject / "lora"
    wanted = subject_train_config(cfg, base, subject, noun, dataset, out)
    done = trained(lora_dir)
    started = (lora_dir / "checkpoints").is_dir() and any((lora_dir / "checkpoints").iterdir())
    if done or started:
        changed = differences(saved_settings(lora_dir), wanted)
        if changed:
            raise UsageError(
                f"--output-dir {cfg.output_dir}: {lora_dir} was trained with other settings ({'; '.join(changed[:3])}); "
                f"delete that folder to train it again, or pass another --output-dir"
            )
        if done:
            return lora_dir
    from ..training.loop import train
    from .validation_scores import validation_scorer

    return train(dataclasses.replace(wanted, resume=started), score=validation_scorer(wanted))


def image_files(folder: Path, n: int) -> list[Path]:
    return [folder / f"image-{i:03d}.png" for i in range(n)]


def drawn(folder: Path, prompt: str, cfg: BenchConfig, lora: Path) -> bool:
    """The folder holds the images these settings would draw (its config.yaml says how they were made)."""
    saved = saved_settings(folder)
    wanted = {
        "model": cfg.model,
        "lora": str(lora),
        "prompt": prompt,
        "num_images": cfg.images_per_prompt,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "seed": cfg.seed,
    }
    return all(saved.get(k) == v for k, v in wanted.items()) and all(
        p.is_file() for p in image_files(folder, cfg.images_per_prompt)
    )


def draw_missing(cfg: BenchConfig, lora: Path, jobs: list[tuple[Path, str]], bar) -> None:
    """Draw the (folder, prompt) jobs not done yet, loading the base model and LoRA once for all of them."""
    pending = [(folder, prompt) for folder, prompt in jobs if not drawn(folder, prompt, cfg, lora)]
    bar.update((len(jobs) - len(pending)) * cfg.images_per_prompt)
    if not pending:
        return
    import torch

    from ..generation import load_run
    from ..models import load_pipeline, native_resolution
    from ..sampling import device_precision, draw

    pipe = load_pipeline(cfg.model)
    load_run(pipe, lora, model=cfg.model)
    if torch.cuda.is_available():
        pipe.to("cuda")
    resolution = native_resolution(pipe)
    for folder, prompt in pending:
        (folder / "config.yaml").unlink(missing_ok=True)  # written last: its presence means the folder is complete
        images = draw(
            pipe,
            prompt,
            cfg.images_per_prompt,
            cfg.seed,
            cfg.steps,
            cfg.guidance,
            resolution,
            cfg.batch_size,
            on_batch=lambda b: bar.update(len(b)),
            autocast=device_precision(pipe.device),
        )
        for image, path in zip(images, image_files(folder, cfg.images_per_prompt)):
            atomic.save_image(image, path)
        settings = GenerateConfig(
            model=cfg.model,
            lora=str(lora),
            prompt=prompt,
            num_images=cfg.images_per_prompt,
            steps=cfg.steps,
            guidance=cfg.guidance,
            seed=cfg.seed,
            resolution=resolution,
            batch_size=cfg.batch_size,
            output_dir=str(folder),
        )
        atomic.write_text(folder / "config.yaml", to_yaml(settings))
    del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_subject(
    cfg: BenchConfig,
    base: TrainConfig,
    benchmark: dreambench.Benchmark,
    subject: str,
    dataset: Path,
    out: Path,
    evaluator: Evaluator,
    settings: dict,
    bar,
) -> dict:
    sdir, noun = out / subject, benchmark.classes[subject]
    real = find_images(dataset / subject, "--dataset")
    bar.set_description(f"{subject}: training")
    lora = train_subject(cfg, base, subject, noun, dataset, out)
    identifier = prompt_identifier(cfg, base)
    prompts = benchmark.prompts(subject, identifier)[: cfg.num_prompts]
    jobs = [(sdir / "images" / f"{i:02d}-{slug(p)}", p) for i, p in enumerate(prompts)]
    class_job = (sdir / "class", f"a {noun}")
    bar.set_description(f"{subject}: drawing")
    draw_missing(cfg, lora, [*jobs, class_job], bar)

    bar.set_description(f"{subject}: scoring")
    by_image = {path: prompt for folder, prompt in jobs for path in image_files(folder, cfg.images_per_prompt)}
    class_images = image_files(class_job[0], cfg.images_per_prompt)
    result = evaluator.score(real, list(by_image), sdir / "images", by_image, identifier, class_images)
    evaluator.cache.save()
    result.update(
        subject=subject,
        class_noun=noun,
        kind=benchmark.kind(subject),
        class_prompt=class_job[1],
        real=str(dataset / subject),
        settings=settings,
    )
    bench_report.subject_images(sdir, real, [image_files(folder, 1)[0] for folder, _ in jobs])
    atomic.write_text(sdir / "scores.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return bench_report.row(result)


def finished(sdir: Path, settings: dict) -> dict | None:
    """The subject's summary row when its scores.json was made with these settings, else None."""
    try:
        result = json.loads((sdir / "scores.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("settings") != settings:
        return None
    return bench_report.row(result)


# ---------------------------------------------------------------- the run


def bench(cfg: BenchConfig) -> Path:
    check_bench(cfg)
    with threads.workload(cfg.threads):  # its trainings and drawings stay this workload
        if len(cfg.method) == 1:
            return run_bench(cfg)
        return run_methods(cfg)


def run_methods(cfg: BenchConfig) -> Path:
    """Each method as a bench of its own into OUT/<method>/ (its own reports there), then OUT/bench.* with a column
    block per method. The methods share the class-image bank, so prior preservation draws its class images once."""
    out = Path(cfg.output_dir).expanduser()
    each = {m: dataclasses.replace(cfg, method=[m], output_dir=str(out / m)) for m in cfg.method}
    made_with = {m: job_of(one).settings for m, one in each.items()}  # every method's inputs checked before any trains
    by_method: dict[str, list[dict]] = {}
    for m, one in each.items():
        print(f"bench: --method {m}", flush=True)
        run_bench(one)
        by_method[m] = json.loads((out / m / "bench.json").read_text(encoding="utf-8"))["subjects"]
        bench_report.write_methods(out, by_method, made_with)
    print(bench_report.methods_markdown_table(by_method))
    print(f"bench: {len(cfg.method)} methods -> {out / 'bench.md'}, bench.csv, bench.json, bench.html", flush=True)
    return out


@dataclasses.dataclass
class Job:
    """What every subject of a bench shares, read and checked once."""

    dataset: Path
    benchmark: dreambench.Benchmark
    subjects: list[str]
    base: TrainConfig
    out: Path
    settings: dict

    def sizes(self, cfg: BenchConfig) -> dict[str, int]:
        """Images each subject draws: its prompts' and the class prompt's."""
        n = cfg.images_per_prompt
        return {s: (len(self.benchmark.prompts(s, cfg.identifier)[: cfg.num_prompts]) + 1) * n for s in self.subjects}


def job_of(cfg: BenchConfig) -> Job:
    dataset = Path(cfg.dataset).expanduser()
    benchmark = dreambench.read(dataset)
    subjects = pick_subjects(cfg, benchmark, dataset)
    base = train_settings(cfg.train_config, cfg.model)
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {cfg.output_dir}: is a file; pass a folder path")
    if cfg.loras and not Path(cfg.loras).expanduser().is_dir():
        raise UsageError(f"--loras {cfg.loras}: no such folder; pass the folder that holds one LoRA folder per subject")
    return Job(dataset, benchmark, subjects, base, out, settings_of(cfg, base))


def bench_subject(cfg: BenchConfig, subject: str) -> dict:
    """One subject's summary row, in a process of its own (a fleet task): its own scorer, and its own embeddings
    cache (OUT/<subject>/), which no other process writes at the same time."""
    job = job_of(dataclasses.replace(cfg, subjects=[subject]))
    row = finished(job.out / subject, job.settings)
    if row is not None:
        return row
    evaluator = Evaluator(eval_config(cfg), job.out / subject / CACHE_NAME)
    evaluator.load()
    with tqdm(total=job.sizes(cfg)[subject], desc=subject, unit="img") as bar:
        return run_subject(cfg, job.base, job.benchmark, subject, job.dataset, job.out, evaluator, job.settings, bar)


def run_bench(cfg: BenchConfig) -> Path:
    job = job_of(cfg)
    dataset, benchmark, subjects, base, out = job.dataset, job.benchmark, job.subjects, job.base, job.out
    evaluator = Evaluator(eval_config(cfg), out / CACHE_NAME)
    evaluator.load()  # a missing scoring model fails now, not after the first subject has trained
    settings, sizes = job.settings, job.sizes(cfg)
    rows = []
    bar = tqdm(total=sum(sizes.values()), desc="bench", unit="img")
    try:
        for subject in subjects:
            row = finished(out / subject, settings)
            if row is not None:
                bar.update(sizes[subject])
            else:
                row = run_subject(cfg, base, benchmark, subject, dataset, out, evaluator, settings, bar)
            rows.append(row)
            bench_report.write(out, rows, settings)  # the reports follow the run: an interrupted run still has them
    finally:
        bar.close()
    print(bench_report.markdown_table(rows))
    print(f"bench: {len(rows)} subjects -> {out / 'bench.md'}, bench.csv, bench.json, bench.html", flush=True)
    return out
