"""AdaSCALE-A/-L, WeiPer+KLD, NCI, GMM, OpenMax, Relation and VRA against plain re-implementations of their
papers' formulas (written here, sharing no code with the library), planted signals and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, spearmanr, weibull_min
from sklearn.mixture import GaussianMixture
from torch import nn

from mlsafety.core import ArrayDataset, InputError, generator
from mlsafety.metrics import auroc
from mlsafety.monitoring import ood

NEW = ["adascale-a", "adascale-l", "gmm", "nci", "openmax", "relation", "vra", "weiper"]


class TinyConv(nn.Module):
    """(N, 1, 8, 8) -> 4 classes; the head's input is a post-ReLU feature vector of 16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.hidden = nn.Linear(6 * 16, 16)
        self.fc = nn.Linear(16, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1)
        return torch.relu(self.hidden(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _class_images(n: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes: a bright 4x4 quadrant (which one is the class) on a dim noisy background."""
    g = generator(0, name)
    y = torch.arange(n) % 4
    x = 0.15 * torch.rand(n, 1, 8, 8, generator=g)
    for c in range(4):
        r, s = divmod(c, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * s : 4 * s + 4] += 0.6 + 0.2 * torch.rand(
            int((y == c).sum()), 1, 4, 4, generator=g
        )
    return x.clamp(0, 1), y


def _shifted_images(n: int) -> torch.Tensor:
    """The planted shift: a bright ring of border pixels with a dark centre, no quadrant."""
    x = 0.15 * torch.rand(n, 1, 8, 8, generator=generator(0, "shifted"))
    x[:, :, [0, -1], :] += 0.7
    x[:, :, :, [0, -1]] += 0.7
    return x.clamp(0, 1)


@pytest.fixture(scope="module")
def net() -> TinyConv:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyConv()
    x, y = _class_images(400, "train")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def fit_data() -> ArrayDataset:
    x, y = _class_images(200, "fit")
    return ArrayDataset(x, y, name="quadrants")


@pytest.fixture(scope="module")
def test_x() -> torch.Tensor:
    x, _ = _class_images(60, "test")
    return torch.cat([x, _shifted_images(30)])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _outputs(net: TinyConv, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        f = net.features(x)
        return _np(f), _np(net.fc(f))


def _head(net: TinyConv) -> tuple[np.ndarray, np.ndarray]:
    return _np(net.fc.weight), _np(net.fc.bias)


def _energy(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


def _agree(got: torch.Tensor, want: np.ndarray, rtol: float = 1e-5, rank: bool = True) -> None:
    """Per-sample agreement: Spearman >= 0.999 (``rank``; off where float32 saturates many scores into
    ties) and equal values within float32 tolerances."""
    got_np = _np(got)
    assert got_np.shape == want.shape
    if rank:
        rho = spearmanr(got_np, want).statistic
        assert rho >= 0.999, f"Spearman {rho:.5f}"
    np.testing.assert_allclose(got_np, want, rtol=rtol, atol=1e-5 * max(1.0, float(np.abs(want).max())))


# -- reference re-implementations ---------------------------------------------------------------
def test_nci_matches_the_formula(net, fit_data, test_x) -> None:
    f_fit, _ = _outputs(net, fit_data.x)
    f, z = _outputs(net, test_x)
    w, _ = _head(net)
    mu = f_fit.mean(axis=0)
    want = np.empty(len(f))
    for i in range(len(f)):
        c = int(np.argmax(z[i]))
        centred = f[i] - mu
        want[i] = -(w[c] @ centred / np.linalg.norm(centred) + 1e-3 * np.abs(f[i]).sum())
    _agree(ood.create("nci", alpha=1e-3).fit(net, fit_data).score(net, test_x), want)


def test_vra_matches_the_formula(net, fit_data, test_x) -> None:
    f_fit, _ = _outputs(net, fit_data.x)
    f, _ = _outputs(net, test_x)
    w, b = _head(net)
    a, c = np.percentile(f_fit.ravel(), 20), np.percentile(f_fit.ravel(), 85)
    g = np.where(f < a, 0.0, np.where(f > c, c, f + 0.3))
    want = _energy(g @ w.T + b)
    _agree(ood.create("vra", low=20, high=85, gamma=0.3).fit(net, fit_data).score(net, test_x), want)


def test_relation_matches_the_kernel(net, fit_data, test_x) -> None:
    f_fit, z_fit = _outputs(net, fit_data.x)
    f, z = _outputs(net, test_x)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    bank, probs = unit(f_fit), softmax(z_fit)
    want = np.empty(len(f))
    for i, (fi, pi) in enumerate(zip(unit(f), softmax(z), strict=True)):
        total = 0.0
        for fj, pj in zip(bank, probs, strict=True):
            k = max(float(fi @ fj), 0.0) * float(pi @ pj)
            total += k**2 if k > 0.05 else 0.0
        want[i] = -total
    det = ood.create("relation", power=2, threshold=0.05, chunk=7)  # blocks that do not divide the inputs
    _agree(det.fit(net, fit_data).score(net, test_x), want)


def test_gmm_one_component_is_each_class_gaussian_density(net, fit_data, test_x) -> None:
    f_fit, _ = _outputs(net, fit_data.x)
    f, _ = _outputs(net, test_x)
    y = fit_data.y.numpy()
    reg = 1e-3
    logp = np.stack(
        [
            multivariate_normal(f_fit[y == c].mean(0), np.cov(f_fit[y == c].T, bias=True) + reg * np.eye(16)).logpdf(f)
            for c in range(4)
        ],
        axis=1,
    )
    _agree(ood.create("gmm", reg_covar=reg).fit(net, fit_data).score(net, test_x), -logp.max(axis=1))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_gmm_mixtures_match_scikit_learn_likelihoods(net, fit_data, test_x, covariance: str) -> None:
    f_fit, _ = _outputs(net, fit_data.x)
    f, _ = _outputs(net, test_x)
    y = fit_data.y.numpy()
    per_class = [
        GaussianMixture(3, covariance_type=covariance, reg_covar=1e-3, random_state=5)
        .fit(f_fit[y == c])
        .score_samples(f)
        for c in range(4)
    ]
    det = ood.create("gmm", components=3, covariance=covariance, reg_covar=1e-3, seed=5)
    _agree(det.fit(net, fit_data).score(net, test_x), -np.max(per_class, axis=0))


def _openmax_reference(z_fit: np.ndarray, y: np.ndarray, z: np.ndarray, tail: int, alpha: int) -> np.ndarray:
    k = z.shape[1]
    mav, params = np.zeros((k, k)), []
    for c in range(k):
        members = z_fit[(y == c) & (z_fit.argmax(1) == c)]
        mav[c] = members.mean(0)
        dist = np.sort(np.linalg.norm(members - mav[c], axis=1))[-tail:]
        shape, _, scale = weibull_min.fit(dist, floc=0)
        params.append((shape, scale))
    out = np.empty(len(z))
    for i, v in enumerate(z):
        order = np.argsort(-v)
        w = np.zeros(k)
        for rank, c in enumerate(order[:alpha], start=1):
            cdf = weibull_min.cdf(np.linalg.norm(v - mav[c]), params[c][0], scale=params[c][1])
            w[c] = (alpha + 1 - rank) / alpha * cdf
        logits = np.concatenate([[np.sum(v * w)], v * (1 - w)])
        e = np.exp(logits - logits.max())
        out[i] = e[0] / e.sum()
    return out


def test_openmax_matches_the_recalibration(net, fit_data, test_x) -> None:
    _, z_fit = _outputs(net, fit_data.x)
    _, z = _outputs(net, test_x)
    y = fit_data.y.numpy()
    assert all(((y == c) & (z_fit.argmax(1) == c)).sum() >= 10 for c in range(4))  # every class has a tail
    want = _openmax_reference(z_fit, y, z, tail=10, alpha=2)
    _agree(ood.create("openmax", tail=10, alpha=2).fit(net, fit_data).score(net, test_x), want, rtol=1e-4)


def test_openmax_weibull_fits_solve_the_likelihood_equations(net, fit_data) -> None:
    _, z_fit = _outputs(net, fit_data.x)
    y = fit_data.y.numpy()
    det = ood.create("openmax", tail=15).fit(net, fit_data)
    mav = _np(det.mav_)
    for c in range(4):
        members = z_fit[(y == c) & (z_fit.argmax(1) == c)]
        x = np.sort(np.linalg.norm(members - mav[c], axis=1))[-15:]
        k, lam = float(det.shape_[c]), float(det.scale_[c])
        xk = x**k
        # profile likelihood of the two-parameter Weibull: d/dk and the closed form of the scale
        assert abs((xk * np.log(x)).sum() / xk.sum() - 1 / k - np.log(x).mean()) < 1e-3 / k
        assert lam == pytest.approx(xk.mean() ** (1 / k), rel=1e-3)


def _smooth(p: np.ndarray, width: int) -> np.ndarray:
    before = (width - 1) // 2
    padded = np.concatenate([np.full(before, p[0]), p, np.full(width - 1 - before, p[-1])])
    return np.array([padded[i : i + width].mean() for i in range(len(p))])


def _kl_sym(p: np.ndarray, q: np.ndarray) -> float:
    return float((p * np.log(p / q)).sum() + (q * np.log(q / p)).sum())


def _weiper_reference(det: ood.Detector, net: TinyConv, fit_x: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    wt, bt = _np(det.weight_), _np(det.bias_)
    f_fit, _ = _outputs(net, fit_x)
    f, _ = _outputs(net, x)
    zt_fit, zt = f_fit @ wt.T + bt, f @ wt.T + bt

    def edges(v: np.ndarray) -> np.ndarray:
        gap = (v.max() - v.min()) / len(v)
        return np.linspace(v.min() - gap, v.max() + gap + 1e-8, det.bins + 1)

    def hist(row: np.ndarray, e: np.ndarray) -> np.ndarray:
        inside = row[(row >= e[0]) & (row < e[-1])]
        return np.histogram(inside, bins=e)[0] / len(row)

    def kl(rows_fit: np.ndarray, rows: np.ndarray, eps: float, width: int) -> np.ndarray:
        e = edges(rows_fit)
        p = np.mean([hist(r, e) for r in rows_fit], axis=0) + eps
        p = p / p.sum()
        out = []
        for r in rows:
            q = _smooth(hist(r, e), width) + eps
            out.append(_kl_sym(p, q / q.sum()))
        return np.array(out)

    k = 4
    msp = np.empty(len(f))
    for i, row in enumerate(zt):
        blocks = row.reshape(det.repeats, k)
        e = np.exp(blocks - blocks.max(axis=1, keepdims=True))
        msp[i] = (e.max(axis=1) / e.sum(axis=1)).mean()
    return (
        kl(f_fit, f, det.eps, det.smoothing)
        + det.lambda_1 * kl(zt_fit, zt, det.eps_perturbed, det.smoothing_perturbed)
        - det.lambda_2 * msp
    )


def test_weiper_perturbs_each_class_projection_by_delta_times_its_norm(net, fit_data) -> None:
    det = ood.create("weiper", delta=1.5, repeats=7).fit(net, fit_data)
    w = _np(net.fc.weight)
    moved = _np(det.weight_).reshape(7, 4, 16) - w[None]
    np.testing.assert_allclose(
        np.linalg.norm(moved, axis=2), 1.5 * np.tile(np.linalg.norm(w, axis=1), (7, 1)), rtol=1e-5
    )
    np.testing.assert_allclose(_np(det.bias_), np.tile(_np(net.fc.bias), 7), rtol=0)
    assert not np.allclose(moved[0], moved[1])  # independent draws
    other = ood.create("weiper", delta=1.5, repeats=7, seed=1).fit(net, fit_data)
    assert not torch.equal(det.weight_, other.weight_)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("low", "high"), [(-3.0, 2.5), (0.0, 1e-6), (1000.0, 1000.001)])
def test_weiper_histograms_bin_exactly_as_the_edges_say(dtype: torch.dtype, low: float, high: float) -> None:
    """The arithmetic first guess of each value's bin is moved to the half-open bin of the linspace edges: values on
    an edge and one ulp either side land where a search of the edges puts them (the last case's bins are too
    narrow for the guess: the search itself runs)."""
    from mlsafety.monitoring.ood.weiper import row_histograms

    bins = 23
    edges = torch.linspace(low, high, bins + 1, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    v = low + (high - low) * (1.4 * torch.rand(6, 200, generator=g, dtype=dtype) - 0.2)
    v[0, : bins + 1] = edges
    v[1, : bins + 1] = edges.nextafter(torch.tensor(-torch.inf, dtype=dtype))
    v[2, : bins + 1] = edges.nextafter(torch.tensor(torch.inf, dtype=dtype))
    v[3, :3] = torch.tensor([torch.nan, torch.inf, -torch.inf], dtype=dtype)
    want = np.zeros((6, bins))
    for r in range(6):
        for x in v[r].tolist():
            hits = [i for i in range(bins) if float(edges[i]) <= x < float(edges[i + 1])]
            if hits:
                want[r, hits[0]] += 1 / 200
    got = row_histograms(v, low, high, bins)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-6, atol=0)


def test_weiper_kld_matches_the_formula(net, fit_data, test_x) -> None:
    det = ood.create("weiper", repeats=12, bins=30, smoothing=5, smoothing_perturbed=4, lambda_1=0.7, lambda_2=2.0)
    got = det.fit(net, fit_data).score(net, test_x)
    _agree(got, _weiper_reference(det, net, fit_data.x, test_x), rtol=1e-4)


def _adascale_reference(net: TinyConv, fit_x: torch.Tensor, x: torch.Tensor, variant: str, **hp: float) -> np.ndarray:
    p_min, p_max, k1, k2, lam, o, step = (hp[n] for n in ("p_min", "p_max", "k1", "k2", "lam", "o", "step"))

    def q_prime(xs: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xg = xs.clone().requires_grad_(True)
        logits = net(xg)
        logits.max(dim=1).values.sum().backward()
        grad = _np(xg.grad).reshape(len(xs), -1)
        xn = _np(xs).reshape(len(xs), -1).copy()
        n = int(xn.shape[1] * o)
        for i in range(len(xn)):
            chosen = np.argsort(np.abs(grad[i]), kind="stable")[:n]
            xn[i, chosen] += step * np.sign(grad[i, chosen])
        f, z = _outputs(net, xs)
        fp, _ = _outputs(net, torch.from_numpy(xn).float().reshape(xs.shape))
        d = f.shape[1]
        n1, n2 = max(1, int(d * k1 / 100)), max(1, int(d * k2 / 100))
        q = np.empty(len(f))
        for i in range(len(f)):
            order = np.argsort(-f[i], kind="stable")
            q[i] = lam * np.abs(f[i] - fp[i])[order[:n2]].sum() + np.maximum(fp[i], 0)[order[:n1]].sum()
        return q, f, z

    q_fit, _, _ = q_prime(fit_x)
    q, f, z = q_prime(x)
    w, b = _head(net)
    out = np.empty(len(f))
    for i in range(len(f)):
        ecdf = (q_fit <= q[i]).mean()
        p = p_min + (1 - ecdf) * (p_max - p_min)
        d = f.shape[1]
        keep = int(min(max(1, d - np.round(d * p / 100)), d))
        a = np.maximum(f[i], 0)
        ratio = a.sum() / np.sort(a)[::-1][:keep].sum()
        # A: SCALE's exp(ratio) on the activations; L: LTS's ratio^2 on the logits (the authors' OpenOOD code)
        logits = (w @ f[i]) * np.exp(ratio) + b if variant == "a" else z[i] * ratio**2
        out[i] = _energy(logits[None])[0]
    return out


@pytest.mark.parametrize("variant", ["a", "l"])
def test_adascale_matches_the_formula(net, fit_data, test_x, variant: str) -> None:
    hp = {"p_min": 40.0, "p_max": 90.0, "k1": 25.0, "k2": 10.0, "lam": 5.0, "o": 0.1, "step": 0.3}
    det = ood.create(f"adascale-{variant}", **hp).fit(net, fit_data)
    want = _adascale_reference(net, fit_data.x, test_x, variant, **hp)
    _agree(det.score(net, test_x), want)
    assert np.unique(_np(det.percentiles(torch.from_numpy(np.linspace(0, 50, 9))))).size > 1  # truly adaptive


# -- planted signal ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in NEW if n != "weiper"])
def test_separates_the_planted_shift(name: str, net, fit_data) -> None:
    x_in, _ = _class_images(80, "held-out")
    det = ood.create(name).fit(net, fit_data)
    a = float(auroc(det.score(net, x_in), det.score(net, _shifted_images(80))))
    assert a > 0.8, f"{name}: AUROC {a:.3f} on the planted shift"


def test_weiper_separates_a_planted_change_of_activation_profile() -> None:
    """WeiPer+KLD reads the shape of each input's activation histogram, which 16 features cannot show;
    here the head's input is 256 features: in-distribution ones sparse (70% zeros, the rest in
    [0.5, 1], as after a ReLU), the shifted ones dense and mid-range."""
    g = generator(0, "weiper-planted")
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 4))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(4, 256, generator=g) / 16)
        model[1].bias.zero_()

    def sparse(n: int) -> torch.Tensor:
        on = torch.rand(n, 1, 16, 16, generator=g) < 0.3
        return torch.where(on, 0.5 + 0.5 * torch.rand(n, 1, 16, 16, generator=g), torch.zeros(n, 1, 16, 16))

    dense = 0.2 + 0.4 * torch.rand(100, 1, 16, 16, generator=g)
    fit_x, in_x = sparse(300), sparse(100)
    for params in ({}, {"lambda_2": 0.0}):  # the whole score, and its KL divergences alone (their direction)
        det = ood.create("weiper", **params).fit(model.eval(), fit_x)
        a = float(auroc(det.score(model, in_x), det.score(model, dense)))
        assert a > 0.8, f"weiper {params}: AUROC {a:.3f} on the planted shift"


# -- hyper-parameter edge cases ----------------------------------------------------------------------
def test_adascale_a_with_one_percentile_is_scale(net, fit_data, test_x) -> None:
    det = ood.create("adascale-a", p_min=70.0, p_max=70.0).fit(net, fit_data)
    scale = ood.create("scale", percentile=70.0).fit(net, fit_data)
    torch.testing.assert_close(det.score(net, test_x), scale.score(net, test_x), rtol=1e-5, atol=1e-5)


def test_adascale_l_with_one_percentile_is_logit_scaling(net, test_x, fit_data) -> None:
    # LTS (Djurisic et al. 2024) at p: the logits times (s1 / s2)^2 of the rectified features
    f, z = _outputs(net, test_x)
    a = np.maximum(f, 0)
    keep = max(1, 16 - round(16 * 0.5))
    ratio = a.sum(1) / np.sort(a, axis=1)[:, ::-1][:, :keep].sum(1)
    det = ood.create("adascale-l", p_min=50.0, p_max=50.0).fit(net, fit_data)
    _agree(det.score(net, test_x), _energy(z * ratio[:, None] ** 2))


def test_adascale_refuses_p_min_above_p_max_and_text_inputs(net) -> None:
    with pytest.raises(InputError, match="p_min must not exceed p_max"):
        ood.create("adascale-a", p_min=90.0, p_max=80.0)
    assert ood.TEXT not in ood.DETECTORS.tags("adascale-a")
    assert "input-grad" in ood.DETECTORS.get("adascale-l").needs


def test_openmax_without_recalibration_is_the_softmax_unknown_of_a_zero_logit(net, fit_data, test_x) -> None:
    _, z = _outputs(net, test_x)
    want = 1 / (1 + np.exp(z).sum(axis=1))  # alpha = 0: v'_0 = 0 and v' = v
    _agree(ood.create("openmax", alpha=0).fit(net, fit_data).score(net, test_x), want)


def test_nci_with_a_large_alpha_ranks_by_the_feature_norm(net, fit_data, test_x) -> None:
    f, _ = _outputs(net, test_x)
    got = _np(ood.create("nci", alpha=1e6).fit(net, fit_data).score(net, test_x))
    assert spearmanr(got, -np.abs(f).sum(1)).statistic >= 0.999


def test_vra_without_a_floor_or_gamma_is_react(net, fit_data, test_x) -> None:
    vra = ood.create("vra", low=0.0, high=90.0).fit(net, fit_data)  # ReLU features: nothing lies below the minimum 0
    react = ood.create("react", percentile=90.0).fit(net, fit_data)
    torch.testing.assert_close(vra.score(net, test_x), react.score(net, test_x), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="low must be below high"):
        ood.create("vra", low=50.0, high=50.0)


def test_relation_cutting_every_edge_scores_zero(net, fit_data, test_x) -> None:
    got = ood.create("relation", threshold=1.0).fit(net, fit_data).score(net, test_x)  # kernel values are <= 1
    assert torch.equal(got, torch.zeros(len(test_x)))


def test_weiper_without_perturbation_is_feature_kld_minus_msp(net, fit_data, test_x) -> None:
    base = ood.create("weiper", delta=0.0, lambda_1=0.0, lambda_2=0.0).fit(net, fit_data).score(net, test_x)
    det = ood.create("weiper", delta=0.0, lambda_1=0.0, lambda_2=1.0).fit(net, fit_data)
    _, z = _outputs(net, test_x)
    e = np.exp(z - z.max(1, keepdims=True))
    msp = e.max(1) / e.sum(1)
    _agree(det.score(net, test_x) - base, -msp, rank=False)  # msp saturates at 1 in float32: ties


def test_gmm_class_without_fit_inputs_is_left_out(net, fit_data, test_x) -> None:
    keep = fit_data.y != 3
    data = ArrayDataset(fit_data.x[keep], fit_data.y[keep], name="three-classes")
    det = ood.create("gmm").fit(net, data)
    assert torch.isinf(det.class_log_likelihoods(torch.from_numpy(_outputs(net, test_x)[0]))[:, 3]).all()
    assert torch.isfinite(det.score(net, test_x)).all()


def test_every_new_detector_is_registered_outside_the_quick_profile() -> None:
    quick = set(ood.DETECTORS.tagged(ood.QUICK))
    for name in NEW:
        assert name in ood.available() and name not in quick
        assert ood.IMAGE in ood.DETECTORS.tags(name)
        shared = ood.DETECTORS.get(name).needs <= ood.SHARED_NEEDS
        assert shared == (ood.TEXT in ood.DETECTORS.tags(name)), name


@pytest.mark.parametrize(
    ("name", "uses"),
    [("nci", "f"), ("vra", "f"), ("gmm", "f"), ("openmax", "z"), ("relation", "fz"), ("weiper", "f")],
)
def test_gradients_reach_the_outputs_each_score_reads(name: str, uses: str, net, fit_data, test_x) -> None:
    """A monitor-aware attack differentiates score_graph: gradients must be finite and reach what the score reads."""
    from mlsafety.core import Outputs

    keep = fit_data.y != 3  # a class without fit inputs must not turn gradients into NaN (GMM)
    det = ood.create(name).fit(net, ArrayDataset(fit_data.x[keep], fit_data.y[keep], name="three-classes"))
    f, z = (torch.from_numpy(a).float().requires_grad_(True) for a in _outputs(net, test_x))
    det.score_graph(net, Outputs(logits=z, features=f)).sum().backward()
    for key, t in (("f", f), ("z", z)):
        if key in uses:
            assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, key


@pytest.mark.parametrize("limit", [10**9, 2001])
def test_vra_quantiles_are_exact_past_the_size_limit(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    # past torch.quantile's size limit (lowered here to 2001 values) the quantiles are still those of every
    # activation; a strided sample f[::2] of these 100 x 40 activations read only the even units, all alive,
    # and put the 10th percentile above 1 instead of at 0 (half the units are dead)
    from mlsafety.monitoring.ood import vra

    monkeypatch.setattr(vra, "_QUANTILE_LIMIT", limit)
    f = torch.rand(100, 40, generator=generator(0, "vra-units")) + 1.0
    f[:, 1::2] = 0.0
    f[:7, 0] = torch.tensor([1.5, 1.25, 1.75, 1.0, 2.0, 1.5, 1.5])  # ties and a value between order statistics
    percentiles = (0.0, 10.0, 37.3, 50.0, 90.0, 99.99, 100.0)
    got = vra.activation_quantiles(f, percentiles)
    np.testing.assert_allclose(got, np.percentile(f.double().numpy().ravel(), percentiles), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("limit", [10**9, 2001])
def test_react_threshold_is_exact_past_the_size_limit(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    # ReAct's clip is the percentile of every fit activation; past the size limit it took a strided sample,
    # which on these 100 x 40 activations (odd units dead) read only the live even units
    from mlsafety.core import Outputs
    from mlsafety.monitoring.ood import vra
    from mlsafety.monitoring.ood.react import ReAct

    monkeypatch.setattr(vra, "_QUANTILE_LIMIT", limit)
    f = torch.rand(100, 40, generator=generator(0, "react-units")) + 1.0
    f[:, 1::2] = 0.0
    det = ReAct(percentile=40.0)
    det._fit(None, Outputs(logits=torch.zeros(100, 2), features=f), torch.zeros(100, dtype=torch.long))  # type: ignore[arg-type]
    assert det.threshold_ == pytest.approx(float(np.percentile(f.double().numpy().ravel(), 40.0)), abs=1e-6)


@pytest.mark.slow
def test_react_threshold_reads_every_unit_of_a_fit_set_past_torch_quantiles_limit() -> None:
    # 4000 x 4002 = 16.008M activations, just past the limit: the old strided sample f[::2] read only the even
    # units (all alive here) and clipped at about 1.4 where 40% of all activations are 0 (the odd units are dead)
    from mlsafety.core import Outputs
    from mlsafety.monitoring.ood.react import ReAct

    f = torch.rand(4000, 4002, generator=generator(0, "react-big")) + 1.0
    f[:, 1::2] = 0.0
    det = ReAct(percentile=40.0)
    det._fit(None, Outputs(logits=torch.zeros(4000, 2), features=f), torch.zeros(4000, dtype=torch.long))  # type: ignore[arg-type]
    assert det.threshold_ == 0.0
