"""The audit check ``adversarial`` and its hazard provider, on a tiny model and data made here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.audit import CHECKS, AuditContext, AuditData
from mlsafety.audit.checks.adversarial import AdversarialSet, default_eps
from mlsafety.core import ArrayDataset, Classifier, InputError, UnknownNameError


def _setup(quick: bool = True, model: nn.Module | None = None, **params: object) -> tuple[object, AuditContext]:
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(60, 1, 4, 4, generator=g)
    torch.manual_seed(0)
    net = model or nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:6] = (y[:6] + 1) % 4  # a few clean errors
    data = AuditData(ArrayDataset(x[:40], y[:40], name="toy"), ArrayDataset(x[40:], y[40:], name="toy"))
    params = {"attack_params": {"autoattack-fast": {"steps": 5}}, **params}
    check = CHECKS.create("adversarial", quick=quick, **params)
    ctx = AuditContext(Classifier(net), data, seed=3, quick=quick, check_params={"adversarial": check.params})
    return check, ctx


def test_hazards_rows_and_artifacts() -> None:
    check, ctx = _setup(eps=[0.0, 0.05, 0.3], n=30)
    hazards = [str(h) for h in check.hazards(ctx)]  # type: ignore[attr-defined]
    assert hazards == [f"adversarial/autoattack-fast/{e:g}" for e in (0.0, 0.05, 0.3)]
    results = check.run_tasks(ctx)
    rows = [r for res in results for r in res.rows]
    robust = {r.hazard: r for r in rows if r.metric == "robust_accuracy"}
    assert set(robust) == set(hazards)
    values = [robust[h].value for h in hazards]
    assert values[0] >= values[1] >= values[2]
    clean = next(r for r in rows if r.metric == "clean_accuracy_subset")
    assert values[0] == pytest.approx(clean.value)  # eps 0 changes nothing
    assert all(r.n == 30 and r.ci_low <= r.value <= r.ci_high for r in robust.values())
    assert any(r.metric == "median_perturbation_norm" and r.value <= 0.3 + 1e-6 for r in rows)
    arts = {a.name: a for res in results for a in res.artifacts}
    assert {"robust-accuracy-curve", "adversarial-pairs"} <= set(arts)
    assert all(a.data.startswith(b"\x89PNG") for a in arts.values())


def test_hazard_is_deterministic_and_keeps_its_sources() -> None:
    _, ctx = _setup(eps=[0.1], n=30)
    _, ctx2 = _setup(eps=[0.1], n=30)
    a = ctx.hazard("adversarial/autoattack-fast/0.1")
    b = ctx2.hazard("adversarial/autoattack-fast/0.1")
    assert isinstance(a, AdversarialSet) and torch.equal(a.x, b.x)
    assert torch.equal(a.x_clean, ctx.data.test.x[a.index])
    assert float((a.x - a.x_clean).abs().max()) <= 0.1 + 1e-6
    # any registered attack can be asked for, in any order, even one the check did not plan
    pgd = ctx.hazard("adversarial/pgd/0.1")
    assert pgd.x.shape == a.x.shape
    with pytest.raises(UnknownNameError):
        ctx.hazard("adversarial/no-such-attack/0.1")
    with pytest.raises(UnknownNameError):
        ctx.hazard("adversarial/pgd/abc")


class _Quantised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


def test_sanity_flags_become_warning_rows() -> None:
    check, ctx = _setup(model=_Quantised().eval(), eps=[0.2], n=20)
    rows = [r for res in check.run_tasks(ctx) for r in res.rows]
    warn = [r for r in rows if r.metric == "warning_zero_gradients"]
    assert warn and warn[0].value == 1.0 and warn[0].hazard == "adversarial/autoattack-fast/0.2"


def test_parameters_are_checked() -> None:
    with pytest.raises(InputError):
        _setup(eps=[2.0])[0].hazards(_setup()[1])  # type: ignore[attr-defined]
    with pytest.raises(UnknownNameError):
        _setup(attacks=["pgdd"])[0].hazards(_setup()[1])  # type: ignore[attr-defined]
    with pytest.raises(InputError):
        CHECKS.create("adversarial", epsilon=0.1)


def test_default_eps_scales_with_the_data() -> None:
    x = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    grid = default_eps(x, "linf")
    assert grid == sorted(grid) and 0 < grid[0] < grid[-1] <= 1
    assert default_eps(x * 0.5, "linf")[-1] < grid[-1]
    assert default_eps(x, "l2")[-1] > grid[-1]


def test_plots_task_draws_the_curve_from_the_attack_rows_without_attacking_again(monkeypatch) -> None:
    from mlsafety.audit.checks import adversarial as adv_module

    check, ctx = _setup(eps=[0.05, 0.3], n=30)
    tasks = check.tasks(ctx)  # type: ignore[attr-defined]
    attacks, plots = tasks[:-1], tasks[-1]
    assert plots.key == "plots" and plots.needs == tuple(t.key for t in attacks)
    results = check.run_tasks(ctx, attacks)  # type: ignore[attr-defined]
    # a fresh process (another Ray worker): only the stored rows arrive, and attacking is refused
    _, fresh = _setup(eps=[0.05, 0.3], n=30)
    first, second = attacks[0].key, attacks[1].key
    fresh.earlier = {("adversarial", first): results[0].rows, ("adversarial", second): []}  # 0.3: budget left it out
    drawn = {}

    def no_attack(*args: object, **kw: object) -> None:
        raise AssertionError("the plots task attacked again")

    monkeypatch.setattr(adv_module.atk, "create", no_attack)
    monkeypatch.setattr(adv_module, "curve_png", lambda curves, clean, norm: drawn.update(c=curves, k=clean) or b"")
    out = check.tasks(fresh)[-1].run()  # type: ignore[attr-defined]
    robust = next(r for r in results[0].rows if r.metric == "robust_accuracy")
    assert drawn["c"] == {"autoattack-fast": [(0.05, robust.value, robust.ci_low, robust.ci_high)]}
    (clean,) = out.rows
    assert clean.metric == "clean_accuracy_subset" and drawn["k"] == (clean.value, clean.ci_low, clean.ci_high)
    index = adv_module._subset(fresh, 30)
    with torch.no_grad():
        right = fresh.model(fresh.data.test.x[index]).argmax(1) == fresh.data.test.y[index]
    assert clean.n == 30 and clean.value == int(right.sum()) / 30
    with pytest.raises(KeyError, match="not among the needs"):
        check.tasks(_setup(eps=[0.05, 0.3], n=30)[1])[-1].run()  # type: ignore[attr-defined]
