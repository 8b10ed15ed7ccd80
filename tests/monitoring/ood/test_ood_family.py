"""The detector family on the family kit: declared parameters, tags, the score cache, ViM on Residual."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mlsafety.core import InputError, NotFittedError, Outputs, forward
from mlsafety.metrics import ood_metrics
from mlsafety.monitoring import ood
from tests.support.family import check_family

test_detector_family = check_family(
    ood.DETECTORS,
    known_tags=(
        ood.QUICK,
        ood.NEEDS_DROPOUT,
        ood.NEEDS_MEMBERS,
        ood.NEEDS_HEAD_WEIGHTS,
        ood.IMAGE,
        ood.TEXT,
        ood.OPT_IN,
    ),
)


def _former_row_params(det: ood.Detector) -> dict[str, Any]:
    """What the audit stored before the family kit: scalar attributes not ending in ``_``, minus ``chunk``."""
    return {
        k: v
        for k, v in vars(det).items()
        if not k.endswith("_") and k != "chunk" and isinstance(v, (bool, int, float, str, type(None)))
    }


@pytest.mark.parametrize("name", [n for n in ood.available() if n != "deep-ensemble"])
def test_stored_params_are_what_rows_stored_before(name: str) -> None:
    det = ood.create(name)
    assert det.stored_params() == _former_row_params(det)
    assert list(det.stored_params()) == [k for k in det.get_params() if k != "chunk"]


def test_deep_ensemble_members_are_not_stored() -> None:
    # a sequence of models is no result parameter (the former rule stored members=None only when absent)
    assert ood.create("deep-ensemble").stored_params() == {"statistic": "entropy"}


def test_declared_parameters_replace_hand_validation() -> None:
    with pytest.raises(InputError, match="knn k must be >= 1"):
        ood.create("knn", k=0)
    with pytest.raises(InputError, match="ash variant must be one of"):
        ood.create("ash", variant="x")
    with pytest.raises(InputError, match="react percentile must be > 0"):
        ood.create("react", percentile=0)
    assert ood.create("react", percentile=95).percentile == 95.0
    assert repr(ood.create("knn", k=5)) == "KNN(k=5, chunk=1024)"
    assert list(ood.DETECTORS.parameters("nnguide") or []) == ["k", "chunk"]
    assert ood.create("nnguide").k == 100 and ood.create("knn").k == 50


def test_quick_tag_is_the_former_quick_list() -> None:
    former = ["msp", "max-logit", "energy", "mahalanobis", "knn", "vim", "react"]
    assert ood.DETECTORS.tagged(ood.QUICK) == sorted(former)
    assert ood.DETECTORS.tagged(ood.NEEDS_DROPOUT) == ["mc-dropout"]
    assert ood.DETECTORS.tagged(ood.NEEDS_MEMBERS) == ["deep-ensemble"]


def test_dropout_layers(small_net) -> None:
    assert len(ood.dropout_layers(small_net)) == 1
    assert ood.dropout_layers(torch.nn.Linear(2, 2)) == []


def test_not_fitted_is_read_from_learned_state(small_net, small_test) -> None:
    det = ood.create("knn")
    with pytest.raises(NotFittedError, match="knn is not fitted"):
        det.score(small_net, small_test)


def test_vim_builds_on_residual(small_net, small_data, small_test) -> None:
    assert issubclass(ood.ViM, ood.Residual)
    vim = ood.create("vim", dim=8).fit(small_net, small_data)
    res = ood.create("residual", dim=8).fit(small_net, small_data)
    torch.testing.assert_close(vim.origin_, res.origin_, rtol=0, atol=0)
    torch.testing.assert_close(vim.residual_basis_, res.residual_basis_, rtol=0, atol=0)
    out = forward(small_net, small_test)
    # ViM = alpha * residual - logsumexp(logits), with Residual's score as the residual
    want = vim.alpha_ * res.score(small_net, small_test).double() - torch.logsumexp(out.logits.double(), dim=1)
    torch.testing.assert_close(vim.score(small_net, small_test), want.float(), rtol=1e-5, atol=1e-5)


def test_score_graph_lets_gradients_flow(small_net, small_data, small_test) -> None:
    det = ood.create("energy").fit(small_net, small_data)
    logits = forward(small_net, small_test).logits.clone().requires_grad_(True)
    s = det.score_graph(small_net, Outputs(logits, None))
    assert s.requires_grad
    s.sum().backward()
    assert logits.grad is not None
    # softmax: d(-logsumexp)/d logits = -softmax
    torch.testing.assert_close(logits.grad, -logits.detach().softmax(dim=1))
    torch.testing.assert_close(det.score_outputs(small_net, Outputs(logits.detach(), None)), s.detach().float())


def test_score_cache_fits_once_and_scores_each_set_once(small_net, small_data, small_test) -> None:
    names = ["msp", "knn", "vim"]
    ood_x = torch.rand(15, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    cache = ood.ScoreCache(
        small_net, small_data, names, params={"knn": {"k": 3}}, inputs={"in": small_test, "o": ood_x}
    )
    calls: list[int] = []
    handle = small_net.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    try:
        s_in = cache.scores("in")
        assert sum(calls) == len(small_data) + small_test.shape[0]  # one pass to fit, one to score
        assert cache.scores("in") is s_in  # cached
        cache.scores("o")
        assert sum(calls) == len(small_data) + small_test.shape[0] + ood_x.shape[0]
    finally:
        handle.remove()
    assert list(s_in) == names and cache.names == names
    assert cache.info["knn"] == {"k": 3} and cache.info["vim"] == {"dim": None}
    dets = ood.fit_detectors([ood.create("msp"), ood.create("knn", k=3), ood.create("vim")], small_net, small_data)
    want = ood.score_detectors(dets, small_net, small_test)
    for n in names:
        torch.testing.assert_close(s_in[n], want[n], rtol=0, atol=0)
    with pytest.raises(InputError, match="no input set 'nope'"):
        cache.scores("nope")


def test_score_cache_replace_and_repeated_names(small_net, small_data, small_test) -> None:
    cache = ood.ScoreCache(small_net, small_data, ["knn", ood.create("knn", k=2)], inputs={"in": small_test})
    assert cache.names == ["knn", "knn-2"]
    first = cache.scores("in")
    tuned = ood.create("knn", k=7).fit(small_net, small_data)
    cache.replace("knn", tuned, tuned_on="synthetic")
    assert cache.info["knn"] == {"k": 7, "tuned_on": "synthetic"}
    again = cache.scores("in")
    assert again is not first
    torch.testing.assert_close(again["knn"], tuned.score(small_net, small_test), rtol=0, atol=0)


def test_score_cache_fits_a_held_out_detector_on_the_held_out_data(small_net, small_data, small_test) -> None:
    from mlsafety.core import ArrayDataset
    from mlsafety.monitoring.calibration.scaling import TemperatureScaler

    g = torch.Generator().manual_seed(5)
    held = ArrayDataset(torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g))
    names = ["temperature-msp", "mahalanobis"]
    cache = ood.ScoreCache(small_net, small_data, names, inputs={"in": small_test}, held_out=held)
    temp, maha = cache.detectors
    with torch.no_grad():  # Guo et al.'s T: fitted by NLL on the held-out inputs, not on the fit data
        want = TemperatureScaler().fit(small_net(held.x), held.y).temperature_
        other = TemperatureScaler().fit(small_net(small_data.x), small_data.y).temperature_
    assert temp.temperature_ == pytest.approx(want, rel=1e-4) and abs(want - other) > 1e-3
    alone = ood.fit_detectors([ood.create("mahalanobis")], small_net, small_data)[0]  # the others: the fit data
    torch.testing.assert_close(maha.score(small_net, small_test), alone.score(small_net, small_test))
    assert cache.info["temperature-msp"]["fitted_on"] == "held-out data"
    assert "fitted_on" not in cache.info["mahalanobis"]
    plain = ood.ScoreCache(small_net, small_data, ["temperature-msp"], inputs={"in": small_test})
    assert plain.detectors[0].temperature_ == pytest.approx(other, rel=1e-4)  # no held-out data: the fit data


def test_evaluate_is_the_cache_and_the_metrics(small_net, small_data, small_test) -> None:
    ood_x = torch.rand(15, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    got = ood.evaluate(["msp", "energy"], small_net, small_data, small_test, {"noise": ood_x}, n_boot=20, seed=1)
    from mlsafety.core import derive_seed

    det = ood.create("energy").fit(small_net, small_data)
    want = ood_metrics(
        det.score(small_net, small_test), det.score(small_net, ood_x), 20, derive_seed(1, "noise", "energy")
    )
    assert got["noise"]["energy"] == want


def test_score_cache_fits_kl_matching_templates_on_the_held_out_data(small_net, small_data, small_test) -> None:
    """Hendrycks et al. (2022) build KL matching's class templates from validation inputs (pytorch-ood:
    ``d_y = E_{x ~ X_val}[p(y | x)]``); on the training data the model has fitted, the templates come out
    sharper than the posteriors of new in-distribution inputs."""
    from mlsafety.core import ArrayDataset

    g = torch.Generator().manual_seed(6)
    held = ArrayDataset(torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g))
    cache = ood.ScoreCache(small_net, small_data, ["kl-matching"], inputs={"in": small_test}, held_out=held)
    (det,) = cache.detectors
    want = ood.create("kl-matching").fit(small_net, held)
    other = ood.create("kl-matching").fit(small_net, small_data)
    assert det.templates_.shape == want.templates_.shape
    torch.testing.assert_close(det.templates_, want.templates_)
    assert det.templates_.shape != other.templates_.shape or not torch.allclose(det.templates_, other.templates_)
    assert cache.info["kl-matching"]["fitted_on"] == "held-out data"
