import torch

from dreambooth.training.loss import dreambooth_loss


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


def test_weighted_loss_with_unit_weights_is_the_plain_loss():
    pred, target = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    plain = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.7)
    weighted = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.7, weights=torch.ones(4))
    for a, b in zip(plain, weighted):
        assert torch.allclose(a, b)
    halved = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.7, weights=torch.tensor([1.0, 1.0, 0.5, 0.5]))
    assert torch.allclose(halved[2], plain[2] / 2) and torch.allclose(halved[1], plain[1])
