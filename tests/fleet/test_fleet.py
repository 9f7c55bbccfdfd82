"""`dreambooth fleet` on a local Ray this module starts (2 CPUs, 2 GPUs advertised: no GPU is used, Ray only places
by them): each subject trains exactly as `train` alone would, a broken subject fails alone, a killed worker is
retried and resumes bitwise, a second run trains nothing, the class bank is drawn once, runs are placed per GPU."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from safetensors.torch import load_file  # noqa: E402

from dreambooth import fields as F  # noqa: E402
from dreambooth.cli import main  # noqa: E402
from dreambooth.config import FleetConfig, TrainConfig  # noqa: E402
from dreambooth.fleet.driver import task_options  # noqa: E402
from dreambooth.lora.files import WEIGHT_NAME  # noqa: E402

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
# the cheapest training that still uses prior preservation and a text-encoder LoRA (as tests/training/ do)
DEFAULTS = dict(model="tiny", rank=2, max_steps=4, num_samples=0, resolution=32, train_text_encoder=True,
                with_prior_preservation=True, class_prompt="a photo of a dog", num_class_images=2, class_image_steps=2)  # fmt: skip


@pytest.fixture(scope="module")
def draws(tmp_path_factory):
    """A Ray of 2 CPUs and 2 advertised GPUs for the module; the file its workers log class-image drawings to."""
    path = tmp_path_factory.mktemp("draws") / "draws.jsonl"
    path.touch()
    # the workers import this checkout's package and the hook module, wherever Ray starts them
    search = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(HERE)]
    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": "fleet_hooks.count_class_draws",
            "env_vars": {"PYTHONPATH": os.pathsep.join(search), "FLEET_TEST_DRAWS": str(path)},
        },
    )
    yield path
    ray.shutdown()


def fleet_file(path: Path, subjects: list[dict], **defaults) -> Path:
    path.write_text(json.dumps({"defaults": {**DEFAULTS, **defaults}, "subjects": subjects}))  # JSON is YAML
    return path


def alone(subject: dict, out: Path, **defaults) -> dict:
    """The LoRA `train` makes by itself with the subject's settings (one thread, as the fleet's runs take)."""
    values = {**DEFAULTS, **defaults, **{k: v for k, v in subject.items() if k != "name"}}
    cfg = F.settings(TrainConfig, **F.parse(TrainConfig, values), output_dir=str(out), threads=1)
    from dreambooth import train

    return load_file(str(train(cfg) / WEIGHT_NAME))


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def rows(out: Path) -> dict:
    return {r["name"]: r for r in json.loads((out / "fleet.json").read_text())["subjects"]}


def test_a_fleet_trains_each_subject_as_train_alone_fails_a_broken_one_alone_and_reruns_nothing(draws, tmp_path, capsys):
    from conftest import SAMPLE

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "photo.jpg").write_bytes(b"not a jpeg")  # a damaged image and nothing else
    subjects = [
        {"name": "dog", "instance_dir": str(SAMPLE), "instance_prompt": "a photo of sks dog"},
        {"name": "puppy", "instance_dir": str(SAMPLE), "instance_prompt": "a photo of zwx dog", "learning_rate": 1e-3},
        {
            "name": "plain",
            "instance_dir": str(SAMPLE),
            "instance_prompt": "a photo of sks dog",
            "with_prior_preservation": False,
            "max_steps": 5,
        },  # fmt: skip
        {"name": "broken", "instance_dir": str(broken), "instance_prompt": "a photo of sks dog"},
    ]
    out = tmp_path / "out"
    args = ["fleet", str(fleet_file(tmp_path / "fleet.yaml", subjects)), "--output-dir", str(out), "--cpus-per-run", "1"]
    assert main(args) == 1
    printed = capsys.readouterr()
    assert "fleet: broken failed: --instance-dir" in printed.out and "1 of 4 subjects failed (broken)" in printed.err

    got = rows(out)
    assert {n: r["state"] for n, r in got.items()} == {"dog": "done", "puppy": "done", "plain": "done", "broken": "failed"}
    assert main(["train", "--instance-dir", str(broken), "--instance-prompt", "a photo of sks dog",
                 "--output-dir", str(tmp_path / "alone-broken")]) == 2  # fmt: skip
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dreambooth: error: ")]
    assert got["broken"]["error"] == line.removeprefix("dreambooth: error: ")  # train's own one line
    for name in ("dog", "puppy", "plain"):
        assert got[name]["lora"] == str(out / name / WEIGHT_NAME) and got[name]["loss"] is not None
        # each run saw one of the two advertised GPUs (Ray's CUDA_VISIBLE_DEVICES) and used one thread
        task = json.loads((out / name / "fleet-task.json").read_text())
        assert task["gpus"] in ("0", "1") and F.saved_settings(out / name)["threads"] == 1

    # the dog class's bank entry was drawn by one task, once, before both subjects that need it
    drawn = [json.loads(line) for line in draws.read_text().splitlines()]
    assert sum(d["images"] for d in drawn if d["prompt"] == "a photo of a dog") == DEFAULTS["num_class_images"]
    assert len({d["pid"] for d in drawn}) == 1

    for subject in subjects[:3]:
        assert same(load_file(str(out / subject["name"] / WEIGHT_NAME)), alone(subject, tmp_path / "alone" / subject["name"]))

    # run again without the broken subject: every row done, nothing trained, Ray not even asked
    before = {n: (out / n / WEIGHT_NAME).stat().st_mtime_ns for n in ("dog", "puppy", "plain")}
    fleet_file(tmp_path / "fleet.yaml", subjects[:3])
    assert main(args) == 0
    assert {n: r["state"] for n, r in rows(out).items()} == {"dog": "done", "puppy": "done", "plain": "done"}
    assert before == {n: (out / n / WEIGHT_NAME).stat().st_mtime_ns for n in before}
    assert " running on " not in capsys.readouterr().out


def test_a_worker_killed_mid_training_is_retried_and_resumes_to_the_same_lora(draws, tmp_path):
    from conftest import SAMPLE

    subject = {"name": "dog", "instance_dir": str(SAMPLE), "instance_prompt": "a photo of sks dog"}
    settings = dict(max_steps=40, checkpoint_every=5, with_prior_preservation=False, learning_rate=1e-3)
    out = tmp_path / "out"
    path = fleet_file(tmp_path / "fleet.yaml", [subject], **settings)
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(main(["fleet", str(path), "--output-dir", str(out)])))
    runner.start()
    checkpoint = out / "dog" / "checkpoints" / "step-000010"
    end = time.time() + 180
    while not checkpoint.exists():
        assert time.time() < end and runner.is_alive(), "no checkpoint appeared"
        time.sleep(0.01)
    pid = json.loads((out / "dog" / "fleet-task.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=300)
    assert done == [0]
    assert json.loads((out / "dog" / "fleet-task.json").read_text())["pid"] != pid  # a second attempt, in a new worker
    log = (out / "dog" / "fleet.log").read_text()
    assert log.count(" pid ") == 2 and "resumed from step-0000" in log  # it continued from a checkpoint, not from step 0
    assert rows(out)["dog"]["state"] == "done"
    assert same(load_file(str(out / "dog" / WEIGHT_NAME)), alone(subject, tmp_path / "alone", **settings))


def spans(options: dict, n: int) -> list[tuple[float, float, str]]:
    """`n` tasks holding their place for a second with the fleet's options: (start, end, the GPU they saw) each."""

    def hold():
        started = time.time()
        time.sleep(1.0)
        return started, time.time(), ",".join(str(i) for i in ray.get_gpu_ids())

    # placement only: workers may be reused here (the fleet starts a fresh one per run)
    task = ray.remote(**{**options, "max_calls": 0, "runtime_env": {"env_vars": {"FLEET_TEST_DRAWS": ""}}})(hold)
    return ray.get([task.remote() for _ in range(n)])


def overlapping(found):
    return [(a, b) for i, a in enumerate(found) for b in found[i + 1 :] if a[0] < b[1] and b[0] < a[1]]


def test_one_run_per_gpu_and_half_a_gpu_packs_two(draws):
    whole = spans(task_options(FleetConfig(gpus_per_run=1, cpus_per_run=0.5), cluster_gpus=2), 4)
    assert all(gpu in ("0", "1") for *_, gpu in whole)
    assert overlapping(whole) and all(a[2] != b[2] for a, b in overlapping(whole))  # at once only on different GPUs
    half = spans(task_options(FleetConfig(gpus_per_run=0.5, cpus_per_run=0.5), cluster_gpus=2), 4)
    assert any(a[2] == b[2] for a, b in overlapping(half))  # two runs at once on one GPU
