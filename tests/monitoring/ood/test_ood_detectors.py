"""Known answers for each detector: hand computations and brute-force versions on tiny linear models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, InputError, generator
from mlsafety.metrics import OOD_METRICS, bootstrap_two_sample, ood_metrics
from mlsafety.monitoring import ood
from mlsafety.monitoring.ood.mc_dropout import _cpu_mask_forward
from tests.support.devices import refuse_global_reseeding


def linear(d: int = 4, k: int = 3, seed: int = 0) -> nn.Module:
    """Features are the flattened input: ``x`` (N, 1, 2, 2) -> ``W x + b``."""
    g = generator(seed, "linear")
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g))
        lin.bias.copy_(torch.randn(k, generator=g))
    return nn.Sequential(nn.Flatten(), lin).eval()


def images(n: int, name: str, d: int = 4) -> torch.Tensor:
    side = math.isqrt(d)
    return torch.rand(n, 1, side, side, generator=generator(0, name))


@pytest.fixture
def model() -> nn.Module:
    return linear()


@pytest.fixture
def fit_x() -> torch.Tensor:
    return images(80, "fit")


@pytest.fixture
def x() -> torch.Tensor:
    return images(15, "x")


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).double()


# -- logit detectors ---------------------------------------------------------------------------
def test_logit_scores_equal_their_closed_forms(model, x) -> None:
    z = logits_of(model, x)
    p = z.softmax(1)
    expected = {
        "msp": -p.max(1).values,
        "max-logit": -z.max(1).values,
        "energy": -torch.logsumexp(z, 1),
        "entropy": -(p * p.log()).sum(1),
        "gen": (p**0.1 * (1 - p) ** 0.1).sum(1),
    }
    for name, want in expected.items():
        got = ood.create(name).score(model, x)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6, msg=name)


def test_energy_temperature(model, x) -> None:
    z = logits_of(model, x)
    got = ood.create("energy", temperature=2.0).score(model, x)
    torch.testing.assert_close(got.double(), -2 * torch.logsumexp(z / 2, 1), rtol=1e-5, atol=1e-6)


def test_gen_top_m_keeps_the_largest(model, x) -> None:
    p = logits_of(model, x).softmax(1)
    top2 = p.sort(1, descending=True).values[:, :2]
    got = ood.create("gen", gamma=0.5, top_m=2).score(model, x)
    torch.testing.assert_close(got.double(), (top2.sqrt() * (1 - top2).sqrt()).sum(1), rtol=1e-5, atol=1e-6)


def test_kl_matching_templates_and_brute_force(model, fit_x, x) -> None:
    det = ood.create("kl-matching").fit(model, fit_x)
    pf = logits_of(model, fit_x).softmax(1)
    pred = pf.argmax(1)
    for k in range(3):
        if (pred == k).any():
            torch.testing.assert_close(det.templates_[k], pf[pred == k].mean(0))
    p = logits_of(model, x).softmax(1)
    want = torch.tensor(
        [min(float((pi * (pi / det.templates_[k]).log()).sum()) for k in range(3)) for pi in p], dtype=torch.float64
    )
    torch.testing.assert_close(det.score(model, x).double(), want, rtol=1e-5, atol=1e-6)


def test_kl_matching_leaves_out_a_class_never_predicted() -> None:
    # fit inputs the model never predicts as class 2: only classes 0 and 1 have templates (a phantom template at the
    # overall mean softmax changed the scores of about a quarter of these 200 inputs)
    model = linear()
    fit_x, x = images(200, "kl-fit"), images(200, "kl-x")
    fit_x = fit_x[logits_of(model, fit_x).argmax(1) != 2]
    det = ood.create("kl-matching").fit(model, fit_x)
    pf = logits_of(model, fit_x).softmax(1)
    templates = torch.stack([pf[pf.argmax(1) == k].mean(0) for k in range(2)])
    p = logits_of(model, x).softmax(1)
    want = (p[:, None] * (p[:, None] / templates[None]).log()).sum(2).min(1).values
    torch.testing.assert_close(det.score(model, x).double(), want, rtol=1e-5, atol=1e-6)


def test_temperature_msp_with_a_fixed_temperature(model, fit_x, x) -> None:
    det = ood.create("temperature-msp", temperature=3.0).fit(model, fit_x)
    want = -(logits_of(model, x) / 3).softmax(1).max(1).values
    torch.testing.assert_close(det.score(model, x).double(), want, rtol=1e-5, atol=1e-6)


def test_temperature_msp_fits_the_nll_temperature(model, fit_x) -> None:
    from mlsafety.monitoring.calibration import TemperatureScaler

    y = torch.randint(0, 3, (80,), generator=generator(0, "labels"))
    det = ood.create("temperature-msp").fit(model, (fit_x, y))
    assert det.temperature_ == pytest.approx(TemperatureScaler().fit(logits_of(model, fit_x), y).temperature_)


def test_odin_without_noise_is_temperature_scaled_msp(model, x) -> None:
    got = ood.create("odin", temperature=10.0, noise=0.0).score(model, x)
    torch.testing.assert_close(got.double(), -(logits_of(model, x) / 10).softmax(1).max(1).values, rtol=1e-5, atol=1e-6)


def test_odin_step_raises_the_top_softmax(model) -> None:
    x = images(40, "odin").clamp(0.1, 0.9)  # away from the clip so the step is never cut
    plain = ood.create("odin", temperature=10.0, noise=0.0).score(model, x)
    stepped = ood.create("odin", temperature=10.0, noise=0.05).score(model, x)
    assert (stepped < plain).all()  # a more confident top class = a lower anomaly score


def test_odin_equals_one_signed_gradient_step_at_the_temperature(model) -> None:
    # x' = clip(x + eps * sign(grad_x log max softmax(f(x) / T))), score -max softmax(f(x') / T): the temperature
    # enters the gradient too (a step on the untempered softmax moves some pixels the other way)
    x = images(20, "odin-brute").clamp(0.1, 0.9)
    t, eps = 5.0, 0.02
    xg = x.clone().requires_grad_(True)
    (model(xg) / t).log_softmax(1).max(1).values.sum().backward()
    assert xg.grad is not None
    moved = (x + eps * xg.grad.sign()).clamp(0, 1)
    want = -logits_of(model, moved).div(t).softmax(1).max(1).values
    got = ood.create("odin", temperature=t, noise=eps).score(model, x)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


# -- feature and distance detectors -------------------------------------------------------------
def test_mahalanobis_equals_the_closed_form(model, fit_x, x) -> None:
    y = torch.randint(0, 3, (80,), generator=generator(0, "maha"))
    det = ood.create("mahalanobis").fit(model, (fit_x, y))
    f = fit_x.flatten(1).double().numpy()
    yn = y.numpy()
    means = np.stack([f[yn == k].mean(0) for k in range(3)])
    cov = sum(np.outer(f[i] - means[yn[i]], f[i] - means[yn[i]]) for i in range(len(f))) / len(f)
    prec = np.linalg.inv(cov)
    q = x.flatten(1).double().numpy()
    want = [min((qi - m) @ prec @ (qi - m) for m in means) for qi in q]
    np.testing.assert_allclose(det.score(model, x).double().numpy(), want, rtol=1e-4)


@pytest.mark.parametrize("name", ["mahalanobis", "rmd"])
def test_a_class_without_fit_inputs_has_no_gaussian(name: str, model, fit_x, x) -> None:
    # labels 0 and 1 only, for a 3-class model: class 2 has no Gaussian, so no input may be scored against one at
    # the overall mean (where a phantom class 2 would lie: the last input, the mean image, would then score 0)
    y = torch.randint(0, 2, (80,), generator=generator(0, "two-classes"))
    x = torch.cat([x, fit_x.mean(0, keepdim=True)])
    det = ood.create(name).fit(model, (fit_x, y))
    f = fit_x.flatten(1).double().numpy()
    yn = y.numpy()
    means = np.stack([f[yn == k].mean(0) for k in range(2)])
    centred = f - means[yn]
    prec = np.linalg.inv(centred.T @ centred / len(f))
    q = x.flatten(1).double().numpy()
    md = np.stack([[(qi - m) @ prec @ (qi - m) for m in means] for qi in q])
    if name == "rmd":
        mu0, prec0 = f.mean(0), np.linalg.inv(np.cov(f.T, bias=True))
        md = md - np.array([(qi - mu0) @ prec0 @ (qi - mu0) for qi in q])[:, None]
    np.testing.assert_allclose(det.score(model, x).double().numpy(), md.min(1), rtol=1e-4, atol=1e-6)


def test_rmd_subtracts_the_background_distance(model, fit_x, x) -> None:
    y = torch.randint(0, 3, (80,), generator=generator(0, "rmd"))
    det = ood.create("rmd").fit(model, (fit_x, y))
    maha = ood.create("mahalanobis").fit(model, (fit_x, y))
    f = fit_x.flatten(1).double().numpy()
    mu0 = f.mean(0)
    prec0 = np.linalg.inv(np.cov(f.T, bias=True))
    q = x.flatten(1).double().numpy()
    md = np.stack([[(qi - m) @ np.linalg.inv(np.linalg.inv(maha.precision_.numpy())) @ (qi - m)
                    for m in maha.means_.numpy()] for qi in q])  # fmt: skip
    md0 = np.array([(qi - mu0) @ prec0 @ (qi - mu0) for qi in q])
    np.testing.assert_allclose(det.score(model, x).double().numpy(), (md - md0[:, None]).min(1), rtol=1e-4, atol=1e-6)


def test_knn_equals_brute_force(model, fit_x, x) -> None:
    det = ood.create("knn", k=5, chunk=4).fit(model, fit_x)
    bank = nn.functional.normalize(fit_x.flatten(1), dim=1)
    q = nn.functional.normalize(x.flatten(1), dim=1)
    want = [sorted(float((qi - b).norm()) for b in bank)[4] for qi in q]
    np.testing.assert_allclose(det.score(model, x).numpy(), want, rtol=1e-5, atol=1e-6)


def test_knn_k_is_capped_at_the_bank_size(model, x) -> None:
    det = ood.create("knn", k=500).fit(model, images(6, "small-bank"))
    assert torch.isfinite(det.score(model, x)).all()


def _vim_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return linear(d=16, k=3, seed=1), images(200, "vim-fit", d=16), images(10, "vim-x", d=16)


def test_vim_residual_is_orthogonal_to_the_principal_subspace() -> None:
    model, fit_x, x = _vim_model()
    det = ood.create("vim", dim=5).fit(model, fit_x)
    clf = Classifier(model)
    w, b = clf.head_weight.double(), clf.head_bias.double()
    u = -(torch.linalg.pinv(w) @ b)
    centred = fit_x.flatten(1).double() - u
    _, vecs = torch.linalg.eigh(centred.T @ centred / len(centred))
    principal = vecs[:, -5:]
    assert det.residual_basis_.shape == (16, 11)
    torch.testing.assert_close(principal.T @ det.residual_basis_, torch.zeros(5, 11, dtype=torch.float64), atol=1e-8,
                               rtol=0)  # fmt: skip
    q = x.flatten(1).double() - u
    residual = q - q @ principal @ principal.T
    torch.testing.assert_close(det.residual(x.flatten(1)), residual.norm(dim=1))
    alpha = logits_of(model, fit_x).max(1).values.mean() / det.residual(fit_x.flatten(1)).mean()
    want = alpha * residual.norm(dim=1) - torch.logsumexp(logits_of(model, x), 1)
    torch.testing.assert_close(det.score(model, x).double(), want, rtol=1e-5, atol=1e-5)
    res = ood.create("residual", dim=5).fit(model, fit_x).score(model, x)
    torch.testing.assert_close(res.double(), residual.norm(dim=1), rtol=1e-5, atol=1e-6)


def test_vim_rejects_a_bad_dimension(model, fit_x) -> None:
    with pytest.raises(InputError, match="principal dimension"):
        ood.create("vim", dim=4).fit(model, fit_x)


def test_she_uses_the_pattern_of_the_predicted_class(model, fit_x, x) -> None:
    z = logits_of(model, fit_x)
    y = z.argmax(1).clone()
    y[:10] = (y[:10] + 1) % 3  # some wrong labels: they must not enter the patterns
    det = ood.create("she").fit(model, (fit_x, y))
    f = fit_x.flatten(1).double()
    right = z.argmax(1) == y
    pred = logits_of(model, x).argmax(1)
    for k in range(3):
        if (right & (y == k)).any():
            torch.testing.assert_close(det.patterns_[k], f[right & (y == k)].mean(0))
    want = -(x.flatten(1).double() * det.patterns_[pred]).sum(1)
    torch.testing.assert_close(det.score(model, x).double(), want, rtol=1e-5, atol=1e-6)


def test_she_scores_an_input_of_an_unseen_class_with_the_seen_class_of_largest_logit(model, fit_x, x) -> None:
    """A class with no fit input has no stored pattern: an input predicted as it is scored with the pattern of
    the seen class of largest logit (a hand computation), not with a zero pattern (score 0 whatever the input)."""
    z = logits_of(model, fit_x)
    y = z.argmax(1).clone()
    keep = y != 1  # no fit input of class 1
    det = ood.create("she").fit(model, (fit_x[keep], y[keep]))
    assert det.seen_.tolist() == [True, False, True]
    zx = logits_of(model, x)
    unseen = zx.argmax(1) == 1
    assert 0 < int(unseen.sum()) < x.shape[0]
    f = fit_x[keep].flatten(1).double()
    patterns = {c: f[y[keep] == c].mean(0) for c in (0, 2)}  # every fit label is the prediction: all correct
    use = torch.where(zx[:, 0] >= zx[:, 2], 0, 2)
    want = -torch.stack([x.flatten(1).double()[i] @ patterns[int(c)] for i, c in enumerate(use)])
    got = det.score(model, x).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert bool((got[unseen] != 0).all())


def test_nnguide_equals_brute_force(model, fit_x, x) -> None:
    det = ood.create("nnguide", k=7, chunk=4).fit(model, fit_x)
    bank = (
        nn.functional.normalize(fit_x.flatten(1), dim=1) * torch.logsumexp(logits_of(model, fit_x), 1)[:, None].float()
    )
    q = nn.functional.normalize(x.flatten(1), dim=1)
    guidance = torch.tensor([sorted((bank @ qi).tolist(), reverse=True)[:7] for qi in q]).mean(1)
    want = -(torch.logsumexp(logits_of(model, x), 1).float() * guidance)
    torch.testing.assert_close(det.score(model, x), want, rtol=1e-4, atol=1e-5)


def test_fdbd_equals_the_distance_to_each_hyperplane(model, fit_x, x) -> None:
    det = ood.create("fdbd").fit(model, fit_x)
    clf = Classifier(model)
    w, b = clf.head_weight.double(), clf.head_bias.double()
    mu = fit_x.flatten(1).double().mean(0)
    want = []
    for fi in x.flatten(1).double():
        z = w @ fi + b
        c = int(z.argmax())
        dists = [abs(float((w[c] - w[k]) @ fi + b[c] - b[k])) / float((w[c] - w[k]).norm()) for k in range(3) if k != c]
        want.append(-np.mean(dists) / float((fi - mu).norm()))
    np.testing.assert_allclose(det.score(model, x).double().numpy(), want, rtol=1e-5)


# -- activation shaping ------------------------------------------------------------------------
def _energy_from_features(model: nn.Module, f: torch.Tensor) -> torch.Tensor:
    clf = Classifier(model)
    return -torch.logsumexp(f.double() @ clf.head_weight.double().T + clf.head_bias.double(), 1)


def test_react_clips_at_the_percentile(model, fit_x, x) -> None:
    det = ood.create("react", percentile=70).fit(model, fit_x)
    c = float(np.percentile(fit_x.flatten().numpy(), 70))
    assert det.threshold_ == pytest.approx(c, rel=1e-5)
    want = _energy_from_features(model, x.flatten(1).clamp(max=c))
    torch.testing.assert_close(det.score(model, x).double(), want, rtol=1e-5, atol=1e-5)


def test_ash_s_prunes_and_scales() -> None:
    model = linear(d=16, k=3, seed=2)
    x = images(6, "ash", d=16)
    det = ood.create("ash", percentile=75)
    f = x.flatten(1)
    shaped = det.shape(f)
    assert ((shaped > 0).sum(1) == 4).all()  # 25% of 16 kept
    for fi, si in zip(f, shaped):
        keep = fi.topk(4).indices
        s1, s2 = fi.sum(), fi[keep].sum()
        torch.testing.assert_close(si[keep], fi[keep] * torch.exp(s1 / s2))
    torch.testing.assert_close(det.score(model, x).double(), _energy_from_features(model, shaped), rtol=1e-5, atol=1e-5)


def test_ash_b_binarises_the_kept_activations_to_the_row_mean_mass() -> None:
    # ASH-B: keep each row's top 25% (4 of 16), set each kept value to s1 / 4 (the row's whole sum spread evenly)
    model = linear(d=16, k=3, seed=2)
    x = images(6, "ash-b", d=16)
    f = x.flatten(1).double()
    want = torch.zeros_like(f)
    for i, fi in enumerate(f):
        want[i, fi.topk(4).indices] = fi.sum() / 4
    det = ood.create("ash", percentile=75, variant="b")
    torch.testing.assert_close(det.shape(x.flatten(1)).double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(det.score(model, x).double(), _energy_from_features(model, want), rtol=1e-5, atol=1e-5)


def test_scale_multiplies_by_exp_of_the_sum_over_the_top_sum() -> None:
    model = linear(d=16, k=3, seed=2)
    x = images(6, "scale", d=16)
    f = x.flatten(1).double()
    r = torch.exp(f.sum(1) / f.topk(4, dim=1).values.sum(1))  # percentile 75 of 16: the top 4
    got = ood.create("scale", percentile=75).score(model, x)
    torch.testing.assert_close(got.double(), _energy_from_features(model, f * r[:, None]), rtol=1e-5, atol=1e-5)


def test_ash_p_without_pruning_is_energy(model, x) -> None:
    got = ood.create("ash", percentile=0, variant="p").score(model, x)
    torch.testing.assert_close(got, ood.create("energy").score(model, x), rtol=1e-5, atol=1e-5)


def test_scale_without_pruning_scales_by_e(model, x) -> None:
    got = ood.create("scale", percentile=0).score(model, x)
    want = _energy_from_features(model, x.flatten(1) * math.e)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_dice_mask_and_score(model, fit_x, x) -> None:
    det = ood.create("dice", percentile=50).fit(model, fit_x)
    clf = Classifier(model)
    contrib = fit_x.flatten(1).mean(0)[None] * clf.head_weight
    assert int(det.mask_.sum()) == 6  # half of 3 x 4
    assert contrib[det.mask_].min() >= contrib[~det.mask_].max()
    want = -torch.logsumexp(x.flatten(1) @ (clf.head_weight * det.mask_).T + clf.head_bias, 1)
    torch.testing.assert_close(det.score(model, x), want, rtol=1e-5, atol=1e-5)
    dense = ood.create("dice", percentile=0).fit(model, fit_x).score(model, x)
    torch.testing.assert_close(dense, ood.create("energy").score(model, x), rtol=1e-5, atol=1e-5)


def test_gradnorm_equals_autograd(model, x) -> None:
    head = model[1]
    want = []
    for xi in x:
        head.weight.grad = None
        z = model(xi[None])
        loss = -(z.log_softmax(1)).mean()  # KL(uniform || softmax) up to a constant
        loss.backward()
        want.append(-float(head.weight.grad.abs().sum()))
    head.weight.grad = None
    np.testing.assert_allclose(ood.create("gradnorm").score(model, x).numpy(), want, rtol=1e-5)


def test_gradnorm_temperature_scales_the_softmax_and_the_gradient(model, x) -> None:
    head = model[1]
    want = []
    for xi in x:
        head.weight.grad = None
        loss = -(model(xi[None]) / 2.0).log_softmax(1).mean()  # KL(uniform || softmax(z / T)) up to a constant
        loss.backward()
        want.append(-float(head.weight.grad.abs().sum()))
    head.weight.grad = None
    np.testing.assert_allclose(ood.create("gradnorm", temperature=2.0).score(model, x).numpy(), want, rtol=1e-5)


# -- ensembles ---------------------------------------------------------------------------------
def test_deep_ensemble_statistics() -> None:
    models = [linear(seed=s) for s in (0, 1)]
    x = images(10, "ens")
    p = torch.stack([logits_of(m, x).softmax(1) for m in models])
    mean = p.mean(0)
    h = -(mean * mean.log()).sum(1)
    each = -(p * p.log()).sum(2).mean(0)
    ent = ood.create("deep-ensemble").score(models, x)
    mi = ood.create("deep-ensemble", statistic="mutual-information").score(models, x)
    torch.testing.assert_close(ent.double(), h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mi.double(), h - each, rtol=1e-4, atol=1e-6)
    same = ood.create("deep-ensemble", members=[models[0], models[0]], statistic="mutual-information")
    assert same.score(None, x).abs().max() < 1e-6  # type: ignore[arg-type]


def test_mc_dropout_is_seeded_and_needs_dropout(small_net, small_test, model) -> None:
    a = ood.create("mc-dropout", seed=1).score(small_net, small_test)
    b = ood.create("mc-dropout", seed=1).score(small_net, small_test)
    c = ood.create("mc-dropout", seed=2).score(small_net, small_test)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a >= 0).all()
    with pytest.raises(InputError, match="dropout"):
        ood.create("mc-dropout").score(model, images(3, "nodrop"))


def test_mc_dropout_is_the_mutual_information_of_passes_with_only_dropout_active() -> None:
    """Brute force: ``samples`` passes with the dropout layers in training mode and batch norm in eval mode (its
    running statistics, not the batch's), masks drawn from the seed the detector derives; the mutual information
    ``H(mean p) - mean H(p)`` and the entropy of the mean by hand. Batch norm and the model's modes are untouched."""
    from mlsafety.core import draw_seed

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
        )
    bn = net[2]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = images(12, "mc")
    before = bn.running_mean.clone()
    passes = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(draw_seed(generator(3, "mc-dropout")))
        net[4].train()
        for _ in range(5):
            passes.append(net(x).double().softmax(dim=1))
        net[4].eval()
    p = torch.stack(passes)
    assert not torch.allclose(p[0], p[1])  # the masks differ from pass to pass
    mean = p.mean(0)
    total = -(mean * mean.log()).sum(1)
    mi = total - (-(p * p.log()).sum(2)).mean(0)
    got_mi = ood.create("mc-dropout", samples=5, seed=3).score(net, x)
    got_h = ood.create("mc-dropout", samples=5, seed=3, statistic="entropy").score(net, x)
    torch.testing.assert_close(got_mi.double(), mi, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got_h.double(), total, rtol=1e-5, atol=1e-6)
    assert torch.equal(bn.running_mean, before) and not net.training and not net[4].training


def test_mc_dropout_keeps_the_global_rng(small_net, small_test) -> None:
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    ood.create("mc-dropout").score(small_net, small_test)
    assert torch.equal(torch.rand(3), want)


# -- engine, tuning, metrics -------------------------------------------------------------------
def test_score_detectors_uses_given_outputs(model, fit_x, x) -> None:
    from mlsafety.core import forward

    dets = ood.fit_detectors([ood.create("msp"), ood.create("knn", k=3)], model, fit_x)
    out = forward(model, x)
    a = ood.score_detectors(dets, model, outputs=out)
    b = ood.score_detectors(dets, model, x)
    assert a.keys() == b.keys() == {"msp", "knn"}
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    with pytest.raises(InputError, match="need the inputs"):
        ood.score_detectors([ood.create("odin")], model, outputs=out)


def test_fit_accepts_loaders_datasets_and_pairs(model, fit_x, x) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from mlsafety.core import ArrayDataset

    y = torch.randint(0, 3, (80,), generator=generator(0, "y"))
    ref = ood.create("mahalanobis").fit(model, (fit_x, y)).score(model, x)
    for data in (ArrayDataset(fit_x, y), TensorDataset(fit_x, y), DataLoader(TensorDataset(fit_x, y), batch_size=16)):
        torch.testing.assert_close(ood.create("mahalanobis").fit(model, data).score(model, x), ref)
    with pytest.raises(InputError, match="data: batches must be tensors x or pairs"):
        ood.create("knn").fit(model, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="data: cannot read data of type dict"):
        ood.create("knn").fit(model, {"x": fit_x})  # type: ignore[arg-type]


def test_tuning_outliers_are_images_and_seeded() -> None:
    from mlsafety.core import permute_noise_mosaic_outliers

    x = images(30, "synth", d=16)
    a = permute_noise_mosaic_outliers(x, generator(0, "o"))
    b = permute_noise_mosaic_outliers(x, generator(0, "o"))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    # the permuted third keeps each image's pixel values, in another order
    torch.testing.assert_close(a[0].flatten().sort().values, x[0].flatten().sort().values)
    assert not torch.equal(a[0], x[0])


def test_tune_never_uses_ood_data_unless_asked(model, fit_x, x) -> None:
    with pytest.raises(InputError, match="use_ood_data=True"):
        ood.tune("knn", {"k": [1, 3]}, model, fit_x, x, generator(0, "t"), ood_data=images(10, "o"))
    tuned = ood.tune("knn", {"k": [1, 3, 5]}, model, fit_x, x, generator(0, "t"))
    assert tuned.tuned_on == "synthetic"
    assert tuned.auroc == max(a for _, a in tuned.grid)
    assert tuned.detector.k == tuned.params["k"]
    marked = ood.tune("knn", {"k": [1, 3]}, model, fit_x, x, generator(0, "t"), ood_data=images(10, "o"),
                      use_ood_data=True)  # fmt: skip
    assert marked.tuned_on == "ood"


def test_tune_refuses_to_choose_on_the_fit_data_itself(model, fit_x) -> None:
    """On its own fit data KNN with k=1 finds every input itself (distance 0, the lowest score), so an in-sample
    choice always takes k=1: tuning with the fit data as validation inputs is refused."""
    knn1 = ood.create("knn", k=1).fit(model, fit_x)
    assert float(knn1.score(model, fit_x).abs().max()) < 1e-3
    with pytest.raises(InputError, match="held out from the fit data"):
        ood.tune("knn", {"k": [1, 3, 5]}, model, fit_x, fit_x.clone(), generator(0, "t"))


@pytest.mark.parametrize("ties", [False, True])
def test_fast_ood_metrics_equal_the_reference(ties: bool) -> None:
    g = generator(0, "fast-metrics", ties)
    a = torch.randn(90, generator=g)
    b = torch.randn(70, generator=g) + 0.8
    if ties:
        a, b = a.round(), b.round()
    ref = {name: bootstrap_two_sample(fn, a, b, n_boot=300, seed=5) for name, fn in OOD_METRICS.items()}
    fast = ood_metrics(a, b, n_boot=300, seed=5)
    for k in ref:
        assert fast[k].n == ref[k].n
        for got, want in zip(fast[k], ref[k]):
            assert got == pytest.approx(want, abs=1e-12), k


def test_evaluate_fits_on_in_distribution_data_and_measures_each_set(model, fit_x, x) -> None:
    from mlsafety.core import derive_seed

    sets = {"a": images(12, "set-a"), "b": images(9, "set-b")}
    res = ood.evaluate(["msp", ood.create("knn", k=3)], model, fit_x, x, sets, n_boot=40, seed=2)
    assert set(res) == {"a", "b"} and set(res["a"]) == {"msp", "knn"}
    knn = ood.create("knn", k=3).fit(model, fit_x)
    want = ood_metrics(knn.score(model, x), knn.score(model, sets["b"]), 40, derive_seed(2, "b", "knn"))
    assert res["b"]["knn"] == want


def test_score_detectors_keeps_the_given_order(model, fit_x, x) -> None:
    dets = ood.fit_detectors([ood.create("odin", noise=0.0), ood.create("msp"), ood.create("msp")], model, fit_x)
    out = ood.score_detectors(dets, model, x)
    assert list(out) == ["odin", "msp", "msp-2"]
    torch.testing.assert_close(out["msp"], ood.create("msp").score(model, x))
    torch.testing.assert_close(out["odin"], ood.create("odin", noise=0.0).score(model, x))


def test_rmd_keeps_its_digits_when_the_two_distances_nearly_cancel() -> None:
    # far-away inputs: both distances are ~2e4 while their difference is ~300 times smaller, so whitening in float32
    # (a relative error of ~1e-7 of each distance) leaves ~1e-5 of the score wrong; it must match float64 to float32
    # rounding
    d, n = 16, 400
    model = linear(d=d, k=3, seed=1)
    g = generator(0, "rmd-cancel")
    y = torch.randint(0, 3, (n,), generator=g)
    scales = torch.logspace(-2, 1, d)
    fit_x = ((torch.randn(n, d, generator=g) + y[:, None] * 0.01) * scales).reshape(n, 1, 4, 4)
    x = (fit_x[:20].flatten(1) + 40 * torch.randn(20, d, generator=g) * scales).reshape(20, 1, 4, 4)
    det = ood.create("rmd").fit(model, (fit_x, y))
    f = fit_x.flatten(1).double().numpy()
    yn = y.numpy()
    means = np.stack([f[yn == k].mean(0) for k in range(3)])
    centred = f - means[yn]
    prec = np.linalg.inv(centred.T @ centred / n)
    prec0 = np.linalg.inv(np.cov(f.T, bias=True))
    mu0 = f.mean(0)
    q = x.flatten(1).double().numpy()
    md = np.stack([[(qi - m) @ prec @ (qi - m) for m in means] for qi in q])
    md0 = np.array([(qi - mu0) @ prec0 @ (qi - mu0) for qi in q])
    want = (md - md0[:, None]).min(1)
    assert np.median(md0) > 100 * np.median(np.abs(want))  # the cancelling case this test is about
    np.testing.assert_allclose(det.score(model, x).double().numpy(), want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_mc_dropouts_cpu_drawn_mask_is_torchs_cpu_dropout_bit_for_bit(p: float, inplace: bool, layout) -> None:
    """Off the CPU, MC dropout swaps plain dropout layers for _cpu_mask_forward so a GPU gets the CPU's masks;
    on the CPU that forward must be the layer's own, bit for bit, from the same RNG state."""
    layer = nn.Dropout(p, inplace=inplace).train()
    x = torch.randn(4, 3, 5, 6).to(memory_format=layout)  # the mask follows x's layout, as torch's does
    torch.manual_seed(7)
    want = layer(x.clone())
    after_want = torch.rand(3)
    torch.manual_seed(7)
    got = _cpu_mask_forward(layer)(x.clone())
    assert torch.equal(got, want)
    assert torch.equal(torch.rand(3), after_want)  # the same draws consumed: the next layer's mask agrees too


def test_mc_dropout_seeds_only_the_generators_it_forks(small_net, small_test, monkeypatch) -> None:
    """torch.manual_seed reseeds every GPU's generator too, and fork_rng restores only the model's device: a CPU
    model's scoring on a GPU machine reset the caller's CUDA stream. Only the CPU's generator is seeded here."""
    want = ood.create("mc-dropout").score(small_net, small_test)
    refuse_global_reseeding(monkeypatch)
    torch.testing.assert_close(ood.create("mc-dropout").score(small_net, small_test), want, rtol=0, atol=0)
