import torch

from dreambooth.loss import dreambooth_loss, training_target
from dreambooth.models import build_tiny_pipeline


def test_prior_preservation_loss_matches_hand_computation():
    # 2 instance + 2 class examples, values chosen so each MSE is easy to do by hand.
    pred = torch.zeros(4, 1, 1, 2)
    target = torch.tensor([1.0, 1.0, 3.0, 1.0, 2.0, 0.0, 0.0, 0.0]).reshape(4, 1, 1, 2)
    total, instance, prior = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.5)
    # instance: (1 + 1 + 9 + 1) / 4 = 3.0 ; class: (4 + 0 + 0 + 0) / 4 = 1.0 ; total = 3.0 + 0.5 * 1.0
    assert instance.item() == 3.0
    assert prior.item() == 1.0
    assert total.item() == 3.5


def test_without_prior_preservation_the_loss_is_plain_mse():
    pred, target = torch.ones(2, 4), torch.zeros(2, 4)
    total, instance, prior = dreambooth_loss(pred, target, num_class=0, prior_loss_weight=1.0)
    assert total.item() == 1.0 and prior.item() == 0.0


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

    from dreambooth.loss import snr_weights

    t = torch.tensor([10, 500, 990])
    for kind, denominator in (("epsilon", 0), ("v_prediction", 1)):
        sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=kind)
        a = sched.alphas_cumprod[t]
        snr = a / (1 - a)
        assert torch.allclose(snr_weights(sched, t, 5.0), snr.clamp(max=5) / (snr + denominator))
        assert snr_weights(sched, t, 0.0) is None
    w = snr_weights(sched, t, 5.0)
    assert w[1] > 0.4 and w[0] < 0.01 and w[2] < 0.01  # for v: the middle of the schedule counts, both ends hardly


def test_weighted_loss_with_unit_weights_is_the_plain_loss():
    pred, target = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    plain = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.7)
    weighted = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.7, weights=torch.ones(4))
    for a, b in zip(plain, weighted):
        assert torch.allclose(a, b)
    halved = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.7, weights=torch.tensor([1.0, 1.0, 0.5, 0.5]))
    assert torch.allclose(halved[2], plain[2] / 2) and torch.allclose(halved[1], plain[1])
