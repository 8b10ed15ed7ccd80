"""Attribution patching: exact where the metric is linear in the activation, close to exact patching elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import InputError, LanguageModel
from mlsafety.monitoring.interp import activation_patching, agreement, attribution_patching
from tests.monitoring.interp.conftest import make_pairs
from tests.support.text import tiny_llama


@pytest.fixture(scope="module")
def linear_tail() -> LanguageModel:
    """A tiny Llama whose final norm is the identity: the logits are linear in the last block's outputs."""
    model = tiny_llama(1)
    model.model.norm = nn.Identity()
    return LanguageModel(model)


@pytest.mark.parametrize("point", ["mlp_out", "resid_post"])
def test_exact_where_the_metric_is_linear(linear_tail: LanguageModel, point: str) -> None:
    pairs = make_pairs(4, 5, seed=5)
    exact = activation_patching(linear_tail, **pairs, point=point, layers=[-1])  # type: ignore[arg-type]
    approx = attribution_patching(linear_tail, **pairs, point=point, layers=[-1])  # type: ignore[arg-type]
    torch.testing.assert_close(approx.raw, exact.raw, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(approx.clean.values, exact.clean.values)
    # earlier positions cannot reach the last token's logits through a last-block output
    torch.testing.assert_close(approx.values[:, :, :-1], torch.zeros_like(approx.values[:, :, :-1]), atol=1e-5, rtol=0)
    # a nonlinear site (the first block's residual) is not exact, so the test above could fail
    early_exact = activation_patching(linear_tail, **pairs, layers=[0], positions=[1])  # type: ignore[arg-type]
    early_approx = attribution_patching(linear_tail, **pairs, layers=[0], positions=[1])  # type: ignore[arg-type]
    assert not torch.allclose(early_exact.raw, early_approx.raw, atol=1e-3)


def test_agrees_with_exact_patching_on_tiny_llama(llama: LanguageModel) -> None:
    """Threshold 0.8 on the MLP outputs. Measured on tiny_llama(0) over four seeded sets of 8 pairs, the
    Pearson correlation of per-site mean effects was 0.996, 0.857, 0.895, 0.969 for mlp_out but only
    0.32-0.94 for resid_pre and -0.95-0.96 for attn_out: this random model (init std 0.2, width 32) has
    saturated attention and RMS norms over few dimensions, exactly where a first-order estimate breaks, so
    only the MLP sites are held to a threshold here (the real-LM figures are in bench/interp_patching.py)."""
    pairs = make_pairs(8, 5, seed=0)
    exact = activation_patching(llama, **pairs, point="mlp_out")  # type: ignore[arg-type]
    approx = attribution_patching(llama, **pairs, point="mlp_out")  # type: ignore[arg-type]
    assert approx.values.shape == exact.values.shape
    agree = agreement(exact, approx)
    assert agree.pearson > 0.8 and agree.spearman > 0.8, agree
    assert agree.pearson_ci[0] <= agree.pearson <= agree.pearson_ci[1]


def test_model_left_unchanged_and_bad_input(llama: LanguageModel) -> None:
    flags = [p.requires_grad for p in llama.module.parameters()]
    pairs = make_pairs(3, 4)
    attribution_patching(llama, **pairs, point="head_out")  # type: ignore[arg-type]
    assert [p.requires_grad for p in llama.module.parameters()] == flags
    assert all(p.grad is None for p in llama.module.parameters())
    with pytest.raises(InputError, match="point"):
        attribution_patching(llama, **pairs, point="embed")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="shapes"):
        agreement(torch.zeros(3), torch.zeros(4))


def _run_with_grad(lm: LanguageModel, pairs: dict, name: str, clean: bool) -> tuple[torch.Tensor, ...]:
    """The clean (or corrupted) run's logit differences ``(P,)``, activation at ``name`` and its gradient."""
    from mlsafety.monitoring.interp._common import answer_ids, encode_pairs, forward_last
    from mlsafety.monitoring.interp.metrics import logit_diff

    clean_b, corr_b = encode_pairs(lm, pairs["clean"], pairs["corrupted"])
    batch = clean_b if clean else corr_b
    n = len(pairs["clean"])
    correct, wrong = answer_ids(lm, pairs["correct"], n, "c"), answer_ids(lm, pairs["wrong"], n, "w")
    seen: dict[str, torch.Tensor] = {}

    def leaf(act: torch.Tensor, hook: str) -> torch.Tensor:
        seen[hook] = act.detach().requires_grad_(True)
        return seen[hook]

    with torch.enable_grad(), lm.hooks({name: leaf}):
        ld = logit_diff(forward_last(lm, batch.input_ids, batch.attention_mask), correct, wrong)
        (grad,) = torch.autograd.grad(ld.sum(), [seen[name]])
    return ld.detach(), seen[name].detach(), grad


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_the_gradient_is_taken_at_the_target_run(lm: LanguageModel, direction: str) -> None:
    """Denoising (clean into the corrupted run) expands at the corrupted run (Nanda 2023), noising at the clean
    run (Syed et al. 2023): ``m(target) + (a_source - a_target) . dm/da (target)``, as the module docstring says.
    At a non-linear site the gradient of the source run gives another estimate, so this pins the point."""
    pairs = make_pairs(4, 5, seed=3)
    name = "blocks.1.resid_pre"
    got = attribution_patching(lm, **pairs, point="resid_pre", layers=[1], direction=direction)  # type: ignore[arg-type]
    target_ld, target_act, target_grad = _run_with_grad(lm, pairs, name, clean=direction == "noise")
    source_ld, source_act, source_grad = _run_with_grad(lm, pairs, name, clean=direction == "denoise")
    expected = target_ld[:, None] + ((source_act - target_act) * target_grad).sum(-1)
    torch.testing.assert_close(got.raw[:, 0], expected, atol=1e-4, rtol=1e-4)
    at_source = target_ld[:, None] + ((source_act - target_act) * source_grad).sum(-1)
    assert not torch.allclose(got.raw[:, 0], at_source, atol=1e-2)
    # normalised like activation patching: 0 = the corrupted run, 1 = the clean run, in both directions
    clean_ld, corrupted_ld = got.clean.values, got.corrupted.values
    torch.testing.assert_close(clean_ld, target_ld if direction == "noise" else source_ld, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(corrupted_ld, source_ld if direction == "noise" else target_ld, atol=1e-5, rtol=1e-5)
    gap = (clean_ld - corrupted_ld)[:, None]
    torch.testing.assert_close(got.values[:, 0], (got.raw[:, 0] - corrupted_ld[:, None]) / gap)


def test_head_estimates_sum_each_heads_columns(lm: LanguageModel) -> None:
    """``head_out``: one estimate per head, its first-order terms summed over d_head and over every column."""
    pairs = make_pairs(4, 5, seed=4)
    name = "blocks.1.head_out"
    got = attribution_patching(lm, **pairs, point="head_out", layers=[1])  # type: ignore[arg-type]
    target_ld, target_act, target_grad = _run_with_grad(lm, pairs, name, clean=False)
    _, source_act, _ = _run_with_grad(lm, pairs, name, clean=True)
    expected = target_ld[:, None] + ((source_act - target_act) * target_grad).sum((1, 3))  # (P, H)
    assert got.raw.shape == (4, 1, lm.points.n_heads)
    torch.testing.assert_close(got.raw[:, 0], expected, atol=1e-4, rtol=1e-4)
