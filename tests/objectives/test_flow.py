"""The rectified-flow objective against hand computations."""

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dreambooth.objectives.flow import FLOW, add_noise, draw_timesteps, loss_weights, shifted, velocity


def settings(scheme="none", **kw):
    return SimpleNamespace(weighting_scheme=scheme, logit_mean=0.0, logit_std=1.0, mode_scale=1.29, **kw)


def test_noising_interpolates_and_the_target_is_the_velocity():
    sched = FlowMatchEulerDiscreteScheduler()
    x, n = torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 2, 2), -1.0)
    t = torch.tensor([250.0, 1000.0])  # noise levels 0.25 and 1
    noisy = add_noise(sched, x, n, t)
    assert noisy[0].unique().item() == pytest.approx(0.75 * 2 + 0.25 * -1)  # 1.25
    assert noisy[1].unique().item() == pytest.approx(-1.0)  # pure noise at level 1
    assert torch.equal(velocity(sched, x, n, t), n - x)


def test_fixed_shift_moves_levels_toward_noise_as_sd3_samples():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s = torch.tensor([0.1, 0.5, 0.9])
    expected = [3 * v / (1 + 2 * v) for v in (0.1, 0.5, 0.9)]  # 0.25, 0.75, 0.9643
    assert shifted(sched, s, torch.zeros(1, 16, 8, 8)).tolist() == pytest.approx(expected)


def test_dynamic_shift_grows_with_the_image_token_count_as_flux_samples():
    sched = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    s = torch.tensor([0.5])
    # 1024 px: 128x128 latents, 4096 tokens of 2x2 patches: mu = max_shift = 1.15; at level 0.5, e^mu / (e^mu + 1)
    big = shifted(sched, s, torch.zeros(1, 16, 128, 128)).item()
    assert big == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1))  # 0.7595
    # 512 px: 1024 tokens: mu = 0.5 + 0.65 * (1024 - 256) / 3840 = 0.63
    small = shifted(sched, s, torch.zeros(1, 16, 64, 64)).item()
    assert small == pytest.approx(math.exp(0.63) / (math.exp(0.63) + 1))
    assert small < big


def test_each_example_draws_from_its_own_generator():
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    both = draw_timesteps(sched, gens(), torch.zeros(2, 4, 8, 8), settings("logit_normal"))
    alone = draw_timesteps(sched, gens()[1:], torch.zeros(1, 4, 8, 8), settings("logit_normal"))
    assert both[1] == alone[0]  # the second example draws the same whatever comes before it
    u = torch.sigmoid(torch.normal(0.0, 1.0, (1,), generator=torch.Generator().manual_seed(1)))
    assert both[0].item() == pytest.approx(u.item() * 1000, rel=1e-6)  # logit-normal, no shift, as timesteps


def test_loss_weights_of_sigma_sqrt_and_cosmap_and_none_for_the_others():
    sched = FlowMatchEulerDiscreteScheduler()
    t = torch.tensor([250.0, 500.0])
    assert loss_weights(sched, t, settings("sigma_sqrt")).tolist() == pytest.approx([16.0, 4.0])  # 1 / s^2
    cosmap = [2 / (math.pi * (1 - 2 * s + 2 * s * s)) for s in (0.25, 0.5)]
    assert loss_weights(sched, t, settings("cosmap")).tolist() == pytest.approx(cosmap)
    for scheme in ("none", "logit_normal", "mode"):
        assert loss_weights(sched, t, settings(scheme)) is None


def test_flow_models_sample_with_their_own_scheduler():
    pipe = SimpleNamespace(scheduler=FlowMatchEulerDiscreteScheduler())
    assert FLOW.sampler(pipe) is pipe.scheduler
