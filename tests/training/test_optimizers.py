"""Optimiser and loss-scale state in checkpoints: 8-bit AdamW's nested state and the fp16 GradScaler come back as they
were saved, so a resumed run takes the same steps as one never stopped."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dreambooth import TrainConfig, train
from dreambooth.lora.files import WEIGHT_NAME
from dreambooth.training import checkpoint
from dreambooth.training.setup import make_optimizer


def tiny_net(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    # 5120 weights: bitsandbytes keeps 8-bit state for tensors of 4096 elements or more, fp32 state for the bias
    return torch.nn.Linear(64, 80)


def optimiser(net: torch.nn.Module, name: str, lr: float = 1e-2):
    cfg = TrainConfig(optimizer=name, adam_weight_decay=1e-2)
    optimizer = make_optimizer(cfg, [{"params": list(net.parameters()), "lr": lr}], torch.device("cpu"))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def take_step(net: torch.nn.Module, optimizer, lr_scheduler, step: int) -> None:
    inputs = torch.randn(8, 64, generator=torch.Generator().manual_seed(step))
    net(inputs).pow(2).mean().backward()
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()


def assert_same(a, b, where="state") -> None:
    """`a` and `b` are the same nesting of the same types holding equal values (tensors: dtype and every bit)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b or a != a and b != b, f"{where}: {a!r} != {b!r}"  # NaN equals NaN here


def resume_and_step_both(tmp_path, name: str, edit_meta=None, lr: float = 1e-2):
    """Three steps, a checkpoint, a fresh net and optimiser restored from it, one more step on each; both nets."""
    net = tiny_net(0)
    optimizer, lr_scheduler = optimiser(net, name, lr)
    for step in range(3):
        take_step(net, optimizer, lr_scheduler, step)
    path = checkpoint.save(tmp_path, 3, {"net": net}, optimizer, lr_scheduler)
    if edit_meta:
        meta = checkpoint.read_meta(path)
        edit_meta(meta)
        (path / checkpoint.STATE_JSON).write_text(json.dumps(meta))
    restored = tiny_net(1)
    restored_optimizer, restored_scheduler = optimiser(restored, name, lr)
    assert checkpoint.load(path, {"net": restored}, restored_optimizer, restored_scheduler) == 3
    assert_same(optimizer.state_dict()["state"], restored_optimizer.state_dict()["state"])
    take_step(net, optimizer, lr_scheduler, 3)
    take_step(restored, restored_optimizer, restored_scheduler, 3)
    return net, restored, optimizer


def test_8bit_adam_steps_on_cpu_and_its_checkpoint_restores_it_bitwise(tmp_path):
    pytest.importorskip("bitsandbytes")
    net, restored, optimizer = resume_and_step_both(tmp_path, "adamw8bit")
    assert type(optimizer).__name__ == "AdamW8bit"
    state = load_file(str(tmp_path / "step-000003" / checkpoint.STATE_TENSORS))
    assert any(t.dtype == torch.uint8 for t in state.values())  # the weight's state really was quantised
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), restored.parameters()))


def test_a_checkpoint_with_flat_optimiser_tensors_from_before_nesting_still_resumes(tmp_path):
    # an older checkpoint: AdamW's tensors as optim.<param>.<name>, and no tree of the state in state.json
    def as_older(meta):
        del meta["optimizer"], meta["optimizer_state"]

    net, restored, _ = resume_and_step_both(tmp_path, "adamw", as_older)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), restored.parameters()))


@pytest.mark.parametrize("older", [False, True])
def test_adamw_state_is_refused_by_8bit_adam_in_one_line(tmp_path, older):
    """A run with --optimizer adamw8bit where bitsandbytes was missing (or on a CPU, before) trained with AdamW; resumed
    where bitsandbytes is installed, its state cannot go into 8-bit AdamW."""
    pytest.importorskip("bitsandbytes")
    from dreambooth.errors import UsageError

    net = tiny_net(0)
    optimizer, lr_scheduler = optimiser(net, "adamw")
    take_step(net, optimizer, lr_scheduler, 0)
    path = checkpoint.save(tmp_path, 1, {"net": net}, optimizer, lr_scheduler)
    if older:  # written before checkpoints named their optimiser and kept nesting
        meta = checkpoint.read_meta(path)
        del meta["optimizer"], meta["optimizer_state"]
        (path / checkpoint.STATE_JSON).write_text(json.dumps(meta))
    eight_bit, schedule = optimiser(tiny_net(0), "adamw8bit")
    with pytest.raises(UsageError, match="holds the state of AdamW but this run uses AdamW8bit.*--overwrite"):
        checkpoint.load(path, {"net": tiny_net(0)}, eight_bit, schedule)


class Holder:
    """Stands in for an optimiser or schedule: gives `state` as its state_dict and keeps what it is loaded with."""

    def __init__(self, state: dict):
        self.state, self.loaded = state, None

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def test_any_nesting_of_optimiser_state_comes_back_as_it_was_saved(tmp_path):
    shared = torch.linspace(-1, 1, 256)  # as 8-bit AdamW's quantisation map, held by every parameter's state
    state = {
        0: {
            "qmap": shared,
            "step": 3,
            "outer": {"moment": torch.arange(6, dtype=torch.uint8), "inner": {"scale": torch.ones(2), 7: torch.zeros(1)}},
            "missing": None,
            "flag": True,
            "name": "blockwise",
            "ratio": 0.1,
            "limit": float("inf"),
            "pair": (torch.tensor(1.5), 2),
            "list": [1, [None, "a"]],
            "empty": {},
        },
        5: {"exp_avg": torch.randn(3, 2), "step": torch.tensor(3.0), "qmap": shared},
    }
    optimizer = Holder({"state": state, "param_groups": [{"lr": 0.1, "params": [0, 5]}]})
    path = checkpoint.save(tmp_path, 1, {}, optimizer, Holder({"last_epoch": 1}))
    restored = Holder({})
    checkpoint.load(path, {}, restored, Holder({}))
    assert_same(restored.loaded["state"], state)
    assert restored.loaded["state"][0]["qmap"] is restored.loaded["state"][5]["qmap"]  # stored once, shared again
    assert len([k for k in load_file(str(path / checkpoint.STATE_TENSORS)) if "qmap" in k]) == 1


def test_state_that_is_not_plain_data_is_refused(tmp_path):
    optimizer = Holder({"state": {0: {"when": object()}}, "param_groups": []})
    with pytest.raises(TypeError, match=r"optimiser state \[0\]\['when'\]"):
        checkpoint.save(tmp_path, 1, {}, optimizer, Holder({}))
    assert not list(tmp_path.iterdir())  # nothing half written


def scaler_after_overflows() -> torch.amp.GradScaler:
    """A loss scaler that skipped two steps on inf gradients (65536 -> 16384) and has counted three good ones since."""
    scaler = torch.amp.GradScaler("cpu", growth_interval=5)
    net = tiny_net(0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(5):
        scaler.scale(net(torch.ones(2, 64)).sum()).backward()
        if step < 2:
            net.weight.grad.fill_(float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert scaler.get_scale() == 16384.0 and scaler._get_growth_tracker() == 3
    return scaler


def test_the_loss_scale_and_its_growth_count_come_back_from_a_checkpoint(tmp_path):
    scaler = scaler_after_overflows()
    net = tiny_net(0)
    optimizer, lr_scheduler = optimiser(net, "adamw")
    path = checkpoint.save(tmp_path, 5, {"net": net}, optimizer, lr_scheduler, scaler=scaler)
    restored = torch.amp.GradScaler("cpu")
    checkpoint.load(path, {"net": net}, optimizer, lr_scheduler, scaler=restored)
    assert restored.state_dict() == scaler.state_dict()
    assert restored.get_scale() == 16384.0 and restored._get_growth_tracker() == 3

    # a run without a scaler (not fp16) ignores a saved one; a checkpoint without one leaves the scaler as it is
    checkpoint.load(path, {"net": net}, optimizer, lr_scheduler)
    fresh = torch.amp.GradScaler("cpu")
    checkpoint.load(checkpoint.save(tmp_path, 6, {"net": net}, optimizer, lr_scheduler), {"net": net}, optimizer,
                    lr_scheduler, scaler=fresh)  # fmt: skip
    assert fresh.get_scale() == 65536.0


@pytest.mark.slow  # seconds of whole runs: the full suite keeps it, the fast lane does not
def test_an_8bit_adam_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(photos, tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = TrainConfig(
        model="tiny",
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        output_dir=str(tmp_path / "run"),
        rank=64,  # 64 x 64 LoRA matrices: 4096 elements, enough for bitsandbytes to quantise their state
        optimizer="adamw8bit",
        max_steps=6,
        checkpoint_every=3,
        num_samples=0,
        seed=5,
    )
    out = train(cfg)
    uninterrupted = load_file(str(out / WEIGHT_NAME))
    saved = load_file(str(out / "checkpoints" / "step-000003" / checkpoint.STATE_TENSORS))
    assert any(t.dtype == torch.uint8 for t in saved.values())  # trained with 8-bit state
    shutil.rmtree(out / "checkpoints" / "step-000006")
    (out / WEIGHT_NAME).unlink()

    train(dataclasses.replace(cfg, resume=True))  # steps 4 to 6 again, from the checkpoint of step 3
    resumed = load_file(str(out / WEIGHT_NAME))
    assert uninterrupted.keys() == resumed.keys() and all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed)


def test_prodigy_state_comes_back_from_a_checkpoint_and_steps_on_bitwise(tmp_path):
    net, restored, optimizer = resume_and_step_both(tmp_path, "prodigy", lr=1.0)
    assert type(optimizer).__name__ == "Prodigy"
    group = optimizer.param_groups[0]
    # the authors' settings for LoRAs; its step-size estimate (d and its running sums) travelled in param_groups
    assert group["safeguard_warmup"] and group["use_bias_correction"] and group["weight_decay"] == 1e-2
    assert group["k"] == 4 and group["d_numerator"] > 0 and group["d_hat"] > 0
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), restored.parameters()))


def test_ema_of_the_weights_comes_back_from_a_checkpoint(tmp_path):
    from diffusers.training_utils import EMAModel

    net = tiny_net(0)
    optimizer, lr_scheduler = optimiser(net, "adamw")
    ema = EMAModel(list(net.parameters()), decay=0.9, foreach=True)
    for step in range(3):
        take_step(net, optimizer, lr_scheduler, step)
        ema.step(list(net.parameters()))
    path = checkpoint.save(tmp_path, 3, {"net": net}, optimizer, lr_scheduler, ema=ema)
    restored = tiny_net(1)
    restored_optimizer, restored_scheduler = optimiser(restored, "adamw")
    restored_ema = EMAModel(list(restored.parameters()), decay=0.9, foreach=True)
    checkpoint.load(path, {"net": restored}, restored_optimizer, restored_scheduler, ema=restored_ema)
    assert_same(restored_ema.state_dict(), ema.state_dict())
    for a, b in [(net, ema), (restored, restored_ema)]:
        take_step(a, *([optimizer, lr_scheduler] if a is net else [restored_optimizer, restored_scheduler]), 3)
        b.step(list(a.parameters()))
    assert_same(restored_ema.state_dict(), ema.state_dict())
    assert not torch.equal(ema.shadow_params[0], net.weight)  # an average, not the weights

    # a run with a moving average cannot continue a checkpoint without one
    from dreambooth.errors import UsageError

    plain = checkpoint.save(tmp_path, 4, {"net": net}, optimizer, lr_scheduler)
    with pytest.raises(UsageError, match="no moving average.*--ema-decay 0"):
        checkpoint.load(plain, {"net": restored}, restored_optimizer, restored_scheduler, ema=restored_ema)


@pytest.mark.slow  # seconds of whole runs
@pytest.mark.parametrize(
    "extra",
    [{"optimizer": "prodigy", "learning_rate": 1.0}, {"ema_decay": 0.9, "use_ema_weights": True}],
    ids=["prodigy", "ema"],
)
def test_a_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(photos, tmp_path, extra):
    cfg = TrainConfig(
        model="tiny",
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        output_dir=str(tmp_path / "run"),
        rank=4,
        max_steps=6,
        checkpoint_every=3,
        num_samples=0,
        seed=5,
        **extra,
    )
    out = train(cfg)
    uninterrupted = load_file(str(out / WEIGHT_NAME))
    ended = load_file(str(out / "checkpoints" / "step-000006" / checkpoint.STATE_TENSORS))
    if cfg.use_ema_weights:  # the LoRA file is the average the checkpoint kept, not the last weights
        assert any(k.startswith("ema.") for k in ended)
        assert not all(torch.equal(ended[k], ended["ema." + k.removeprefix("param.")]) for k in ended if k.startswith("param."))
    shutil.rmtree(out / "checkpoints" / "step-000006")
    (out / WEIGHT_NAME).unlink()

    train(dataclasses.replace(cfg, resume=True))  # steps 4 to 6 again, from the checkpoint of step 3
    resumed = load_file(str(out / WEIGHT_NAME))
    assert uninterrupted.keys() == resumed.keys() and all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed)
    again = load_file(str(out / "checkpoints" / "step-000006" / checkpoint.STATE_TENSORS))
    assert ended.keys() == again.keys() and all(torch.equal(ended[k], again[k]) for k in ended)
