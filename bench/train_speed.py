"""Training speed of `dreambooth train`, measured from outside the process.

Setting (a), the default: the embedded tiny model (64 px), batch 1 + 1 class image (prior
preservation), text-encoder LoRA, rank 16, 300 steps. The job is the real CLI in a child process,
with the flag names of diffusers' train_dreambooth_lora.py (the CLI accepts them as aliases):

    python -m dreambooth.cli train --pretrained_model_name_or_path tiny --resolution 64 \
        --train_batch_size 1 --with_prior_preservation --num_class_images 100 --train_text_encoder \
        --rank 16 --max_train_steps 300 --learning_rate 5e-4 ...

then `python -m dreambooth.cli generate` with the trained LoRA at its default settings.

Setting (b), with --device cuda: the SD 1.5 UNet (+ text encoder) with random weights at 512 px,
batch 1 and 8, one training step timed by bench/gpu_step.py, MFU from FlopCounterMode's FLOPs.

How each figure is taken (see benchlib.py):
  * steady-state step rate: the tqdm bar of the child is read as it is written and each refresh is
    stamped on arrival; rate = (N2 - N1) / (T2 - T1) with N1 the first step shown after the warm-up
    (--warmup, default 10 % of the steps) and N2 the last step. images/s = steps/s x images per
    step (batch + class images).
  * start-up: process start -> first training step done, minus the class-image generation time
    (which the same job also does before training).
  * peak memory: ru_maxrss of the child from os.wait4 (the struct resource.getrusage(RUSAGE_CHILDREN)
    reports); on CUDA also torch.cuda.max_memory_allocated() of the child, printed at its exit.
  * class images/s: number of class images / time between the first and the final refresh of the
    class-image bar.
  * generation latency: time of the `generating` bar of `dreambooth generate` / number of images.
  * whole job: wall time of the train process (load, class images, training, saving, samples).

Examples:
    python bench/train_speed.py                  # setting (a) on CPU, 300 steps
    python bench/train_speed.py --quick          # smoke run: 20 steps, 4 class images
    python bench/train_speed.py --device cuda    # settings (a) and (b) on the GPU
    python bench/train_speed.py --setting b --device cpu --smoke   # (b)'s code path at a tiny size
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib as B  # noqa: E402

INSTANCE_PROMPT = "a photo of sks dog"
CLASS_PROMPT = "a photo of a dog"
GENERATE_PROMPT = "a photo of sks dog on the grass"

# Runs the CLI as `python -m dreambooth.cli` would, and prints CUDA's peak allocation at exit.
# Used only with --device cuda (on CPU the plain `-m dreambooth.cli` command is run).
CUDA_WRAPPER = B.cuda_peak_wrapper("runpy.run_module('dreambooth.cli', run_name='__main__', alter_sys=True)")


def child_env(args) -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.pythonpath] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def cli(args) -> list[str]:
    if args.device == "cuda":
        return [args.python, "-c", CUDA_WRAPPER]
    return [args.python, "-m", "dreambooth.cli"]


def setting_a(args, work: Path) -> dict:
    out, gen = work / "lora", work / "generate"
    train_cmd = cli(args) + [
        "train",
        "--pretrained_model_name_or_path",
        args.model,
        *B.reference_flags(
            args.instance_dir,
            INSTANCE_PROMPT,
            CLASS_PROMPT,
            args.num_class_images,
            args.steps,
            args.resolution,
            args.mixed_precision,
        ),
        "--output_dir",
        str(out),
        "--learning_rate_text",
        "5e-4",  # diffusers' script trains the text-encoder LoRA at --learning_rate too
    ]
    env = child_env(args)
    # An empty class-image bank, so the whole job includes making the class images, as the baseline's does.
    env["DREAMBOOTH_CACHE"] = str(work / "cache")
    print(f"\n$ {B.fmt_cmd(train_cmd)}", flush=True)
    train = B.run_timed(train_cmd, work / "train.log", env=env, echo=args.echo)
    if train.rc != 0:
        raise SystemExit(f"training failed (exit {train.rc}); last output:\n{train.tail()}")
    res = summarise_training(train, args, class_bar="class images", train_bar="training", class_unit_images=1)
    res["train_command"] = B.fmt_cmd(train_cmd)
    m = None
    for _, text, *_ in train.events:
        m = re.search(r"trained (\d+) steps in ([\d.]+) s", text) or m
    if m:
        res["tool_reported_training_s"] = float(m.group(2))
    t_loaded = train.first_line("^" + re.escape(args.model) + ": ")
    if t_loaded is not None:
        res["imports_and_model_load_s"] = t_loaded
    if args.device == "cuda":
        res["cuda_max_allocated_mib"] = B.cuda_peak(train)

    gen_cmd = cli(args) + [
        "generate",
        "--lora",
        str(out),
        "--prompt",
        GENERATE_PROMPT,
        "--output-dir",
        str(gen),
        "--resolution",
        str(args.resolution),
    ]
    print(f"$ {B.fmt_cmd(gen_cmd)}", flush=True)
    g = B.run_timed(gen_cmd, work / "generate.log", env=env, echo=args.echo)
    if g.rc != 0:
        raise SystemExit(f"generate failed (exit {g.rc}); last output:\n{g.tail()}")
    s = B.span(g.bars("generating"))
    n_images = g.bars("generating")[-1][2] if s else 0
    res["generate"] = {
        "command": B.fmt_cmd(gen_cmd),
        "wall_s": g.wall,
        "images": n_images,
        "sampling_s": (s[1] - s[0]) if s else None,
        "s_per_image": (s[1] - s[0]) / n_images if s and n_images else None,
        "max_rss_mib": g.max_rss_mib,
        "load_before": g.load_before,
        "load_after": g.load_after,
    }
    if args.device == "cuda":
        res["generate"]["cuda_max_allocated_mib"] = B.cuda_peak(g)
    return res


def summarise_training(run: B.Run, args, class_bar: str, train_bar: str, class_unit_images: int) -> dict:
    """Figures every training job yields: phases from its bars, steady rate, memory, CPU time, load."""
    cbar, tbar = run.bars(class_bar), run.bars(train_bar)
    cspan, tspan = B.span(cbar), B.span(tbar)
    class_s = (cspan[1] - cspan[0]) if cspan else 0.0
    n_class = args.num_class_images if cspan else 0
    res = {
        "rc": run.rc,
        "wall_s": run.wall,
        "max_rss_mib": run.max_rss_mib,
        "cpu_s": run.cpu_s,
        "load_before": run.load_before,
        "load_after": run.load_after,
        "log": run.log_path,
        "other_processes_cores": run.others_cores,
        "class_images": n_class,
        "class_images_s": class_s,
        "class_images_per_s": n_class / class_s if class_s else None,
    }
    if not tspan:
        res["error"] = f"no '{train_bar}' progress bar found in the output"
        return res
    seen = B.first_seen(tbar)
    t_step1 = min((t for n, t in seen.items() if n >= 1), default=None)
    steady = B.steady_rate(tbar, args.warmup)
    res.update(
        {
            "steps": tbar[-1][2],
            "training_bar_s": tspan[1] - tspan[0],
            "before_training_s": tspan[0],
            "startup_s": (t_step1 - class_s) if t_step1 is not None else None,
            "first_step_s": (t_step1 - tspan[0]) if t_step1 is not None else None,
            "after_training_s": run.wall - tspan[1],
            "steady": steady,
            "steps_per_s": steady.get("steps_per_s"),
            "images_per_step": args.images_per_step,
            "images_per_s": steady["steps_per_s"] * args.images_per_step if steady else None,
            "class_bar_unit_images": class_unit_images,
            # [step, seconds since process start, child CPU seconds] when each step was first shown
            "timeline": [
                [n, round(t, 3), None if c is None else round(c, 2)]
                for n, (t, c, _) in sorted(B.first_seen(tbar, with_cpu=True).items())
            ],
        }
    )
    return res


def print_training(res: dict, title: str) -> None:
    f = lambda x, d=2: "n/a" if x is None else f"{x:.{d}f}"  # noqa: E731
    st = res.get("steady", {})
    print(f"\n== {title}")
    print(
        f"steady-state rate   : {f(res.get('steps_per_s'))} it/s, {f(res.get('images_per_s'))} images/s "
        f"(steps {st.get('n1')}->{st.get('n2')} in {f((st.get('t2') or 0) - (st.get('t1') or 0), 1)} s; "
        f"median of 10-step windows {f(st.get('median_10step_window_steps_per_s'))} it/s)"
    )
    print(
        f"CPU per step        : {f(st.get('cpu_s_per_step'), 3)} CPU s/step, {f(st.get('cpu_cores_busy'))} cores busy on average "
        f"(steady phase); other processes kept {f(st.get('other_processes_cores'))} cores busy meanwhile"
    )
    print(
        f"start-up            : {f(res.get('startup_s'))} s (process start -> first step done, class images excluded); "
        f"first step {f(res.get('first_step_s'))} s"
    )
    if "imports_and_model_load_s" in res:
        print(f"imports+model load  : {f(res['imports_and_model_load_s'])} s (process start -> first line after load)")
    print(
        f"class images        : {res.get('class_images')} in {f(res.get('class_images_s'), 1)} s = {f(res.get('class_images_per_s'))} images/s"
    )
    print(
        f"training            : {f(res.get('training_bar_s'), 1)} s for {res.get('steps')} steps"
        + (f" (tool says {res['tool_reported_training_s']} s)" if "tool_reported_training_s" in res else "")
    )
    print(f"after training      : {f(res.get('after_training_s'), 1)} s (saving, samples, model card, exit)")
    print(f"whole job           : {f(res.get('wall_s'), 1)} s wall, {f(res.get('cpu_s'), 1)} CPU s")
    print(
        f"peak memory         : {f(res.get('max_rss_mib'), 0)} MiB max RSS"
        + (f", CUDA max allocated {f(res['cuda_max_allocated_mib'], 0)} MiB" if res.get("cuda_max_allocated_mib") else "")
    )
    print(
        f"load average        : {B.fmt_load(res.get('load_before'))} before, {B.fmt_load(res.get('load_after'))} after; "
        f"other processes kept {f(res.get('other_processes_cores'))} cores busy over the whole job"
    )


def setting_b(args, work: Path) -> dict:
    """SD 1.5-sized UNet step via gpu_step.py, one child process per batch size."""
    results = {}
    for batch in args.gpu_batches:
        out_json = work / f"gpu_step_b{batch}.json"
        cmd = [args.python, str(HERE / "gpu_step.py"), "--device", args.device, "--batch", str(batch), "--json", str(out_json)]
        if args.smoke:
            cmd.append("--smoke")
        print(f"$ {B.fmt_cmd(cmd)}", flush=True)
        run = B.run_timed(cmd, work / f"gpu_step_b{batch}.log", env=child_env(args), echo=args.echo)
        if run.rc != 0:
            raise SystemExit(f"gpu_step failed (exit {run.rc}); last output:\n{run.tail()}")
        r = json.loads(out_json.read_text())
        r["process_max_rss_mib"] = run.max_rss_mib
        r["process_wall_s"] = run.wall
        r["command"] = B.fmt_cmd(cmd)
        results[str(batch)] = r
        print(
            f"batch {batch}: {r['steps_per_s']:.3f} it/s, {r['images_per_s']:.2f} images/s, "
            f"{r['flops_per_step'] / 1e12:.2f} TFLOP/step, MFU {r['mfu'] if r['mfu'] is not None else 'n/a'}, "
            f"CUDA max allocated {r.get('cuda_max_allocated_mib') or 'n/a'} MiB, max RSS {run.max_rss_mib:.0f} MiB",
            flush=True,
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=sys.executable, help="interpreter that has `dreambooth` importable (default: this one)")
    p.add_argument("--pythonpath", default="", help="prepended to PYTHONPATH of the jobs, e.g. the src/ folder of a checkout")
    B.add_run_flags(p)
    p.add_argument(
        "--model",
        default="tiny",
        help="setting (a)'s base model: tiny, or a diffusers folder such as one from "
        "bench/save_sd15_model.py (with --resolution 512)",
    )
    p.add_argument(
        "--setting",
        default="",
        choices=("", "a", "b", "all"),
        help="a: tiny model; b: SD 1.5 UNet step (default: a on cpu, all on cuda)",
    )
    p.add_argument("--smoke", action="store_true", help="setting (b) at a tiny resolution with few steps (for CPU)")
    p.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 8], help="batch sizes of setting (b)")
    args = p.parse_args()
    B.settle_run_flags(args)
    setting = args.setting or ("a" if args.device == "cpu" else "all")

    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="dreambooth-bench-"))

    machine = B.machine_info()
    versions = B.probe_python(args.python, env=child_env(args))
    print(B.describe_env(machine, versions))
    print(f"command : {B.fmt_cmd([sys.executable] + sys.argv)}")
    report = {
        "tool": "dreambooth",
        "model": args.model,
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
        if setting in ("a", "all"):
            res = setting_a(args, work)
            report["a"] = res
            print_training(
                res,
                f"setting (a): {args.model}, {args.resolution} px, batch 1 + 1 class image, TE LoRA, rank 16, "
                f"{args.steps} steps, {args.num_class_images} class images, {args.device}, precision {args.mixed_precision}",
            )
            g = res["generate"]
            print(
                f"generate            : {g['images']} images, {g['s_per_image']:.3f} s/image (sampling at default steps), "
                f"{g['wall_s']:.1f} s wall incl. start-up, {g['max_rss_mib']:.0f} MiB max RSS"
            )
            print(f"train command       : {res['train_command']}")
        if setting in ("b", "all"):
            if args.device == "cpu" and not args.smoke:
                print("\nsetting (b) at 512 px is meant for a GPU; on CPU pass --smoke (tiny resolution)")
            else:
                print(
                    f"\n== setting (b): SD 1.5 UNet + text encoder, random weights, LoRA rank 16, {args.device}"
                    + (" (smoke size)" if args.smoke else ", 512 px")
                )
                report["b"] = setting_b(args, work)
    finally:
        B.write_json(args.json, report)
        if not args.workdir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.workdir or args.keep:
            print(f"\noutputs and logs kept in {work}")


if __name__ == "__main__":
    main()
