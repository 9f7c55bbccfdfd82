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


def test_masked_loss_weighs_each_latent_cell():
    pred, target = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    plain = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.7)
    ones = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.7, pixel_weights=torch.ones(4, 1, 3, 3))
    for a, b in zip(plain, ones):
        assert torch.allclose(a, b)
    # instance examples masked out entirely: no instance loss; class examples untouched
    cells = torch.cat([torch.zeros(2, 1, 3, 3), torch.ones(2, 1, 3, 3)])
    _, instance, prior = dreambooth_loss(pred, target, num_class=2, prior_loss_weight=0.7, pixel_weights=cells)
    assert instance.item() == 0.0 and torch.allclose(prior, plain[2])
    # one cell of each instance example kept: its squared error over every cell of the example
    cells[:2, :, 1, 2] = 1.0
    weights = torch.tensor([2.0, 1.0, 1.0, 1.0])
    _, instance, _ = dreambooth_loss(pred, target, 2, 0.7, weights, pixel_weights=cells)
    by_hand = torch.stack([(pred[i, :, 1, 2] - target[i, :, 1, 2]).pow(2).sum() / 18 for i in range(2)])
    assert torch.allclose(instance, (by_hand * weights[:2]).mean())
