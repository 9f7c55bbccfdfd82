"""`dreambooth fleet` on a local Ray of 2 CPUs this module starts: each subject trains exactly as `train` alone would,
a broken subject fails alone, a killed worker is retried and resumes bitwise, a second run trains nothing, the class
bank is drawn once; `bench --fleet` writes the report `bench` writes. (Placement by GPUs: test_placement.py.)"""

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from safetensors.torch import load_file  # noqa: E402

from dreambooth import fields as F  # noqa: E402
from dreambooth.cli import main  # noqa: E402
from dreambooth.config import TrainConfig  # noqa: E402
from dreambooth.lora.files import WEIGHT_NAME  # noqa: E402

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
# the cheapest training that still uses prior preservation and a text-encoder LoRA (as tests/training/ do)
DEFAULTS = dict(model="tiny", rank=2, max_steps=4, num_samples=0, resolution=32, train_text_encoder=True,
                with_prior_preservation=True, class_prompt="a photo of a dog", num_class_images=2, class_image_steps=2)  # fmt: skip


@pytest.fixture(scope="module")
def draws(tmp_path_factory):
    """A Ray of 2 CPUs for the module; the file its workers log class-image drawings to."""
    path = tmp_path_factory.mktemp("draws") / "draws.jsonl"
    path.touch()
    # the workers import this checkout's package and the hook module, wherever Ray starts them
    search = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(HERE)]
    ray.init(
        num_cpus=2,
        num_gpus=0,
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
        assert F.saved_settings(out / name)["threads"] == 1  # its own CPU's thread

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


def test_bench_on_the_fleet_writes_the_report_bench_writes(draws, tmp_path, photos):
    """Two DreamBench subjects as fleet tasks (training, drawing, scoring each), against the same bench in-process."""
    from scoring_models import build_scoring_models, noise_image

    from dreambooth.config import BenchConfig
    from dreambooth.evaluation.bench import bench

    data = Path(__file__).parents[1] / "data"
    dataset = tmp_path / "dreambench"
    dataset.mkdir()
    shutil.copy(data / "prompts_and_classes.txt", dataset)
    shutil.copytree(photos, dataset / "dog")
    for i in range(3):
        noise_image(dataset / "teapot" / f"{i:02d}.jpg", i)
    (tmp_path / "train.yaml").write_text("class_image_steps: 1\nrank: 2\nresolution: 32\n")
    settings = dict(dataset=str(dataset), subjects=["dog", "teapot"], num_prompts=2, images_per_prompt=1, model="tiny",
                    max_steps=2, num_class_images=1, steps=1, train_config=str(tmp_path / "train.yaml"), threads=1,
                    **build_scoring_models(tmp_path / "scorers"))  # fmt: skip
    assert main(["bench", "--fleet", "--output-dir", str(tmp_path / "fleet"),
                 *[f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if k not in ("subjects", "threads")],
                 "--subjects", "dog", "teapot"]) == 0  # fmt: skip
    bench(BenchConfig(output_dir=str(tmp_path / "alone"), **settings))
    fleet, alone = (json.loads((tmp_path / d / "bench.json").read_text()) for d in ("fleet", "alone"))
    scores = ("dino", "clip_i", "clip_t", "pres")
    assert [[r[k] for k in ("subject", *scores)] for r in fleet["subjects"]] == [
        [r[k] for k in ("subject", *scores)] for r in alone["subjects"]
    ]
    assert all(r["dino"] is not None for r in fleet["subjects"])
