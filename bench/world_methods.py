"""The DreamBooth paper's comparison in the world: for each subject, one row per method, trained at the demo's
settings and scored as `dreambooth demo` scores (the world's reader, the demo's sampling seeds, 32 samples per
prompt): subject fidelity, context fidelity, subject in context, class drift, class diversity, training time (the
training loop alone) and the size of what training writes.

    python bench/world_methods.py                                   # all five subjects, every method (hours on a CPU)
    python bench/world_methods.py --subjects dog --steps 20 --samples 2 --seeds 1 --class-images 4   # a smoke run
    python bench/world_methods.py --table world_methods.json        # the table of a finished run

Methods (`--methods`, default all but the last two):

- `base`: the base model, untrained (`a photo of sks dog`, once per subject: the samples do not depend on a seed);
- `textual-inversion`: new tokens alone, `a photo of <s0><s1> dog`, no prior preservation (the paper's baseline),
  the tokens at `--ti-lr` (Gal et al.'s 5e-3; the world's LoRA rate 1e-3 moves them too little);
- `dreambooth`: the demo's settings (prior preservation in every context, masked loss, ...), identifier `sks`;
- `dreambooth-no-prior`: the same without prior preservation;
- `pivotal`: new tokens for the first half of the steps beside the demo's LoRA, with its prior preservation;
- `dreambooth-strong-prior`: the demo's settings with a word the base knows as identifier (`--strong-word`, default
  `white`: `dreambooth identifier --model world --measure` finds it drawn differently from the class);
- `pivotal-fast-tokens`: pivotal tuning with its tokens (and the text encoder's LoRA, which shares the rate) at
  `--ti-lr`, as textual inversion's tokens, instead of the demo's 1e-3;
- `dreambooth-measured-identifier`: the demo's settings with the identifier `dreambooth identifier --model world
  --measure --class-noun <subject> --count 8` lists first (the weakest prior of 8 rare candidates, by how the base
  draws them, then by the text encoders' shift) in place of `sks`.

The dog and the cat train on `--seeds` photo sets and training seeds each (`write_photos(..., seed=s)`, train's
`--seed s`; default 3), the other subjects on seed 0; the table gives the mean and, over several seeds, the
spread (sample standard deviation). Each finished run is appended to `--runs` (JSON lines) and not run again, so an
interrupted comparison picks up where it stopped; `--json` gets the summary. Runs of a class share the class-image
bank: only the first pays for its class images (outside the training time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchlib import loadavg, machine_info

from dreambooth.training.progress import PROGRESS_NAME
from dreambooth.world import CLASS_CAPTION_DROPOUT, CLASS_IMAGES, DEMO_STEPS, MODEL, TEXT_ENCODER_SCALE, folder
from dreambooth.world.commands import CLASSES
from dreambooth.world.demo import demo_settings, drawn_word, write_photos

METHODS = (
    "base",
    "textual-inversion",
    "dreambooth",
    "dreambooth-no-prior",
    "pivotal",
    "dreambooth-strong-prior",
    "dreambooth-measured-identifier",
    "pivotal-fast-tokens",
)
TITLES = {
    "base": "base model",
    "textual-inversion": "textual inversion",
    "dreambooth": "DreamBooth, prior preservation",
    "dreambooth-no-prior": "DreamBooth, no prior preservation",
    "pivotal": "pivotal tuning",
    "dreambooth-strong-prior": "DreamBooth, strong-prior identifier",
    "dreambooth-measured-identifier": "DreamBooth, measured identifier",
    "pivotal-fast-tokens": "pivotal tuning, tokens at 5e-3",
}
COLUMNS = ("subject_fidelity", "context_fidelity", "subject_in_context", "class_drift", "class_diversity")
SEEDED = ("dog", "cat")  # the subjects trained on several photo sets and seeds


def train_config(
    method: str, cls: str, work: Path, steps: int, seed: int, word: str, ti_lr: float, class_images: int = CLASS_IMAGES
):
    """The demo's settings for `method` (training into work/lora, photos in work/subject); no validation during
    training (the demo's validation draws curves; the LoRA is the last step either way)."""
    no_prior = method in ("textual-inversion", "dreambooth-no-prior")
    cfg = demo_settings(
        cls,
        work,
        steps,
        class_contexts=not no_prior,
        class_caption_dropout=0.0 if no_prior else CLASS_CAPTION_DROPOUT,
        validations=1,
        class_images=class_images,
        method=method.removesuffix("-fast-tokens") if method.startswith(("textual-inversion", "pivotal")) else "dreambooth",
    )
    cfg = dataclasses.replace(
        cfg, seed=seed, overwrite=True, validation_loss=False, validation_prompts="", with_prior_preservation=not no_prior
    )
    if method == "textual-inversion":
        cfg = dataclasses.replace(cfg, learning_rate=ti_lr)
    elif method == "pivotal-fast-tokens":
        cfg = dataclasses.replace(cfg, text_encoder_lr=ti_lr)
    elif method in ("dreambooth-strong-prior", "dreambooth-measured-identifier"):
        cfg = dataclasses.replace(cfg, instance_prompt=f"a photo of {word} {cls}")
    return cfg


def identifier_of(method: str, word: str) -> str:
    """What the scored prompts say for the subject (`word`: the strong-prior or the measured identifier)."""
    if method.startswith(("textual-inversion", "pivotal")):
        return drawn_word(method.removesuffix("-fast-tokens"))  # the new tokens, <s0><s1>
    return word if method in ("dreambooth-strong-prior", "dreambooth-measured-identifier") else drawn_word("dreambooth")


def measured_word(pipe, cls: str) -> str:
    """The first row of `dreambooth identifier --model world --measure --class-noun <cls> --count 8` (its default
    seed and samples)."""
    from dreambooth.config import IdentifierConfig
    from dreambooth.families import family_of
    from dreambooth.training import identifier_prior
    from dreambooth.world.identifier_draws import measure_draws

    d = IdentifierConfig()
    rows = identifier_prior.measure(pipe, family_of(pipe), cls, 8, d.seed, [], measure_draws(pipe, d.samples))
    return rows[0]["word"]


def written_bytes(out: Path) -> int:
    """The weights a run leaves: the LoRA (diffusers' file) and the new tokens' embeddings."""
    from dreambooth.lora.files import WEIGHT_NAME
    from dreambooth.methods import embeddings

    files = [out / WEIGHT_NAME, embeddings.find(out)]
    return sum(f.stat().st_size for f in files if f is not None and f.is_file())


def run_one(method: str, cls: str, seed: int, args) -> dict:
    from dreambooth.generation import load_run
    from dreambooth.models import load_pipeline
    from dreambooth.training.loop import train
    from dreambooth.world import readers
    from dreambooth.world.scores import sample_and_score

    work = Path(args.work) / f"{cls}-{method}-seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    line: dict = {"subject": cls, "method": method, "seed": seed, "steps": args.steps, "samples": args.samples}
    pipe = load_pipeline(MODEL)
    word = args.strong_word
    if method == "dreambooth-measured-identifier":
        word = line["identifier"] = measured_word(pipe, cls)
    if method != "base":
        write_photos(cls, work / "subject", seed=seed)
        cfg = train_config(method, cls, work, args.steps, seed, word, args.ti_lr, args.class_images)
        start = time.perf_counter()
        lora_dir = train(cfg)
        line["job_s"] = round(time.perf_counter() - start, 1)
        last = json.loads((lora_dir / PROGRESS_NAME).read_text(encoding="utf-8").splitlines()[-1])
        line["train_s"] = last["seconds"]
        line["file_bytes"] = written_bytes(lora_dir)
        load_run(pipe, lora_dir, text_encoder_scale=TEXT_ENCODER_SCALE, model=MODEL)
    reader, _ = readers.load(folder() / "reader")
    scores, _ = sample_and_score(pipe, reader, cls, args.samples, identifier=identifier_of(method, word))
    line.update(scores=scores, machine=machine_info(), load_after=loadavg())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return line


def done_runs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(s) for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def key(line: dict) -> tuple:
    return (line["subject"], line["method"], line["seed"], line["steps"], line["samples"])


def spread(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summary(lines: list[dict]) -> list[dict]:
    """One row per (subject, method): each score's mean and spread over the seeds, training time and file size."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for line in lines:
        groups.setdefault((line["subject"], line["method"]), []).append(line)
    rows = []
    for (cls, method), runs in sorted(groups.items(), key=lambda g: (CLASSES.index(g[0][0]), METHODS.index(g[0][1]))):
        row: dict = {"subject": cls, "method": method, "seeds": sorted(r["seed"] for r in runs)}
        for name in (*COLUMNS, "train_s", "file_bytes"):
            values = [found for r in runs if (found := (r["scores"] if name in COLUMNS else r).get(name)) is not None]
            if values:
                row[name], row[f"{name}_spread"] = spread(values)
        rows.append(row)
    return rows


def cell(row: dict, name: str) -> str:
    if name not in row:
        return "–"
    if name == "train_s":
        text = f"{row[name]:.0f} s"
    elif name == "file_bytes":
        text = f"{row[name] / 1024:.0f} KiB"
    else:
        text = f"{row[name]:.2f}"
    return text + (f" ± {row[f'{name}_spread']:.2f}" if row.get(f"{name}_spread") is not None and name in COLUMNS else "")


def table(rows: list[dict]) -> str:
    head = "| subject | method | seeds | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " | training | file |\n"
    head += "|---|---|---|" + "---:|" * (len(COLUMNS) + 2) + "\n"
    body = [
        f"| {r['subject']} | {TITLES[r['method']]} | {len(r['seeds'])} | "
        + " | ".join(cell(r, c) for c in (*COLUMNS, "train_s", "file_bytes"))
        + " |"
        for r in rows
    ]
    return head + "\n".join(body) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", nargs="+", default=list(CLASSES), choices=CLASSES)
    p.add_argument("--methods", nargs="+", default=list(METHODS[:6]), choices=METHODS, help="default: all but the last two")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"training steps (default: the demo's {DEMO_STEPS})")
    p.add_argument("--samples", type=int, default=32, help="samples per prompt (default: 32, as the demo)")
    p.add_argument("--seeds", type=int, default=3, help="photo sets / training seeds of the dog and the cat (default: 3)")
    p.add_argument("--strong-word", default="white", help="the strong-prior identifier (default: white)")
    p.add_argument("--class-images", type=int, default=CLASS_IMAGES, help=f"class images (default: the demo's {CLASS_IMAGES})")
    p.add_argument("--ti-lr", type=float, default=5e-3, help="textual inversion's learning rate (default: 5e-3)")
    p.add_argument("--work", default="world-methods-runs", help="folder for the runs (each removed after scoring)")
    p.add_argument("--keep", action="store_true", help="keep each run's folder")
    p.add_argument("--runs", default="world_methods.jsonl", help="JSON lines of the finished runs (appended; reused)")
    p.add_argument("--json", default="world_methods.json", help="the summary: runs and the table's rows")
    p.add_argument("--table", metavar="JSON", help="print the table of a summary file and exit")
    args = p.parse_args()
    if args.table:
        sys.stdout.write(table(json.loads(Path(args.table).read_text(encoding="utf-8"))["rows"]))
        return
    if args.steps < 1 or args.samples < 1 or args.seeds < 1 or args.class_images < 1:
        p.error("--steps, --samples, --seeds and --class-images must be at least 1")
    runs = Path(args.runs)
    lines = done_runs(runs)
    done = {key(line) for line in lines}
    for cls in args.subjects:
        for method in args.methods:
            seeds = [0] if method == "base" or cls not in SEEDED else list(range(args.seeds))
            for seed in seeds:
                wanted = {"subject": cls, "method": method, "seed": seed, "steps": args.steps, "samples": args.samples}
                if key(wanted) in done:
                    continue
                print(f"world_methods: {cls}, {TITLES[method]}, seed {seed}", flush=True)
                line = run_one(method, cls, seed, args)
                with runs.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(line) + "\n")
                lines.append(line)
    chosen = [
        line
        for line in lines
        if line["subject"] in args.subjects and line["method"] in args.methods
        and (line["steps"], line["samples"]) == (args.steps, args.samples)
    ]  # fmt: skip
    rows = summary(chosen)
    command = "python bench/world_methods.py " + " ".join(sys.argv[1:])
    Path(args.json).write_text(json.dumps({"command": command, "runs": chosen, "rows": rows}, indent=1) + "\n")
    sys.stdout.write(table(rows))


if __name__ == "__main__":
    main()
