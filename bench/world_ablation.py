"""One run of an ablation in the world: train a LoRA on a subject at the demo's settings plus the given ones, score
it the way `dreambooth demo` does (same seeds, N samples per prompt), and append a line to a JSON-lines file.
`--table FILE` prints the lines as the Markdown tables of bench/RESULTS.md.

    python bench/world_ablation.py --subject dog --name "masked loss, W=0" --set masked_loss=true --out runs.jsonl
    python bench/world_ablation.py --subject dog --name "class prompts in contexts" --class-contexts --out runs.jsonl
    python bench/world_ablation.py --subject dog --name base --base-only --out runs.jsonl
    python bench/world_ablation.py --subject cat --name "the demo's" --demo-settings --text-encoder-scale 0.8 --text-encoder-scale 0.6
    python bench/world_ablation.py --subject dog --name "DoRA" --set dora=true --max-steps 200 --no-scores --out times.jsonl
    python bench/world_ablation.py --table runs.jsonl

Runs of the same subject share the class-image bank (one per class prompt), so only the first run of a subject pays
for its class images; `train_s` is the training loop alone (from its progress.jsonl), `job_s` all of `train`, `s_per_step` is `train_s / steps`.
Two runs at once on a 2-core machine: OMP_NUM_THREADS=1 each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import yaml
from benchlib import loadavg, machine_info

from dreambooth.training.progress import PROGRESS_NAME
from dreambooth.training.validation import best_so_far
from dreambooth.world import DEMO_STEPS, MODEL, TEXT_ENCODER_SCALE, folder
from dreambooth.world.demo import demo_settings, demo_train_config, write_class_prompts, write_photos
from dreambooth.world.readers import read
from dreambooth.world.scores import sample_and_score

COLUMNS = ("subject_fidelity", "context_fidelity", "subject_in_context", "class_drift", "class_diversity")


def value(text: str):
    """A --set value as YAML reads it, with 3e-4 a number (YAML 1.1 reads it as a string)."""
    v = yaml.safe_load(text)
    try:
        return float(v) if isinstance(v, str) else v
    except ValueError:
        return v


def run(args) -> dict:
    from dreambooth.lora.files import load_lora
    from dreambooth.models import load_pipeline
    from dreambooth.training.loop import train
    from dreambooth.world import readers

    work = Path(args.work) / f"{args.subject}-{args.name.replace(' ', '_').replace('/', '_')}"
    shutil.rmtree(work, ignore_errors=True)
    photos = write_photos(args.subject, work / "subject")
    more = {k: value(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.class_contexts:
        more["class_prompts_file"] = str(write_class_prompts(args.subject, work / "class-prompts.txt"))
    reader, _ = readers.load(folder() / "reader")
    line = {"name": args.name, "subject": args.subject, "settings": more, "samples": args.samples, "prior": not args.no_prior}
    if not args.base_only:
        if args.demo_settings:  # the demo's own config (validated as it validates), then --set
            cfg = demo_settings(args.subject, work, args.max_steps, keep_best=args.keep_best)
            cfg = dataclasses.replace(cfg, overwrite=True, with_prior_preservation=not args.no_prior, **more)
        else:
            cfg = demo_train_config(
                args.subject, photos, work / "lora", args.max_steps, prior=not args.no_prior, overwrite=True, **more
            )
        start = time.perf_counter()
        lora_dir = train(cfg)
        line["job_s"] = round(time.perf_counter() - start, 1)  # class images (when new) and the exports included
        last = json.loads((lora_dir / PROGRESS_NAME).read_text(encoding="utf-8").splitlines()[-1])
        line["train_s"] = last["seconds"]  # the training loop alone
        line["steps"] = args.max_steps
        line["s_per_step"] = round(line["train_s"] / args.max_steps, 4)
        kept = best_so_far(lora_dir)
        line["kept_step"] = kept["step"] if kept else args.max_steps
        weights = lora_dir / "pytorch_lora_weights.safetensors"
        line["file_bytes"] = weights.stat().st_size if weights.is_file() else None
    scales = args.text_encoder_scale or [TEXT_ENCODER_SCALE]
    lines = []
    for scale in scales:  # one training, scored at each text-encoder strength
        one = dict(line, text_encoder_scale=scale, scores={})
        if len(scales) > 1:
            one["name"] = f"{args.name}, text encoder at {scale:g}"
        pipe = load_pipeline(MODEL)  # afresh for each strength: a LoRA loads once into a pipeline
        if not args.base_only:
            load_lora(pipe, lora_dir, text_encoder_scale=scale, model=MODEL)
        if not args.no_scores:
            scores, images = sample_and_score(pipe, reader, args.subject, args.samples)
            one["scores"] = scores
            # what the class samples look like: where the diversity went
            looks = Counter(f"{r['colour']} {r['pattern']}" for r in read(reader, images["class"]) if r["cls"] == args.subject)
            one["class_looks"] = dict(looks.most_common())
        lines.append(one)
    for one in lines:
        one["machine"] = machine_info()
        one["load_after"] = loadavg()
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(one) + "\n")
        print(json.dumps(one), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return lines[-1]


def table(path: str) -> str:
    lines = [json.loads(s) for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]
    head = "| subject | run | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " | s / step | file |\n"
    head += "|---" * (len(COLUMNS) + 4) + "|\n"
    rows = []
    for r in lines:
        s = r["scores"]
        size = f"{r['file_bytes'] / 1024:.0f} KiB" if r.get("file_bytes") else "–"
        step = f"{r['s_per_step']:.3f}" if r.get("s_per_step") else "–"
        rows.append(f"| {r['subject']} | {r['name']} | " + " | ".join(f"{s[c]:.2f}" if c in s else "–" for c in COLUMNS)
                    + f" | {step} | {size} |")  # fmt: skip
    return head + "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subject", default="dog", choices=tuple(sorted({"dog", "cat", "teapot", "vase", "backpack"})))
    p.add_argument("--name", default="default", help="the run's name in the table")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a train setting (YAML value)")
    p.add_argument("--class-contexts", action="store_true", help="prior preservation from the class prompt in each context")
    p.add_argument(
        "--demo-settings",
        action="store_true",
        help="start from the demo's settings (masks, class prompts, validation...), not the recommended ones",
    )
    p.add_argument(
        "--keep-best",
        default="",
        metavar="METRIC",
        help="with --demo-settings: keep the validation step with the best METRIC, e.g. subject_in_context",
    )
    p.add_argument("--no-prior", action="store_true", help="no prior preservation")
    p.add_argument("--base-only", action="store_true", help="score the base model, train nothing")
    p.add_argument("--max-steps", type=int, default=DEMO_STEPS)
    p.add_argument("--no-scores", action="store_true", help="time the training only (e.g. --max-steps 200 on an idle machine)")
    p.add_argument("--text-encoder-scale", type=float, action="append", metavar="S",
                   help=f"text-encoder LoRA strength when sampling (default {TEXT_ENCODER_SCALE}); repeat it to score "
                   "one training at several, a line each")  # fmt: skip
    p.add_argument("--samples", type=int, default=32, help="samples per prompt (default: 32, as the demo)")
    p.add_argument("--work", default="ablation-runs", help="folder for the runs (each removed after scoring)")
    p.add_argument("--keep", action="store_true", help="keep the run's folder")
    p.add_argument("--out", default="world_ablation.jsonl")
    p.add_argument("--table", metavar="FILE", help="print FILE's runs as a Markdown table and exit")
    args = p.parse_args()
    if args.keep_best and not args.demo_settings:
        p.error("--keep-best validates as the demo does: add --demo-settings")
    if args.table:
        sys.stdout.write(table(args.table))
        return
    run(args)


if __name__ == "__main__":
    main()
