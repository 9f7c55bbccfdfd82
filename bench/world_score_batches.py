"""The world's scores drawn one prompt a batch (the code before) and with the prompts sharing batches (`scores.draw_named`).

For each number of samples per prompt it draws the demo's eight prompts for the dog from the shipped base model both
ways, alternating (`--rounds` times each), and prints the seconds each took, whether the six scores came out the
same, and the largest pixel difference between the two ways' images (batched arithmetic rounds differently). Run it
alone on the machine: anything else running changes every figure.

    python bench/world_score_batches.py                 # 2, 4, 8, 16 and 32 samples per prompt, 2 rounds
    python bench/world_score_batches.py --samples 2 4 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib as B  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", nargs="+", type=int, default=[2, 4, 8, 16, 32], help="samples per prompt")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    import torch

    from dreambooth import threads
    from dreambooth.models import load_pipeline
    from dreambooth.sampling import draw
    from dreambooth.world import GUIDANCE, MODEL, SAMPLE_STEPS, folder, readers
    from dreambooth.world.scores import SHARED_BATCH, draw_named, prompts

    print(B.describe_env(B.machine_info(), B.probe_python(sys.executable)))
    pipe = load_pipeline(MODEL)
    reader, _ = readers.load(folder() / "reader")
    asked = prompts("dog")

    def one_prompt_a_batch(n: int) -> dict[str, list]:
        return {name: draw(pipe, q, n, 1000, SAMPLE_STEPS, GUIDANCE, 32, batch_size=n) for name, q in asked.items()}

    ways = {"one prompt a batch": one_prompt_a_batch, f"shared batches of {SHARED_BATCH}": lambda n: draw_named(pipe, asked, n)}
    with threads.workload(0):  # the cores the page's scoring takes: all of them on a quiet machine
        measure(args, ways, reader, len(asked))
    print(f"\ntorch threads: {torch.get_num_threads()} at the end")


def measure(args, ways: dict, reader, prompts_drawn: int) -> None:
    from dreambooth.world import GUIDANCE, SAMPLE_STEPS
    from dreambooth.world.scores import read, score

    print(f"\n{prompts_drawn} prompts, {SAMPLE_STEPS} sampling steps, guidance {GUIDANCE}\n")
    print(
        "| samples per prompt | "
        + " | ".join(f"{w} (s)" for w in ways)
        + " | speed-up | same scores | largest pixel difference |"
    )
    print("|---|" + "---|" * (len(ways) + 3))
    next(iter(ways.values()))(1)  # warm
    for n in args.samples:
        seconds: dict[str, list[float]] = {w: [] for w in ways}
        drawn: dict[str, dict] = {}
        for _ in range(args.rounds):
            for way, fn in ways.items():
                began = time.perf_counter()
                drawn[way] = fn(n)
                seconds[way].append(time.perf_counter() - began)
        a, b = drawn.values()
        same = score({k: read(reader, v) for k, v in a.items()}, "dog") == score(
            {k: read(reader, v) for k, v in b.items()}, "dog"
        )
        diff = max(int(np.abs(np.asarray(x, int) - np.asarray(y, int)).max()) for k in a for x, y in zip(a[k], b[k]))
        means = [sum(s) / len(s) for s in seconds.values()]
        cells = " | ".join(", ".join(f"{s:.1f}" for s in secs) for secs in seconds.values())
        print(f"| {n} | {cells} | {means[0] / means[1]:.2f}x | {'yes' if same else 'no'} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
