"""Baseline: diffusers' examples/dreambooth/train_dreambooth_lora.py on the same job as
`bench/train_speed.py` setting (a), timed the same way (see benchlib.py).

Nothing of diffusers is kept in this repository: pass the path of that script (from a diffusers
checkout of your choice), the python of an environment where it runs (it imports torchvision,
tensorboard, ...) and a diffusers folder of the tiny model; the folder is written with
bench/save_tiny_model.py (by --our-python, which has `dreambooth`) when it does not exist yet.

    python bench/diffusers_baseline.py --script PATH/train_dreambooth_lora.py \
        --python ENV/bin/python --model-dir tiny-model [--quick] [--json out.json]

The job is the reference command of the performance issue:

    ENV/bin/python train_dreambooth_lora.py --pretrained_model_name_or_path MODEL_DIR \
        --instance_data_dir <bundled dog photos> --instance_prompt "a photo of sks dog" \
        --class_data_dir WORK/class --class_prompt "a photo of a dog" --output_dir WORK/out \
        --resolution 64 --train_batch_size 1 --with_prior_preservation --num_class_images 100 \
        --train_text_encoder --rank 16 --max_train_steps 300 --learning_rate 5e-4 --seed 0

(the script's other settings at their defaults: no validation prompt, so no sample images; class
images with the pipeline's own scheduler and step count; TensorBoard logging).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib as B  # noqa: E402
from train_speed import CLASS_PROMPT, INSTANCE_PROMPT, print_training, summarise_training  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--script", required=True, help="path of diffusers' examples/dreambooth/train_dreambooth_lora.py")
    p.add_argument("--python", required=True, help="interpreter of an environment in which that script runs")
    p.add_argument(
        "--model-dir",
        required=True,
        help="diffusers folder of the model: the tiny one is written there if missing; "
        "for SD 1.5's shape write it with bench/save_sd15_model.py",
    )
    p.add_argument(
        "--our-python", default=sys.executable, help="interpreter with `dreambooth`, to write --model-dir (default: this one)"
    )
    B.add_run_flags(p)
    p.add_argument("extra", nargs="*", help="more arguments for the script, after --")
    args = p.parse_args()
    B.settle_run_flags(args)

    model_dir = Path(args.model_dir)
    if not (model_dir / "model_index.json").is_file():
        subprocess.run([args.our_python, str(HERE / "save_tiny_model.py"), str(model_dir)], check=True)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="diffusers-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""

    machine = B.machine_info()
    versions = B.probe_python(args.python, env=env)
    print(B.describe_env(machine, versions))
    print(f"command : {B.fmt_cmd([sys.executable] + sys.argv)}")
    # On CUDA the script runs inside a wrapper that prints its peak allocation at exit (as train_speed.py does for ours).
    launcher = (
        [args.python, "-c", B.cuda_peak_wrapper("sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")]
        if args.device == "cuda"
        else [args.python]
    )
    cmd = [
        *launcher,
        str(Path(args.script).resolve()),
        "--pretrained_model_name_or_path",
        str(model_dir.resolve()),
        *B.reference_flags(
            args.instance_dir,
            INSTANCE_PROMPT,
            CLASS_PROMPT,
            args.num_class_images,
            args.steps,
            args.resolution,
            args.mixed_precision,
        ),
        "--class_data_dir",
        str(work / "class"),
        "--output_dir",
        str(work / "out"),
        *args.extra,
    ]
    report = {
        "tool": "diffusers train_dreambooth_lora.py",
        "model": str(model_dir),
        "resolution": args.resolution,
        "mixed_precision": args.mixed_precision,
        "machine": machine,
        "versions": versions,
        "bench_command": B.fmt_cmd([sys.executable] + sys.argv),
        "device": args.device,
        "steps": args.steps,
        "num_class_images": args.num_class_images,
        "warmup": args.warmup,
    }
    try:
        print(f"\n$ {B.fmt_cmd(cmd)}", flush=True)
        run = B.run_timed(cmd, work / "train.log", env=env, cwd=work, echo=args.echo)
        if run.rc != 0:
            raise SystemExit(f"the script failed (exit {run.rc}); last output:\n{run.tail()}")
        # Its class-image bar counts batches of --sample_batch_size; its training bar is "Steps".
        res = summarise_training(run, args, class_bar="Generating class images", train_bar="Steps", class_unit_images=4)
        res["train_command"] = B.fmt_cmd(cmd)
        if args.device == "cuda":
            res["cuda_max_allocated_mib"] = B.cuda_peak(run)
        report["a"] = res
        print_training(
            res,
            f"diffusers train_dreambooth_lora.py: {model_dir.name}, {args.resolution} px, batch 1 + 1 class image, "
            f"TE LoRA, rank 16, {args.steps} steps, {args.num_class_images} class images, {args.device}, "
            f"precision {args.mixed_precision}",
        )
        print(f"train command       : {res['train_command']}")
    finally:
        B.write_json(args.json, report)
        if not args.workdir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"\noutputs and logs kept in {work}")


if __name__ == "__main__":
    main()
