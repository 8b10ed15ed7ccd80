"""Every probe fitted on all layers at once equals the same probe fitted layer by layer (planted data).

CCS's batched optimisation (layers x restarts as one AdamW problem) against the per-layer loop it
replaced, logistic regression against scikit-learn's solution, mean difference and top PC against
their one-layer fits.
"""

from __future__ import annotations

import pytest
import torch

from mlsafety.alignment.probes import PROBES, normalize
from mlsafety.alignment.probes.ccs import ccs_fit, ccs_loss, ccs_train
from mlsafety.alignment.probes.logistic import logistic_newton


def planted_layers(n: int = 60, n_layers: int = 4, d: int = 12, seed: int = 0):
    """(N, L, D) states: layer l carries the truth on coordinate l with strength l (layer 0: none)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    y[:2] = torch.tensor([0, 1])
    truth = (2 * y - 1).float()
    pos = torch.randn(n, n_layers, d, generator=g)
    neg = torch.randn(n, n_layers, d, generator=g)
    for k in range(n_layers):
        pos[:, k, k] += k * truth
        neg[:, k, k] -= k * truth
    return pos, neg, y


def loop_ccs(pos: torch.Tensor, neg: torch.Tensor, init: torch.Tensor, epochs: int, lr: float, wd: float):
    """The per-layer CCS of the first implementation (one AdamW per layer, restarts batched), as reference."""
    out = []
    for k in range(pos.shape[0]):
        w = init[k].clone().requires_grad_(True)
        b = torch.zeros(init.shape[1], requires_grad=True)
        opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=wd)
        for _ in range(epochs):
            opt.zero_grad()
            loss = ccs_loss(torch.sigmoid(w @ pos[k].T + b[:, None]), torch.sigmoid(w @ neg[k].T + b[:, None]))
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            final = ccs_loss(torch.sigmoid(w @ pos[k].T + b[:, None]), torch.sigmoid(w @ neg[k].T + b[:, None]))
            best = int(final.argmin())
            out.append((w[best].detach(), float(b[best]), float(final[best])))
    return out


def test_batched_ccs_equals_the_per_layer_loop() -> None:
    pos, neg, _ = planted_layers()
    p, n = normalize(pos).transpose(0, 1), normalize(neg).transpose(0, 1)
    init = torch.randn(4, 5, 12, generator=torch.Generator().manual_seed(1)) / 12**0.5
    coef, intercept, loss = ccs_fit(p, n, init, epochs=150, lr=1e-2, weight_decay=1e-2)
    for k, (w, b, best_loss) in enumerate(loop_ccs(p, n, init, 150, 1e-2, 1e-2)):
        torch.testing.assert_close(coef[k], w, atol=1e-4, rtol=1e-3)
        assert abs(float(intercept[k]) - b) < 1e-4
        assert abs(float(loss[k]) - best_loss) < 1e-5
    # the planted layers are read: the strongest layer's probe points along its planted coordinate
    assert abs(float(torch.nn.functional.cosine_similarity(coef[3], torch.eye(12)[3], dim=0))) > 0.9


def test_ccs_fit_layers_reads_each_planted_layer_and_fixes_each_sign() -> None:
    pos, neg, y = planted_layers(n=200)
    reference = (2 * y - 1).float()
    probe = PROBES.create("ccs", epochs=200, restarts=3)
    probe.fit_layers(pos, neg, reference=reference, generator=torch.Generator().manual_seed(0))
    test_pos, test_neg, test_y = planted_layers(n=200, seed=3)
    acc = (probe.predict_layers(test_pos, test_neg) == test_y[:, None]).float().mean(0)
    assert acc[0] < 0.7  # nothing planted at layer 0
    assert bool((acc[2:] > 0.95).all()), acc


def _early_stopping_problem():  # type: ignore[no-untyped-def]
    """Layers 0 and 1 (no / weak truth) converge within a few hundred epochs; 2 and 3 keep sharpening."""
    pos, neg, _ = planted_layers(n=300)
    p, n = normalize(pos).transpose(0, 1), normalize(neg).transpose(0, 1)
    init = torch.randn(4, 5, 12, generator=torch.Generator().manual_seed(1)) / 12**0.5
    return p, n, init


def test_early_stopping_returns_the_probe_of_the_full_run() -> None:
    p, n, init = _early_stopping_problem()
    full = ccs_train(p, n, init, 1000, 1e-2, 1e-2, tol=0.0)
    assert bool((full.epochs == 1000).all())  # tol=0: every problem runs every epoch (the paper)
    early = ccs_train(p, n, init, 1000, 1e-2, 1e-2, tol=1e-3, window=50)
    assert bool((early.epochs[:2] < 500).all()), early.epochs  # the converged layers stopped early
    assert bool((early.epochs[2:] == 1000).all()), early.epochs  # the sharpening ones did not
    cos = torch.nn.functional.cosine_similarity(early.coef, full.coef, dim=1)
    assert bool((cos > 0.999).all()), cos
    torch.testing.assert_close(early.loss, full.loss, atol=1e-4, rtol=1e-3)
    readings = torch.einsum("lnd,ld->ln", p - n, early.coef) > 0
    assert torch.equal(readings[1:], (torch.einsum("lnd,ld->ln", p - n, full.coef) > 0)[1:])


def test_a_stopped_problem_keeps_the_weights_of_its_stopping_epoch() -> None:
    # problems leave the batch at different epochs and the batch is compacted around them: each stored
    # problem must equal the same problem trained for exactly its own number of epochs
    p, n, init = _early_stopping_problem()
    early = ccs_train(p, n, init, 1000, 1e-2, 1e-2, tol=1e-3, window=50)
    stops = torch.unique(early.epochs)
    assert len(stops) >= 3, stops  # at least two stopping epochs before the end
    for e in stops.tolist():
        plain = ccs_train(p, n, init, e, 1e-2, 1e-2, tol=0.0)
        mask = early.epochs == e
        torch.testing.assert_close(early.coefs[mask], plain.coefs[mask], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(early.intercepts[mask], plain.intercepts[mask], atol=1e-5, rtol=1e-4)


def test_ccs_probe_exposes_its_stopping_and_tol_zero_runs_every_epoch() -> None:
    pos, neg, y = planted_layers(n=300)
    reference = (2 * y - 1).float()
    paper = PROBES.create("ccs", epochs=300, restarts=2, tol=0.0)
    paper.fit_layers(pos, neg, reference=reference, generator=torch.Generator().manual_seed(0))
    assert bool((paper.epochs_run_ == 300).all())
    quick = PROBES.create("ccs", epochs=300, restarts=2)  # the default tol stops the converged layers
    quick.fit_layers(pos, neg, reference=reference, generator=torch.Generator().manual_seed(0))
    assert bool((quick.epochs_run_[0] < 300).all()) and quick.epochs_run_.shape == (4, 2)
    assert torch.equal(quick.predict_layers(pos, neg)[:, 1:], paper.predict_layers(pos, neg)[:, 1:])


def test_batched_logistic_matches_scikit_learn_on_every_layer() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    for n, d in ((40, 12), (16, 30)):  # N > D (direct) and N < D (solved in the span of the rows)
        pos, neg, y = planted_layers(n=n, d=d, seed=n)
        x = (pos - neg).transpose(0, 1).double()
        l2 = 0.05
        coef, intercept = logistic_newton(x, y, l2)
        for k in range(x.shape[0]):
            ref = sklearn.LogisticRegression(C=1.0 / (l2 * n), tol=1e-10, max_iter=10_000).fit(x[k].numpy(), y.numpy())
            torch.testing.assert_close(coef[k].double(), torch.from_numpy(ref.coef_[0]), atol=2e-4, rtol=1e-3)
            assert abs(float(intercept[k]) - float(ref.intercept_[0])) < 2e-4


@pytest.mark.parametrize("method", ["logistic", "mean-diff", "top-pc", "ccs"])
def test_fit_layers_equals_one_fit_per_layer(method: str) -> None:
    pos, neg, y = planted_layers()
    params = {"epochs": 60, "restarts": 2} if method == "ccs" else {}
    many = PROBES.create(method, **params)
    many.fit_layers(pos, neg, y, reference=(2 * y - 1).float(), generator=torch.Generator().manual_seed(0))
    init_g = torch.Generator().manual_seed(0)
    inits = torch.randn(4, 2, 12, generator=init_g) / 12**0.5 if method == "ccs" else None
    scores = many.score_layers(pos, neg)
    for k in range(pos.shape[1]):
        one = PROBES.create(method, **params)
        if inits is not None:  # the same initial weights as layer k of the batched fit
            one._fit_layers = _with_init(one, inits[k : k + 1])  # type: ignore[method-assign]
        one.fit(pos[:, k], neg[:, k], y, reference=(2 * y - 1).float())
        torch.testing.assert_close(one.score(pos[:, k], neg[:, k]), scores[:, k], atol=1e-4, rtol=1e-3)


def _with_init(probe, init):  # type: ignore[no-untyped-def]
    def fit(pos, neg, labels, generator):  # type: ignore[no-untyped-def]
        probe.coefs_, probe.intercepts_, probe.losses_ = ccs_fit(pos, neg, init, probe.epochs, probe.lr,
                                                                 probe.weight_decay)  # fmt: skip

    return fit


def test_supervised_layer_choice_is_cross_validated_inside_the_fit_half() -> None:
    from mlsafety.alignment.probes import ContrastStates
    from mlsafety.alignment.probes.evaluate import cross_validated_fit_accuracy, fit_probes, layer_results

    g = torch.Generator().manual_seed(0)
    n, d = 64, 96  # N < D: logistic regression separates its own items at every layer
    y = torch.arange(n) % 2
    pos, neg = torch.randn(n, 4, d, generator=g), torch.randn(n, 4, d, generator=g)
    pos[:, 2, :4] += 3.0 * (2 * y - 1)[:, None]  # only layer 2 carries the truth
    neg[:, 2, :4] -= 3.0 * (2 * y - 1)[:, None]
    st = ContrastStates(pos, neg, torch.zeros(n), torch.zeros(n), y)
    probe = fit_probes("logistic", st, [0, 1, 2, 3], torch.Generator().manual_seed(0))
    in_sample = [r.fit_accuracy for r in layer_results(probe, st, st, [0, 1, 2, 3])[0]]
    assert in_sample == [1.0, 1.0, 1.0, 1.0]  # the in-sample figure cannot choose a layer
    cv = cross_validated_fit_accuracy("logistic", st, [0, 1, 2, 3], torch.Generator().manual_seed(1))
    assert cv is not None and int(cv.argmax()) == 2 and float(cv[2]) > 0.9 and float(cv[[0, 1, 3]].max()) < 0.75
