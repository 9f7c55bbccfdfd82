"""The fleet file -> per-subject `train` configs and class-bank tasks, and the report files: plain functions, no Ray."""

import json
import textwrap

import pytest

from dreambooth import fields as F
from dreambooth.config import FleetConfig, TrainConfig, check_fleet
from dreambooth.errors import UsageError
from dreambooth.fleet import plan as P
from dreambooth.fleet import report


def write(tmp_path, text, name="fleet.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


FLEET = """
defaults:
  model: tiny
  max_steps: 6
  with_prior_preservation: true
  class_prompt: a photo of a dog
  num_class_images: 2
subjects:
  - name: dog
    instance_dir: photos/dog
    instance_prompt: a photo of sks dog
  - name: dog2
    instance_dir: photos/dog
    instance_prompt: a photo of zwx dog
    num_class_images: 3
  - name: teapot
    instance_dir: photos/teapot
    instance_prompt: a photo of sks teapot
    class_prompt: a photo of a teapot
    max_train_steps: 9            # diffusers' spelling, as train --config takes it
"""


def test_each_subject_is_train_config_over_defaults_with_its_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    the_plan = P.plan(write(tmp_path, FLEET), tmp_path / "out", threads=1)
    dog, dog2, teapot = (s.cfg for s in the_plan.subjects)
    # the same config `train --config` builds from the merged settings, with the fleet's own fields set
    expected = F.settings(
        TrainConfig,
        **F.parse(
            TrainConfig,
            {
                "model": "tiny",
                "max_steps": 6,
                "with_prior_preservation": True,
                "class_prompt": "a photo of a dog",
                "num_class_images": 2,
                "instance_prompt": "a photo of sks dog",
            },
        ),  # fmt: skip
        instance_dir=str(tmp_path / "photos" / "dog"),  # made absolute: a worker may start elsewhere
        output_dir=str(tmp_path / "out" / "dog"),
        threads=1,
        checkpoint_every=1,  # a tenth of 6 steps, rounded up: a dead worker loses at most that
    )
    assert dog == expected
    assert (dog2.num_class_images, teapot.max_steps, teapot.class_prompt) == (3, 9, "a photo of a teapot")
    assert teapot.checkpoint_every == 1 and P.subject_config({}, {"name": "x", "instance_dir": "p", "instance_prompt": "a sks dog",
                                                                 "max_steps": 300}, tmp_path, 1, "s").checkpoint_every == 30  # fmt: skip


def test_subjects_of_one_class_share_one_bank_task_asking_for_the_most_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    the_plan = P.plan(write(tmp_path, FLEET), tmp_path / "out", threads=1)
    assert [b.subjects for b in the_plan.banks] == [["dog", "dog2"], ["teapot"]]
    assert the_plan.banks[0].cfg.num_class_images == 3
    assert [s.bank for s in the_plan.subjects][0] == the_plan.banks[0].key
    # another seed or model draws other images: its own entry; no prior, or base-prediction, draws none
    seeded = P.subject_config({}, {"name": "a", "instance_dir": "p", "instance_prompt": "a sks dog", "seed": 1,
                                   "with_prior_preservation": True, "class_prompt": "a photo of a dog"}, tmp_path, 1, "s")  # fmt: skip
    assert P.bank_key(seeded) not in {b.key for b in the_plan.banks}
    for extra in ({"with_prior_preservation": False}, {"prior_mode": "base-prediction"}):
        cfg = P.subject_config({"with_prior_preservation": True, "class_prompt": "a dog"},
                               {"name": "b", "instance_dir": "p", "instance_prompt": "a sks dog", **extra}, tmp_path, 1, "s")  # fmt: skip
        assert P.bank_key(cfg) == ""


@pytest.mark.parametrize(
    "entry, words",
    [
        ("max_step: 5", "unknown key 'max_step' (did you mean 'max_steps'?)"),
        ("rank: many", "key 'rank': 'many' is not a valid int"),
        ("resolution: 30", "--resolution 30: must be a positive multiple of 8"),
        ("output_dir: elsewhere", "'output_dir' is not a fleet setting (the fleet writes OUT/<name>/)"),
        ("threads: 4", "'threads' is not a fleet setting (set by --cpus-per-run)"),
    ],
)
def test_a_bad_override_refuses_that_subject_alone_in_one_line(tmp_path, entry, words):
    text = FLEET.replace("    num_class_images: 3", f"    {entry}")
    the_plan = P.plan(write(tmp_path, text), tmp_path / "out", threads=1)
    dog, dog2, teapot = the_plan.subjects
    assert dog.cfg is not None and teapot.cfg is not None and dog2.cfg is None
    assert words in dog2.error and dog2.error.startswith("FLEET ") and "subject dog2" in dog2.error, dog2.error
    assert "\n" not in dog2.error and [b.subjects for b in the_plan.banks] == [["dog"], ["teapot"]]


@pytest.mark.parametrize(
    "text, words",
    [
        ("subjects: []", "`subjects` must be a list"),
        ("defaults: {max_step: 3}\nsubjects: [{name: a}]", "defaults: unknown key 'max_step'"),
        ("defaults: {overwrite: true}\nsubjects: [{name: a}]", "'overwrite' is not a fleet setting"),
        ("subjects: [{name: a}, {name: a}]", "subject name 'a' appears twice"),
        ("subjects: [{name: ../up}]", "subject name '../up': use letters"),
        ("subjects: [{instance_dir: x}]", "subject 1 must be a mapping with a `name`"),
        ("subject: []", "unknown key 'subject'"),
        ("subjects: [", "is not valid YAML"),
    ],
)
def test_a_fault_of_the_file_or_its_defaults_refuses_the_fleet(tmp_path, text, words):
    with pytest.raises(UsageError, match=None) as e:
        P.plan(write(tmp_path, text), tmp_path / "out", threads=1)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "values, words",
    [
        ({}, "FLEET is required"),
        ({"fleet": "f.yaml"}, "--output-dir is required"),
        ({"fleet": "f.yaml", "output_dir": "o", "gpus_per_run": 1.5}, "--gpus-per-run 1.5"),
        ({"fleet": "f.yaml", "output_dir": "o", "cpus_per_run": 0.0}, "--cpus-per-run 0.0: must be positive"),
        ({"fleet": "f.yaml", "output_dir": "o", "max_retries": -1}, "--max-retries -1"),
        ({"fleet": "f.yaml", "output_dir": "o", "address": "somewhere"}, "--address somewhere"),
    ],
)
def test_fleet_flags_are_checked(values, words):
    with pytest.raises(UsageError) as e:
        check_fleet(FleetConfig(**values))
    assert words in str(e.value)


def test_a_run_is_finished_only_with_its_lora_and_the_same_settings(tmp_path):
    cfg = P.subject_config({}, {"name": "a", "instance_dir": "p", "instance_prompt": "a sks dog"}, tmp_path, 1, "s")
    out = tmp_path / "a"
    assert not P.finished(cfg) and not P.started(cfg)
    out.mkdir()
    (out / "checkpoints" / "step-000002").mkdir(parents=True)
    assert P.started(cfg) and not P.finished(cfg)
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (out / "config.yaml").write_text(F.to_yaml(cfg))
    assert P.finished(cfg)
    (out / "config.yaml").write_text(F.to_yaml(TrainConfig(**{**vars(cfg), "max_steps": 301, "threads": 2})))
    assert not P.finished(cfg)  # more steps asked: continued from its last checkpoint; the thread count alone is no change


def test_the_report_files_are_written_whole_and_escaped(tmp_path):
    rows = [report.new_row("dog"), {**report.new_row("<b>cat</b>", "failed", "--instance-dir x: no images")}]
    report.write(tmp_path, rows, "fleet.yaml")
    data = json.loads((tmp_path / "fleet.json").read_text())
    assert data["counts"] == {"queued": 1, "running": 0, "done": 0, "failed": 1}
    assert [set(r) >= {"name", "state", "error", "seconds", "lora", "scores"} for r in data["subjects"]] == [True, True]
    assert report.read(tmp_path) == rows
    page = (tmp_path / "fleet.html").read_text()
    assert "&lt;b&gt;cat&lt;/b&gt;" in page and "<b>cat" not in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.html", "fleet.json"]  # no temporary file left


def test_a_runs_scores_are_its_kept_step_or_its_last_validation(tmp_path):
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "scores.csv").write_text("step,subject_fidelity,class_drift\n2,0.5,0.1\n4,0.75,0.2\n")
    assert report.final_scores(tmp_path) == {"step": 4, "subject_fidelity": 0.75, "class_drift": 0.2}
    header = json.dumps({"__metadata__": {"kept": json.dumps({"step": 2, "metric": "subject_fidelity"})}}).encode()
    (tmp_path / "validation" / "best.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    assert report.final_scores(tmp_path)["step"] == 2


def test_placement_asks_ray_for_the_runs_share_and_sets_its_threads(tmp_path):
    from dreambooth.fleet.driver import task_options

    cfg = FleetConfig(fleet="f", output_dir="o", gpus_per_run=0.5, cpus_per_run=2.0, bank_dir=str(tmp_path / "bank"))
    options = task_options(cfg, cluster_gpus=8)
    assert (options["num_gpus"], options["num_cpus"], options["max_retries"], options["max_calls"]) == (0.5, 2.0, 3, 1)
    assert options["runtime_env"]["env_vars"] == {"OMP_NUM_THREADS": "2", "DREAMBOOTH_CACHE": str(tmp_path / "bank")}
    on_cpus = task_options(cfg, cluster_gpus=0)
    assert (on_cpus["num_gpus"], on_cpus["max_calls"]) == (0, 0)  # a CPU-only cluster: runs take CPUs, workers are reused


def test_the_fleet_command_without_ray_says_how_to_install_it_in_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from dreambooth.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed: `import ray` fails
    code = main(["fleet", write(tmp_path, FLEET), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and 'pip install -e ".[fleet]"' in err, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_world_fleet_bench_writes_the_demos_settings_for_each_subject(tmp_path):
    """bench/world_fleet.py's fleet file: the five world subjects, each planned to exactly what the demo trains."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import world_fleet

    from dreambooth.world.demo import demo_settings

    path = world_fleet.fleet_file(tmp_path / "fleet.yaml", list(world_fleet.CLASSES), tmp_path / "inputs", steps=0)
    the_plan = P.plan(str(path), tmp_path / "out", threads=1)
    for s in the_plan.subjects:
        demo = demo_settings(s.name, tmp_path / "inputs" / s.name)
        fleet_owned = dict(output_dir=str(tmp_path / "out" / s.name), threads=1, checkpoint_every=s.cfg.checkpoint_every)
        assert s.cfg == TrainConfig(**{**vars(demo), **fleet_owned}), s.name
    assert [b.subjects for b in the_plan.banks] == [[c] for c in world_fleet.CLASSES]  # a class each: five entries


def test_progress_events_for_people_and_as_json_lines(capsys):
    from dreambooth.fleet.driver import Events, eta

    rows = [{**report.new_row("dog", "done"), "seconds": 60.0, "loss": 0.25}, report.new_row("cat", "running"),
            report.new_row("vase"), report.new_row("pot")]  # fmt: skip
    assert eta(rows, [60.0]) == 180.0  # three to go, one at a time at the pace of the one finished
    Events(as_json=False).state(rows[0])
    Events(as_json=False).summary(rows, eta(rows, [60.0]))
    assert capsys.readouterr().out.splitlines() == [
        "fleet: dog done in 60.0 s, loss 0.2500",
        "fleet: 1 done, 1 running, 2 queued, 0 failed; about 3.0 min left",
    ]
    Events(as_json=True).state(rows[0])
    Events(as_json=True).summary(rows, None)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"event": "state", **rows[0]}
    assert lines[1] == {"event": "summary", "queued": 2, "running": 1, "done": 1, "failed": 0, "eta_seconds": None}
