"""After its first step, a training step copies nothing from the host to the device: every copy makes the host wait
for the device, so the next step cannot be queued while the device works. Shown with the models on the `meta`
device (shapes, no storage), where any tensor moved from the host is a copy from `cpu` to `meta`."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dreambooth.config import TrainConfig
from dreambooth.models import describe, load_pipeline
from dreambooth.training.loop import optimizer_step
from dreambooth.training.photos import load_folder
from dreambooth.training.setup import make_accelerator, prepare, resolved

aten = torch.ops.aten


class HostToDeviceCopies(TorchDispatchMode):
    """Counts operations that move a tensor from the host to another device."""

    def __init__(self):
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._to_copy.default:
            target = kwargs.get("device")
            if args[0].device.type == "cpu" and target is not None and torch.device(target).type != "cpu":
                self.copies.append(f"{func} {tuple(args[0].shape)}")
        elif func in (aten.copy_.default, aten._copy_from.default):
            dst, src = args[0], args[1]
            if src.device.type == "cpu" and dst.device.type != "cpu":
                self.copies.append(f"{func} {tuple(src.shape)}")
        return func(*args, **kwargs)


def meta_run(photos, tmp_path, model: str, **kw):
    cfg = TrainConfig(
        model=model,
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        class_prompt="a photo of a dog",
        output_dir=str(tmp_path / "out"),
        class_dir=str(tmp_path / "class"),
        with_prior_preservation=True,
        rank=4,
        batch_size=2,
        max_steps=10,
        num_samples=0,
        **kw,
    )
    accelerator = make_accelerator(cfg)
    accelerator.state.device = torch.device("meta")  # the models, caches and every draw go there
    pipe = load_pipeline(model)
    base = describe(pipe, model)
    cfg = resolved(cfg, base)
    images = load_folder(str(photos))
    return prepare(cfg, pipe, base, images, images, accelerator)


@pytest.mark.parametrize(
    "model, settings",
    [
        # trained text encoders (token ids), SDXL's time ids and pooled embeddings
        pytest.param("tiny-sdxl", dict(train_text_encoder=True), marks=pytest.mark.slow),
        # frozen ones (cached embeddings), the base model's own prediction, min-SNR weights, flips
        pytest.param(
            "tiny",
            dict(train_text_encoder=False, prior_mode="base-prediction", snr_gamma=5.0, random_flip=True),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_no_host_to_device_copy_after_the_first_step(photos, tmp_path, model, settings):
    run = meta_run(photos, tmp_path, model, **settings)
    run.examples.precompute()  # what `prepare` does on a GPU: latent posteriors and embeddings, once
    optimizer_step(run, 0)  # fills what is left to fill: token ids, the noise schedule on the device
    counter = HostToDeviceCopies()
    with counter:
        for step in range(1, 3):
            loss = optimizer_step(run, step)
    assert loss.device.type == "meta"
    assert counter.copies == []


def test_the_counter_sees_a_copy(photos, tmp_path):
    counter = HostToDeviceCopies()
    with counter:
        torch.zeros(3).to("meta")
    assert len(counter.copies) == 1
