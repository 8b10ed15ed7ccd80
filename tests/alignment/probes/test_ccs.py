"""CCS recovers a planted truth direction from synthetic contrast-pair states (known answer), either sign."""

from __future__ import annotations

import torch

from mlsafety.alignment.probes import CCS, ccs_loss, normalize


def planted(n: int = 400, d: int = 16, sign: float = 1.0, seed: int = 0):
    """x+ and x- states whose only truth-carrying direction is e_0 (scaled by ``sign``) under a larger
    nuisance direction e_1 shared by both sides, and isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    truth = (2 * y - 1).float() * sign
    nuisance = 4.0 * torch.randn(n, generator=g)
    u, v = torch.eye(d)[0], torch.eye(d)[1]
    pos = torch.randn(n, d, generator=g) + truth[:, None] * 2 * u + nuisance[:, None] * v + 3.0
    neg = torch.randn(n, d, generator=g) - truth[:, None] * 2 * u + nuisance[:, None] * v - 1.0
    return pos, neg, y, u


def test_loss_is_zero_for_a_perfect_consistent_confident_probe_and_penalises_both_failures() -> None:
    assert float(ccs_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == 0.0
    # unconfident: both 0.5 -> consistency 0, confidence 0.25
    assert abs(float(ccs_loss(torch.tensor([0.5]), torch.tensor([0.5]))) - 0.25) < 1e-7
    # inconsistent and confident on the same side: p+ = p- = 1 -> consistency 1, confidence 1
    assert abs(float(ccs_loss(torch.tensor([1.0]), torch.tensor([1.0]))) - 2.0) < 1e-7


def test_ccs_recovers_the_planted_direction_and_its_sign_from_a_label_free_reference() -> None:
    for sign in (1.0, -1.0):
        pos, neg, y, u = planted(sign=sign)
        g = torch.Generator().manual_seed(1)
        # a noisy label-free reference (70% agreement with the truth) is enough to fix the sign
        noisy = torch.where(torch.rand(len(y), generator=g) < 0.7, y, 1 - y)
        reference = (2 * noisy - 1).float()  # agrees with the truth whichever way the direction was planted
        probe = CCS(epochs=300).fit(pos, neg, reference=reference, generator=g)
        cos = float(torch.nn.functional.cosine_similarity(probe.coef_, u, dim=0))
        assert abs(cos) > 0.9, cos  # the direction is the planted one (not the large nuisance one)
        test_pos, test_neg, test_y, _ = planted(sign=sign, seed=5)
        acc = float((probe.predict(test_pos, test_neg) == test_y).float().mean())
        assert acc > 0.95, acc
        assert probe.loss_ < 0.2


def test_the_sign_follows_the_reference_and_the_loss_does_not() -> None:
    pos, neg, y, _ = planted()
    a = CCS(epochs=200).fit(pos, neg, reference=(2 * y - 1).float(), generator=torch.Generator().manual_seed(0))
    b = CCS(epochs=200).fit(pos, neg, reference=(1 - 2 * y).float(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.predict(pos, neg), 1 - b.predict(pos, neg))
    assert a.loss_ == b.loss_


def test_lowest_loss_restart_is_kept() -> None:
    pos, neg, _, _ = planted(n=200)
    one = CCS(restarts=1, epochs=30).fit(pos, neg, generator=torch.Generator().manual_seed(3))
    many = CCS(restarts=8, epochs=30).fit(pos, neg, generator=torch.Generator().manual_seed(3))
    assert many.loss_ <= one.loss_ + 1e-6  # the first restart of "many" is "one"'s; the best can only be lower


def test_normalisation_centres_each_side_and_scales_each_coordinate() -> None:
    pos, _, _, _ = planted()
    z = normalize(pos)
    torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(z.shape[1]), atol=1e-5, rtol=0)


def test_the_hand_written_gradient_is_autograd_s_scale_included() -> None:
    # AdamW's first step is -lr g / (|g| + eps): a gradient off by a constant factor moves it only where |g| is
    # near eps, so the batched-vs-loop comparison cannot see one. With states of scale 1e-8 (weights 1e8, logits
    # of order 1) the weights' gradients are near eps and the step reads each one, scale included: invert it.
    from mlsafety.alignment.probes.ccs import ccs_train

    g = torch.Generator().manual_seed(0)
    n_layers, restarts, n, d = 2, 3, 9, 5
    pos = 1e-8 * torch.randn(n_layers, n, d, generator=g, dtype=torch.float64)
    neg = 1e-8 * torch.randn(n_layers, n, d, generator=g, dtype=torch.float64)
    init = 1e8 * torch.randn(n_layers, restarts, d, generator=g, dtype=torch.float64)
    run = ccs_train(pos, neg, init, epochs=1, lr=1.0, weight_decay=0.0)
    theta0 = torch.cat([init, torch.zeros(n_layers, restarts, 1, dtype=torch.float64)], -1)
    theta1 = torch.cat([run.coefs, run.intercepts[..., None]], -1)
    s = theta0 - theta1  # lr g / (|g| + eps) with lr = 1
    recovered = s * 1e-8 / (1 - s.abs())
    theta = theta0.clone().requires_grad_(True)
    w, b = theta[..., :d], theta[..., d]
    loss = ccs_loss(torch.sigmoid(w @ pos.transpose(1, 2) + b[..., None]),
                    torch.sigmoid(w @ neg.transpose(1, 2) + b[..., None]))  # fmt: skip
    loss.sum().backward()
    assert theta.grad is not None
    assert float(theta.grad[..., :d].abs().max()) < 1e-7  # the weights' gradients are where the step is not sign(g)
    torch.testing.assert_close(recovered, theta.grad, rtol=1e-4, atol=0)
