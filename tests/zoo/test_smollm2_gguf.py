"""smollm2-135m as loaded computes what its GGUF file says, checked without transformers' GGUF reader.

The reference reads the GGUF's tensors (``gguf.GGUFReader`` only splits the file), dequantises the
Q4_1 and Q8_0 blocks by ggml's layout, and runs a Llama forward pass the way llama.cpp does: on the
tensors as stored (Q and K rows permuted by llama.cpp's converter) with rotary pairs of adjacent
dimensions. The loaded model uses the Hugging Face layout (Q/K rows un-permuted, rotate-half rope),
so a wrong un-permutation, rope base, norm epsilon, head grouping or tied head would show.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mlsafety import zoo

pytestmark = pytest.mark.slow


def _dequantise(tensor: Any) -> torch.Tensor:
    """One GGUF tensor as float32, shape ``(ne1, ne0)`` (ggml's first dimension varies fastest)."""
    raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
    kind = tensor.tensor_type.name
    if kind == "F32":
        flat = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    elif kind == "Q8_0":  # blocks of 32: fp16 scale d, 32 int8 q; x = d * q
        blocks = raw.reshape(-1, 34)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        flat = (d * blocks[:, 2:].view(np.int8).astype(np.float32)).reshape(-1)
    elif kind == "Q4_1":  # blocks of 32: fp16 d, fp16 m, 16 bytes; low nibbles are x0..x15, high x16..x31
        blocks = raw.reshape(-1, 20)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        q = np.concatenate([blocks[:, 4:] & 15, blocks[:, 4:] >> 4], axis=1).astype(np.float32)
        flat = (d * q + m).reshape(-1)
    else:
        raise AssertionError(f"the pinned GGUF holds no {kind} tensors")
    return torch.from_numpy(flat.reshape([int(s) for s in reversed(tensor.shape)]).copy())


@pytest.fixture(scope="module")
def gguf_and_model() -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
    from gguf import GGUFReader

    reader = GGUFReader(zoo.asset_file("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    weights = {t.name: _dequantise(t) for t in reader.tensors}
    fields = {k: f for k, f in reader.fields.items()}
    return weights, fields, zoo.load_model("smollm2-135m")


def _value(fields: dict[str, Any], key: str) -> Any:
    return fields[key].contents()


def _strings(fields: dict[str, Any], key: str) -> list[str]:
    field = fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's converter, which reorders each head's rows from halves to interleaved pairs."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def test_the_cached_weights_are_the_gguf_tensors_dequantised(gguf_and_model: Any) -> None:
    weights, fields, model = gguf_and_model
    heads, kv_heads = _value(fields, "llama.attention.head_count"), _value(fields, "llama.attention.head_count_kv")
    state = model.state_dict()
    pairs = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names = {
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for layer in range(_value(fields, "llama.block_count")):
        pairs |= {f"model.layers.{layer}.{hf}.weight": f"blk.{layer}.{g}.weight" for hf, g in names.items()}
        for hf, g, n in (("q_proj", "attn_q", heads), ("k_proj", "attn_k", kv_heads)):
            key = f"model.layers.{layer}.self_attn.{hf}.weight"
            assert torch.equal(state[key], _unpermute(weights[f"blk.{layer}.{g}.weight"], n)), key
    for hf, g in pairs.items():
        assert torch.equal(state[hf], weights[g]), hf
    assert "output.weight" not in weights and torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    config = model.config
    assert config.rope_parameters["rope_theta"] == _value(fields, "llama.rope.freq_base") == 100000.0
    assert config.rms_norm_eps == pytest.approx(_value(fields, "llama.attention.layer_norm_rms_epsilon"), rel=1e-6)
    assert (config.num_attention_heads, config.num_key_value_heads) == (heads, kv_heads) == (9, 3)


def test_the_tokenizer_is_the_gguf_vocabulary_and_adds_no_bos(gguf_and_model: Any) -> None:
    _, fields, model = gguf_and_model
    tok = model.tokenizer
    vocab = _strings(fields, "tokenizer.ggml.tokens")
    assert tok.convert_ids_to_tokens(list(range(len(vocab)))) == vocab
    assert _value(fields, "tokenizer.ggml.add_bos_token") is False  # SmolLM2 prompts start without a BOS
    ids = tok("Hello world")["input_ids"]
    assert ids == [vocab.index("Hello"), vocab.index("Ġworld")]
    assert tok.eos_token_id == _value(fields, "tokenizer.ggml.eos_token_id") == vocab.index("<|im_end|>")


def _llama_cpp_logits(weights: dict[str, torch.Tensor], fields: dict[str, Any], ids: list[int]) -> torch.Tensor:
    """Logits ``(T, V)`` by llama.cpp's Llama graph on the GGUF tensors as stored."""
    heads, kv_heads = _value(fields, "llama.attention.head_count"), _value(fields, "llama.attention.head_count_kv")
    width, eps = _value(fields, "llama.embedding_length"), _value(fields, "llama.attention.layer_norm_rms_epsilon")
    theta, dim = _value(fields, "llama.rope.freq_base"), width // heads
    n = len(ids)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * theta ** (-torch.arange(0, dim, 2) / dim)[None, :]
    cos, sin = angles.cos().float()[:, None], angles.sin().float()[:, None]

    def rope(x: torch.Tensor) -> torch.Tensor:  # (T, H, dim), pairs (2i, 2i + 1) rotated by angle i
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)

    def norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    future = torch.full((n, n), float("-inf")).triu(1)
    h = weights["token_embd.weight"][ids]
    for layer in range(_value(fields, "llama.block_count")):
        w = {k.split(".", 2)[2]: v for k, v in weights.items() if k.startswith(f"blk.{layer}.")}
        x = norm(h, w["attn_norm.weight"])
        q = rope((x @ w["attn_q.weight"].T).view(n, heads, dim))
        k = rope((x @ w["attn_k.weight"].T).view(n, kv_heads, dim)).repeat_interleave(heads // kv_heads, dim=1)
        v = (x @ w["attn_v.weight"].T).view(n, kv_heads, dim).repeat_interleave(heads // kv_heads, dim=1)
        att = (torch.einsum("qhd,khd->hqk", q, k) / dim**0.5 + future).softmax(-1)
        h = h + torch.einsum("hqk,khd->qhd", att, v).reshape(n, width) @ w["attn_output.weight"].T
        x = norm(h, w["ffn_norm.weight"])
        gate = torch.nn.functional.silu(x @ w["ffn_gate.weight"].T)
        h = h + (gate * (x @ w["ffn_up.weight"].T)) @ w["ffn_down.weight"].T
    return norm(h, weights["output_norm.weight"]) @ weights["token_embd.weight"].T


def test_the_loaded_model_computes_the_llama_cpp_forward_pass(gguf_and_model: Any) -> None:
    weights, fields, model = gguf_and_model
    tok = model.tokenizer
    texts = ("The capital of France is", "Water boils at a temperature of 100 degrees Celsius and freezes at")
    for text, after in zip(texts, (" Paris", " a")):
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            reference = _llama_cpp_logits(weights, fields, ids)
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        torch.testing.assert_close(logits, reference, rtol=0, atol=2e-4)  # logits reach ~35; float32 round-off
        top2 = reference.topk(2, -1).values
        clear = top2[:, 0] - top2[:, 1] > 1e-3  # a closer top two may swap with another CPU's float kernels
        assert torch.equal(logits.argmax(-1)[clear], reference.argmax(-1)[clear]) and bool(clear[-1])
        assert tok.decode(int(reference[-1].argmax())) == after  # the reference itself is a working model
