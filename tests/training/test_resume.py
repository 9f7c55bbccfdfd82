"""Old state meets a new run: resume with changed settings, damaged checkpoints, reused output folders."""

import shutil

import pytest

from dreambooth.cli import main

ARGS = ["--model", "tiny", "--instance-prompt", "a photo of sks dog", "--rank", "2", "--num-samples", "0",
        "--checkpoint-every", "2", "--checkpoints-total-limit", "3"]  # fmt: skip


def train(photos, out, capsys, *extra):
    code = main(["train", "--instance-dir", str(photos), "--output-dir", str(out), *ARGS, *extra])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 4 steps with checkpoints at steps 2 and 4 and its LoRA."""
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(["train", "--instance-dir", str(SAMPLE), "--output-dir", str(out), *ARGS, "--max-steps", "4"]) == 0
    return out


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("dreambooth: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--rank", "4"], ["--rank is 4", "trained with 2", "--rank 2"]),
        (["--train-text-encoder"], ["--train-text-encoder is True", "trained with False", "pass --no-train-text-encoder"]),
        (["--lora-alpha", "8"], ["--lora-alpha is 8.0", "trained with 2.0"]),
        (["--adapter", "lokr"], ["--adapter is 'lokr'", "trained with 'lora'", "pass --adapter lora"]),
        (["--target-modules", "to_q", "to_v"], ["--target-modules is ['to_q', 'to_v']", "pass --target-modules to_q to_k"]),
    ],
)
def test_resume_with_a_setting_that_must_match_is_refused_in_one_line(run, photos, capsys, extra, names):
    code, err = train(photos, run, capsys, "--resume", "--max-steps", "6", *extra)
    line = one_error_line(err)
    assert code == 2 and all(n in line for n in names) and "--overwrite" in line, line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]  # nothing written


def test_resume_onto_another_base_with_the_same_shapes_is_refused(run, photos, capsys, tmp_path):
    from dreambooth.families import sd

    other = tmp_path / "other-base"
    sd.build_tiny(seed=1).save_pretrained(other)  # the tiny model's shapes, other weights
    code, err = train(photos, run, capsys, "--resume", "--max-steps", "6", "--model", str(other))
    assert code == 2 and "not the base model the run" in one_error_line(err)


def test_resume_onto_the_same_weights_with_another_prediction_type_is_refused(run, photos, capsys):
    """`tiny-v` is `tiny`'s weights bitwise with a v-prediction scheduler: its fingerprint passes, its objective not."""
    code, err = train(photos, run, capsys, "--resume", "--max-steps", "6", "--model", "tiny-v")
    line = one_error_line(err)
    assert code == 2 and "prediction_type v_prediction (the run: epsilon)" in line and "--overwrite" in line, line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]  # nothing written


def test_resume_onto_a_shifted_flow_schedule_is_refused(photos, tmp_path, capsys):
    """A flow base saved with another shift: the same weights, noise levels drawn elsewhere."""
    import json

    from dreambooth.families import sd3

    base = tmp_path / "sd3"
    sd3.build_tiny().save_pretrained(base)
    out = tmp_path / "run"
    args = ["--model", str(base), "--max-steps", "2", "--checkpoint-every", "1"]
    assert main(["train", "--instance-dir", str(photos), "--output-dir", str(out), *ARGS, *args]) == 0
    config = base / "scheduler" / "scheduler_config.json"
    settings = json.loads(config.read_text())
    config.write_text(json.dumps({**settings, "shift": settings.get("shift", 1.0) + 2.0}))
    capsys.readouterr()
    code, err = train(photos, out, capsys, "--resume", "--model", str(base), "--max-steps", "3")
    assert code == 2 and "shift" in one_error_line(err)


def test_settings_that_may_change_are_listed_and_the_resume_is_recorded(run, photos, capsys):
    code, err = train(photos, run, capsys, "--resume", "--max-steps", "6", "--sample-steps", "3")
    assert code == 0, err
    warning = [line for line in err.splitlines() if "changed settings" in line]
    assert len(warning) == 1 and "max_steps 4 -> 6" in warning[0] and "sample_steps 25 -> 3" in warning[0]
    saved = (run / "config.yaml").read_text()
    assert "# resumed from checkpoints/step-000004 (step 4); changed: " in saved and "max_steps 4 -> 6" in saved
    assert (run / "checkpoints" / "step-000006").is_dir()


def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(run, photos, capsys):
    from dreambooth.training import checkpoint

    tensors = run / "checkpoints" / "step-000004" / "state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-100])  # cut short, as a full disk or a killed copy leaves it
    code, err = train(photos, run, capsys, "--resume", "--max-steps", "6")
    assert code == 0, err
    assert "step-000004 is damaged (state.safetensors does not match its checksum)" in err
    assert "# resumed from checkpoints/step-000002 (step 2)" in (run / "config.yaml").read_text()
    # steps 3 and 4 were trained again, and step 4's checkpoint written anew
    assert [checkpoint.problem(p) for p in sorted((run / "checkpoints").iterdir())] == [None, None, None]


def test_no_intact_checkpoint_is_one_line_and_exit_2(run, photos, capsys):
    for step in ("step-000002", "step-000004"):
        (run / "checkpoints" / step / "state.json").write_text("{")
    code, err = train(photos, run, capsys, "--resume", "--max-steps", "6")
    assert code == 2 and "no intact checkpoint" in one_error_line(err)


def test_a_new_run_into_a_folder_with_another_run_is_refused_or_sets_it_aside(run, photos, capsys):
    code, err = train(photos, run, capsys, "--max-steps", "2")
    line = one_error_line(err)
    assert code == 2 and "holds the checkpoints of another run (up to step-000004)" in line and "--resume" in line
    code, err = train(photos, run, capsys, "--max-steps", "2", "--overwrite")
    assert code == 0, err
    aside = [p for p in run.parent.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "step-000004").is_dir()  # the old run, kept whole
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]
    code, err = train(photos, run, capsys, "--resume", "--overwrite")
    assert code == 2 and "choose one" in one_error_line(err)


def test_pruning_never_removes_the_last_intact_checkpoint(run):
    from dreambooth.training import checkpoint

    folder = run / "checkpoints"
    (folder / "step-000004" / "state.json").write_text("{")
    checkpoint.prune(folder, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002"]


def test_pruning_tells_a_cut_short_checkpoint_by_its_size(run):
    from dreambooth.training import checkpoint

    folder = run / "checkpoints"
    tensors = folder / "step-000004" / "state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-100])
    assert "bytes, not" in checkpoint.problem(folder / "step-000004", full=False)
    checkpoint.prune(folder, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002"]
