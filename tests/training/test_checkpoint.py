"""Crash safety: kill -9 or Ctrl-C a real training process, resume, and get the same LoRA bitwise."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import dreambooth.training.checkpoint as checkpoint_mod
from dreambooth.config import TrainConfig
from dreambooth.errors import TrainingError
from dreambooth.lora.files import WEIGHT_NAME
from dreambooth.training.loop import train

STEPS = 60
SETTINGS = dict(
    model="tiny",
    instance_prompt="a photo of sks dog",
    with_prior_preservation=True,
    class_prompt="a photo of a dog",
    num_class_images=2,
    class_image_steps=2,
    rank=2,
    train_text_encoder=True,
    learning_rate=1e-3,
    lr_scheduler="cosine",
    lr_warmup_steps=5,
    random_flip=True,
    max_steps=STEPS,
    checkpoint_every=5,
    num_samples=0,
    seed=7,
)


def flags(photos, class_dir, out):
    cfg = TrainConfig(instance_dir=str(photos), class_dir=str(class_dir), output_dir=str(out), **SETTINGS)
    argv = []
    for key, value in vars(cfg).items():
        if value != getattr(TrainConfig(), key):
            argv += [f"--{key.replace('_', '-')}"] if value is True else [f"--{key.replace('_', '-')}", str(value)]
    return ["train", *argv]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import SAMPLE

    root = tmp_path_factory.mktemp("whole")
    out = train(TrainConfig(instance_dir=str(SAMPLE), class_dir=str(root / "class"), output_dir=str(root / "run"), **SETTINGS))
    return load_file(str(out / WEIGHT_NAME)), root / "class"


def start(argv):
    return subprocess.Popen(
        [sys.executable, "-m", "dreambooth.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(path, proc, timeout=120):
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "no checkpoint appeared"
        time.sleep(0.01)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def interrupt(class_dir, out, once_saved: int, sig):
    """Start a real training process, send it `sig` once checkpoint `once_saved` exists; (argv, proc, stdout, stderr)."""
    from conftest import SAMPLE

    argv = flags(SAMPLE, class_dir, out)
    proc = start(argv)
    wait_for(out / "checkpoints" / f"step-{once_saved:06d}", proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return argv, proc, stdout, stderr


def resume(argv):
    done = subprocess.run(
        [sys.executable, "-m", "dreambooth.cli", *argv, "--resume"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_the_same_lora(uninterrupted, tmp_path):
    expected, class_dir = uninterrupted
    out = tmp_path / "run"
    argv, proc, _, _ = interrupt(class_dir, out, 15, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / WEIGHT_NAME).exists()  # it really died before the end

    done = resume(argv)
    assert "resumed from step-0000" in done.stdout
    assert same_weights(load_file(str(out / WEIGHT_NAME)), expected)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(uninterrupted, tmp_path):
    expected, class_dir = uninterrupted
    out = tmp_path / "run"
    argv, proc, stdout, stderr = interrupt(class_dir, out, 10, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    step = int(stdout.split("interrupted at step ")[1].split(":")[0])
    assert 10 <= step < STEPS
    state = json.loads((out / "checkpoints" / f"step-{step:06d}" / "state.json").read_text())
    assert state["step"] == step

    resume(argv)
    assert same_weights(load_file(str(out / WEIGHT_NAME)), expected)


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_disk_full_while_saving_keeps_the_previous_checkpoint(photos, tmp_path, monkeypatch):
    real_save_file = checkpoint_mod.save_file
    calls = []

    def full_disk_on_second_save(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            real_save_file(tensors, path, *a, **k)  # half a file reached the disk, then it filled up
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save_file(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint_mod, "save_file", full_disk_on_second_save)
    cfg = TrainConfig(
        model="tiny",
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        output_dir=str(tmp_path / "run"),
        rank=2,
        max_steps=12,
        checkpoint_every=4,
        num_samples=0,
    )
    with pytest.raises(TrainingError, match="step 8.*No space left on device.*step-000004 is intact.*--resume"):
        train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000004"]  # no half-written folder left behind

    (ckpts / ".step-000008.abc.tmp").mkdir()  # what a kill -9 during a save leaves
    monkeypatch.setattr(checkpoint_mod, "save_file", real_save_file)
    out = train(TrainConfig(**{**vars(cfg), "resume": True}))
    assert (out / WEIGHT_NAME).is_file()
    assert not (ckpts / ".step-000008.abc.tmp").exists()


@pytest.mark.slow
def test_nan_keeps_the_last_good_checkpoint(photos, tmp_path, monkeypatch):
    import dreambooth.training.loop as train_mod

    real = train_mod.step_loss

    def nan_from_step_7(cfg, family, unet, sched, examples, micro):
        loss, a, b = real(cfg, family, unet, sched, examples, micro)
        return (loss * float("nan"), a, b) if micro >= 6 else (loss, a, b)

    monkeypatch.setattr(train_mod, "step_loss", nan_from_step_7)
    cfg = TrainConfig(
        model="tiny",
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        output_dir=str(tmp_path / "run"),
        rank=2,
        max_steps=20,
        checkpoint_every=5,
        num_samples=0,
    )
    with pytest.raises(TrainingError, match="loss became nan at step 10"):
        train(cfg)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-000005"]
    tensors = load_file(str(tmp_path / "run" / "checkpoints" / "step-000005" / "state.safetensors"))
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())


def test_optimiser_state_for_another_set_of_weights_is_one_line(tmp_path):
    """An SDXL run with text-encoder LoRA saved by an earlier version had adapters on the first encoder's last layer,
    which now gets none: its optimiser state no longer fits, and resuming says so instead of a traceback."""
    from dreambooth.errors import UsageError
    from dreambooth.training import checkpoint

    def run(n_layers):
        model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(n_layers)])
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        return {"encoder": model}, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    models, optimizer, schedule = run(3)
    saved = checkpoint.save(tmp_path / "checkpoints", 1, models, optimizer, schedule)
    fewer, optimizer, schedule = run(2)
    with pytest.raises(UsageError, match="another set of LoRA weights.*--overwrite"):
        checkpoint.load(saved, fewer, optimizer, schedule)
