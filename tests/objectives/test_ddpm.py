import torch

from dreambooth.families.sd import build_tiny as build_tiny_pipeline
from dreambooth.objectives.ddpm import PredictionType, prediction_type, snr_weights, training_target


def test_epsilon_target_is_the_noise():
    sched = build_tiny_pipeline("epsilon").scheduler
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    assert torch.equal(training_target(sched, latents, noise, t), noise)


def test_v_prediction_target_for_an_sd2_style_config():
    sched = build_tiny_pipeline("v_prediction").scheduler
    assert sched.config.prediction_type == "v_prediction"
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    expected = a * noise - s * latents  # v = sqrt(abar) * eps - sqrt(1 - abar) * x0
    assert torch.allclose(training_target(sched, latents, noise, t), expected, atol=1e-6)


def test_min_snr_weights_follow_the_target_kind():
    from diffusers import DDPMScheduler

    t = torch.tensor([10, 500, 990])
    for kind, denominator in (("epsilon", 0), ("v_prediction", 1)):
        sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=kind)
        a = sched.alphas_cumprod[t]
        snr = a / (1 - a)
        assert torch.allclose(snr_weights(sched, t, 5.0), snr.clamp(max=5) / (snr + denominator))
        assert snr_weights(sched, t, 0.0) is None
    w = snr_weights(sched, t, 5.0)
    assert w[1] > 0.4 and w[0] < 0.01 and w[2] < 0.01  # for v: the middle of the schedule counts, both ends hardly


def test_prediction_type_is_read_from_the_scheduler_config():
    assert prediction_type(build_tiny_pipeline("v_prediction").scheduler) is PredictionType.V
    assert prediction_type(build_tiny_pipeline().scheduler) is PredictionType.EPSILON
