"""The logit lens: its last layer is the model's own prediction; targets' log-probs and ranks are consistent."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError, LanguageModel
from mlsafety.monitoring.interp import cache, logit_lens
from mlsafety.monitoring.interp._common import encode_left, forward_last

TEXTS = ["the cat sat on the", "a dog ran", "we saw a big red film in"]


def test_last_layer_equals_the_model_logits(lm: LanguageModel) -> None:
    result = logit_lens(lm, TEXTS, top_k=4, targets=["good", "bad", "the"])
    batch = encode_left(lm, TEXTS)
    with torch.no_grad():
        logprobs = forward_last(lm, batch.input_ids, batch.attention_mask).log_softmax(-1)
    best = logprobs.topk(4, dim=-1)
    assert len(result.layers) == lm.n_layers + 1
    torch.testing.assert_close(result.top_logprobs[-1], best.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(result.top_ids[-1], best.indices)
    assert result.target_logprob is not None and result.target_rank is not None
    ids = torch.tensor([lm.tokenizer.convert_tokens_to_ids(t) for t in ("good", "bad", "the")])
    torch.testing.assert_close(result.target_logprob[-1], logprobs[torch.arange(3), ids], atol=1e-5, rtol=1e-5)
    # a target's rank 0 means it is the top token, and its log-prob then equals the top-1 log-prob
    top = result.target_rank == 0
    torch.testing.assert_close(result.target_logprob[top], result.top_logprobs[..., 0][top])
    assert result.top_tokens[-1][0][0] == lm.tokenizer.decode([int(best.indices[0, 0])])
    # the summary is per layer, over prompts: a Student-t interval of the three prompts' log-probs
    from scipy import stats

    assert result.target_mean is not None and result.target_low is not None and result.target_high is not None
    assert result.target_mean.shape == (lm.n_layers + 1,)
    for layer, lp in enumerate(result.target_logprob.double()):
        lo, hi = stats.t.interval(0.95, 2, loc=float(lp.mean()), scale=float(lp.std() / 3**0.5))
        assert float(result.target_mean[layer]) == pytest.approx(float(lp.mean()), rel=1e-5, abs=1e-5)
        assert (float(result.target_low[layer]), float(result.target_high[layer])) == pytest.approx((lo, hi), rel=1e-4)


def test_early_layers_decode_their_own_stream(lm: LanguageModel) -> None:
    """Layer 0's lens is unembed(final_norm(embedding)), the norm's statistics those of that stream (as
    nostalgebraist 2020): computed by hand from the cached stream with the family's own final norm."""
    result = logit_lens(lm, TEXTS, position=-2, top_k=3)
    stream = cache(lm, TEXTS, ["blocks.0.resid_pre"])["blocks.0.resid_pre"][:, -2]
    model = lm.module
    norm = model.model.norm if lm.points.family == "llama" else model.transformer.ln_f
    with torch.no_grad():
        by_hand = model.lm_head(norm(stream)).log_softmax(-1).topk(3, dim=-1)
    torch.testing.assert_close(result.top_logprobs[0], by_hand.values, atol=1e-5, rtol=1e-5)
    assert result.target_logprob is None


def test_bad_input(llama: LanguageModel) -> None:
    with pytest.raises(InputError, match="position"):
        logit_lens(llama, TEXTS, position=40)
    with pytest.raises(InputError, match="top_k"):
        logit_lens(llama, TEXTS, top_k=0)
    with pytest.raises(InputError, match="one per prompt"):
        logit_lens(llama, TEXTS, targets=["good"])
