"""FLUX.1 / SD3.5 training speed and memory: `dreambooth train` or diffusers' DreamBooth-LoRA script, same job.

    python bench/flow_speed.py --shape flux --tool ours   --model-dir flux-random --json ours.json
    python bench/flow_speed.py --shape flux --tool theirs --model-dir flux-random --json theirs.json \
        --script PATH/train_dreambooth_lora_flux.py --python DIFFUSERS_ENV/bin/python
    python bench/compare.py ours.json theirs.json --labels dreambooth diffusers

--model-dir is a diffusers folder written by bench/save_flow_model.py when missing (by --our-python): on CUDA the
real shape (FLUX.1 [dev]'s 11.9 B transformer or SD3.5 Medium's; one-layer text encoders of the real widths), on
the CPU the tool's tiny-flux / tiny-sd3 (--tiny forces either). Nothing of diffusers is kept in this repository:
--script is the path of diffusers' examples/dreambooth/train_dreambooth_lora_flux.py or _sd3.py, run by --python,
an environment where it runs (it imports torchvision, tensorboard, ...).

The job, the same for both tools (flag by flag below): the bundled dog photos and "a photo of sks dog", batch 1
(--batch), resolution 1024 (64 for the tiny models), rank-16 LoRA with alpha 16 on the transformer's attention
(to_q to_k to_v to_out.0 and the text stream's add_q_proj add_k_proj add_v_proj to_add_out: the tool's default;
diffusers' script is given that list with --lora_layers, its own FLUX.1 default adds the MLPs), AdamW at 1e-4,
constant schedule, bf16 on CUDA (fp32 on the CPU), T5 at --max-sequence-length tokens (FLUX.1 512, SD3.5 77: the
script's defaults), FLUX.1's guidance input 3.5 (the script's; the tool's --training-guidance), SD3.5's
logit-normal noise levels (the script's default; FLUX.1: uniform, its default), seed 0.
  * No prior preservation: its class images are drawn first by the 12 B model at 1024 px (28 sampling steps
    each), minutes before the first training step; a class image doubles the transformer batch, which
    gpu_step.py's variants measure.
  * No text-encoder LoRA: both tools then encode the prompt once and free the text encoders (T5 is never
    trained by either); the photos' latents are cached by both (the script with --cache_latents, centre crops).
  * The tool writes no sample images and no kohya file (--num-samples 0 --export none); the script has no
    validation prompt. What each does after training is outside the step rate.

Figures (see benchlib.py): the steady-state step rate from the training bar ("training" / "Steps"), stamped as
it is written, after --warmup steps; start-up (process start to first step); ru_maxrss; and on CUDA
torch.cuda.max_memory_allocated() of the training process, printed at its exit by a runpy wrapper around either
tool. --base-quantization nf4|int8 (ours only, CUDA only) stores the frozen transformer quantized.
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
from train_speed import INSTANCE_PROMPT, print_training, summarise_training  # noqa: E402

# the tool's default transformer targets (dreambooth.families.mmdit.TRANSFORMER_TARGETS), for the script's --lora_layers
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
SHAPES = {
    # shape: (family words, max sequence length, weighting scheme, FLUX.1's guidance input)
    "flux": ("FLUX.1 [dev]", 512, "none", 3.5),
    "sd35": ("SD3.5 Medium", 77, "logit_normal", None),
}
TINY_SEQUENCE = 32  # the tiny models' T5 tokenizer length


def common(args) -> dict:
    """The job's settings, named once, written by each tool's flag names below."""
    _, seq, weighting, guidance = SHAPES[args.shape]
    return dict(
        seq=args.max_sequence_length or (TINY_SEQUENCE if args.tiny else seq),
        weighting=weighting,
        guidance=guidance,
        precision=args.mixed_precision or ("bf16" if args.device == "cuda" else "no"),
    )


def our_command(args, model_dir: Path, out: Path) -> list[str]:
    c = common(args)
    wrapper = B.cuda_peak_wrapper("runpy.run_module('dreambooth.cli', run_name='__main__', alter_sys=True)")
    launcher = [args.our_python, "-c", wrapper] if args.device == "cuda" else [args.our_python, "-m", "dreambooth.cli"]
    cmd = [
        *launcher,
        "train",
        "--model",
        str(model_dir),
        "--instance-dir",
        str(args.instance_dir),
        "--instance-prompt",
        INSTANCE_PROMPT,
        "--output-dir",
        str(out),
        "--resolution",
        str(args.resolution),
        "--batch-size",
        str(args.batch),
        "--rank",
        str(args.rank),
        "--lora-alpha",
        str(args.rank),
        "--max-steps",
        str(args.steps),
        "--learning-rate",
        "1e-4",
        "--mixed-precision",
        c["precision"],
        "--max-sequence-length",
        str(c["seq"]),
        "--weighting-scheme",
        c["weighting"],
        "--seed",
        "0",
        "--num-samples",
        "0",
        "--export",
        "none",
    ]
    if c["guidance"] is not None:
        cmd += ["--training-guidance", str(c["guidance"])]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if args.base_quantization != "none":
        cmd += ["--base-quantization", args.base_quantization]
    return cmd


def their_command(args, model_dir: Path, out: Path) -> list[str]:
    c = common(args)
    run_line = "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    launcher = [args.python, "-c", B.cuda_peak_wrapper(run_line)] if args.device == "cuda" else [args.python]
    cmd = [
        *launcher,
        str(Path(args.script).resolve()),
        "--pretrained_model_name_or_path",
        str(model_dir),
        "--instance_data_dir",
        str(args.instance_dir),
        "--instance_prompt",
        INSTANCE_PROMPT,
        "--output_dir",
        str(out),
        "--resolution",
        str(args.resolution),
        "--center_crop",
        "--train_batch_size",
        str(args.batch),
        "--rank",
        str(args.rank),
        "--lora_layers",
        ",".join(TARGETS),
        "--max_train_steps",
        str(args.steps),
        "--learning_rate",
        "1e-4",
        "--lr_scheduler",
        "constant",
        "--mixed_precision",
        c["precision"],
        "--max_sequence_length",
        str(c["seq"]),
        "--weighting_scheme",
        c["weighting"],
        "--seed",
        "0",
        "--cache_latents",
    ]
    if args.shape == "flux":
        cmd += ["--lora_alpha", str(args.rank), "--guidance_scale", str(c["guidance"])]  # SD3's script: alpha = rank
    if args.gradient_checkpointing:
        cmd.append("--gradient_checkpointing")
    return cmd + args.extra


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", required=True, choices=tuple(SHAPES))
    p.add_argument("--tool", required=True, choices=("ours", "theirs"), help="ours: dreambooth train; theirs: --script")
    p.add_argument("--model-dir", required=True, help="diffusers folder of the model (written by save_flow_model.py if missing)")
    p.add_argument(
        "--tiny",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the tiny model: written if --model-dir is missing, 64 px, 32 T5 tokens (default: on the CPU only)",
    )
    p.add_argument("--script", default="", help="diffusers' train_dreambooth_lora_flux.py / _sd3.py (--tool theirs)")
    p.add_argument("--python", default=sys.executable, help="interpreter in which --script runs (default: this one)")
    p.add_argument("--our-python", default=sys.executable, help="interpreter with `dreambooth` importable (default: this one)")
    p.add_argument("--pythonpath", default="", help="prepended to PYTHONPATH of the jobs, e.g. the src/ folder of a checkout")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu hides GPUs from the jobs")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=None, help="steps left out of the steady-state rate (default: 5)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 steps, warm-up 5")
    p.add_argument("--batch", type=int, default=1, help="instance images per step (both tools)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    p.add_argument("--resolution", type=int, default=0, help="default: 1024, or 64 for the tiny models")
    p.add_argument("--mixed-precision", default="", choices=("", "no", "fp16", "bf16"), help="default: bf16 on cuda, no on cpu")
    p.add_argument("--max-sequence-length", type=int, default=0, help="T5 tokens (default: FLUX.1 512, SD3.5 77; tiny 32)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="both tools")
    p.add_argument(
        "--base-quantization", default="none", choices=("none", "nf4", "int8"), help="ours only, CUDA only: quantized base"
    )
    p.add_argument("--instance-dir", default=str(B.SAMPLE_SUBJECT), help="subject photos (default: the bundled dog)")
    p.add_argument("--workdir", default="", help="folder for outputs and logs (default: a temporary one, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--json", default="", help="also write every figure to this JSON file")
    p.add_argument("--echo", action="store_true", help="show the job's own output as it runs")
    p.add_argument("extra", nargs="*", help="more arguments for the script, after --")
    args = p.parse_args(argv)
    if args.tool == "theirs" and not args.script:
        p.error("--tool theirs needs --script (diffusers' train_dreambooth_lora_flux.py or _sd3.py)")
    if args.tool == "theirs" and args.base_quantization != "none":
        p.error("--base-quantization is measured for --tool ours only")
    if args.base_quantization != "none" and args.device != "cuda":
        p.error("--base-quantization runs on CUDA only (elsewhere the tool trains the full-precision base)")
    if args.tiny is None:
        args.tiny = args.device == "cpu"
    if args.quick:
        args.steps, args.warmup = 20, 5
    if args.warmup is None:
        args.warmup = 5
    args.resolution = args.resolution or (64 if args.tiny else 1024)
    args.images_per_step = args.batch  # no class images
    return args


def transformer_blocks(model_dir: Path) -> dict:
    """The folder's transformer depth, as its config says (the real shape's or a cut-down one's)."""
    import json

    config = json.loads((model_dir / "transformer" / "config.json").read_text())
    return {k: config[k] for k in ("num_layers", "num_single_layers") if k in config}


def env_for(args) -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.pythonpath] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def main() -> None:
    args = parse_args()
    env = env_for(args)
    model_dir = Path(args.model_dir).resolve()
    if not (model_dir / "model_index.json").is_file():
        save = [args.our_python, str(HERE / "save_flow_model.py"), str(model_dir), "--shape", args.shape]
        save += ["--tiny"] if args.tiny else ["--device", args.device]
        print(f"$ {B.fmt_cmd(save)}", flush=True)
        subprocess.run(save, check=True, env=env)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="flow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env["DREAMBOOTH_CACHE"] = str(work / "cache")
    out = work / f"out-{args.tool}"
    shutil.rmtree(out, ignore_errors=True)  # a rerun in the same --workdir starts afresh
    cmd = our_command(args, model_dir, out) if args.tool == "ours" else their_command(args, model_dir, out)
    python = args.our_python if args.tool == "ours" else args.python

    machine = B.machine_info()
    versions = B.probe_python(python, env=env)
    print(B.describe_env(machine, versions))
    print(f"command : {B.fmt_cmd([sys.executable] + sys.argv)}")
    c = common(args)
    tool = "dreambooth" if args.tool == "ours" else f"diffusers {Path(args.script).name}"
    report = {
        "tool": tool,
        "shape": args.shape,
        "model": str(model_dir),
        "tiny": args.tiny,
        "transformer_blocks": transformer_blocks(model_dir),
        "resolution": args.resolution,
        "batch": args.batch,
        "prior_preservation": False,
        "train_text_encoder": False,
        "rank": args.rank,
        "mixed_precision": c["precision"],
        "max_sequence_length": c["seq"],
        "gradient_checkpointing": args.gradient_checkpointing,
        "base_quantization": args.base_quantization,
        "machine": machine,
        "versions": versions,
        "bench_command": B.fmt_cmd([sys.executable] + sys.argv),
        "device": args.device,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    try:
        print(f"\n$ {B.fmt_cmd(cmd)}", flush=True)
        run = B.run_timed(cmd, work / f"train-{args.tool}.log", env=env, cwd=work, echo=args.echo)
        if run.rc != 0:
            raise SystemExit(f"{tool} failed (exit {run.rc}); last output:\n{run.tail()}")
        args.num_class_images = 0
        res = summarise_training(
            run, args, class_bar="no class images", train_bar="training" if args.tool == "ours" else "Steps", class_unit_images=1
        )
        if "error" in res:
            raise SystemExit(f"{tool}: {res['error']}; last output:\n{run.tail()}")
        res["train_command"] = B.fmt_cmd(cmd)
        if args.device == "cuda":
            res["cuda_max_allocated_mib"] = B.cuda_peak(run)
        report["a"] = res
        words = {"num_layers": "joint", "num_single_layers": "single"}
        blocks = " + ".join(f"{v} {words[k]}" for k, v in report["transformer_blocks"].items())
        size = f"{'tiny model' if args.tiny else SHAPES[args.shape][0] + '-shaped'}, {blocks} blocks, random weights"
        quantized = f", base {args.base_quantization}" if args.base_quantization != "none" else ""
        print_training(
            res,
            f"{tool}: {args.shape} ({size}), {args.resolution} px, batch {args.batch}, no prior preservation, "
            f"transformer LoRA rank {args.rank}, {args.steps} steps, {args.device}, precision {c['precision']}{quantized}",
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
