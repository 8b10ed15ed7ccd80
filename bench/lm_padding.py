"""Batched, padded continuation scoring against one-by-one unpadded scoring on the embedded SmolLM2.

For 40 (prompt, continuation) pairs of different lengths (20 questions, a right and a wrong answer
each) it measures, on SmolLM2-135M-Instruct (4-bit Q4_1 weights dequantised to fp32):

1. agreement: the largest |difference| between ``LanguageModel.logprobs`` batched with left or right
   padding and a plain unbatched, unpadded ``transformers`` forward pass per pair (the reference),
   absolute and relative to the score; and, for contrast, a naive left-padded batch that passes the
   attention mask but no position ids (what a plain ``model(**tokenizer(..., padding=True))`` call
   does). SmolLM2 uses rotary embeddings, which see relative positions only, so the naive batch is
   also right here up to rounding; with absolute position embeddings (GPT-2) it is not, which
   ``tests/core/test_lm.py`` shows;
2. speed: seconds for all pairs batched (batch sizes 8 and 40) against one pair at a time through
   the same adapter, medians over repetitions, reported as ratios;
3. the known answer: log p(" Paris" | "The capital of France is") and log p(" Rome" | ...).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/lm_padding.py [--repeats 3] [--threads 1]``; prints
the figures and writes ``bench/results/lm_padding.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mlsafety.core import LanguageModel
from mlsafety.zoo import load_model

QUESTIONS = [
    ("The capital of France is", " Paris", " Rome"),
    ("The largest planet in the solar system is", " Jupiter", " Mars"),
    ("Water boils at sea level at a temperature of", " 100 degrees Celsius", " 50 degrees Celsius"),
    ("The author of Romeo and Juliet is", " William Shakespeare", " Charles Dickens"),
    ("The chemical symbol for gold is", " Au", " Ag"),
    ("Q: How many legs does a spider have?\nA:", " Eight", " Six"),
    ("The first person to walk on the Moon was", " Neil Armstrong", " Yuri Gagarin"),
    ("The fastest land animal is the", " cheetah", " tortoise"),
    ("Paris is to France as Berlin is to", " Germany", " Spain"),
    ("The opposite of hot is", " cold", " warm"),
    ("A triangle has", " three sides", " four sides"),
    ("The Pacific Ocean is the", " largest ocean on Earth", " smallest ocean on Earth"),
    ("In the story, the wolf tried to eat Little Red Riding", " Hood", " Shoe"),
    ("The square root of 81 is", " 9", " 7"),
    ("Photosynthesis in plants converts sunlight, water and carbon dioxide into", " glucose and oxygen", " salt"),
    ("The currency of Japan is the", " yen", " euro"),
    ("Mount Everest is located in the", " Himalayas", " Alps"),
    ("Q: Is the Earth flat?\nA:", " No", " Yes"),
    ("Honey is made by", " bees", " cows"),
    ("The freezing point of water in Fahrenheit is", " 32 degrees", " 0 degrees"),
]


def _reference(model: Any, tokenizer: Any, prompts: list[str], conts: list[str]) -> torch.Tensor:
    """Unbatched, unpadded, no mask: one plain forward per pair (trailing prompt spaces: none here)."""
    out = []
    for prompt, cont in zip(prompts, conts):
        ids = torch.tensor([tokenizer(prompt + cont)["input_ids"]])
        n_prompt = len(tokenizer(prompt)["input_ids"])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        out.append(sum(float(logp[t - 1, ids[0, t]]) for t in range(n_prompt, ids.shape[1])))
    return torch.tensor(out)


def _naive_left(model: Any, tokenizer: Any, prompts: list[str], conts: list[str]) -> torch.Tensor:
    """A left-padded batch with the attention mask but default position ids (the common mistake)."""
    whole = tokenizer([p + c for p, c in zip(prompts, conts)], padding=True, padding_side="left", return_tensors="pt")
    lengths = whole["attention_mask"].sum(1)
    n_prompt = [len(tokenizer(p)["input_ids"]) for p in prompts]
    with torch.no_grad():
        logp = model(**whole).logits.float().log_softmax(-1)
    width = whole["input_ids"].shape[1]
    out = []
    for i in range(len(prompts)):
        start = width - int(lengths[i])
        targets = range(start + n_prompt[i], width)
        out.append(sum(float(logp[i, t - 1, whole["input_ids"][i, t]]) for t in targets))
    return torch.tensor(out)


def _median_seconds(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lm_padding.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = load_model("smollm2-135m")
    tokenizer = model.tokenizer
    load_s = time.perf_counter() - start

    prompts = [q for q, _, _ in QUESTIONS for _ in range(2)]
    conts = [c for _, right, wrong in QUESTIONS for c in (right, wrong)]
    reference = _reference(model, tokenizer, prompts, conts)
    lms = {side: LanguageModel(model, tokenizer, padding_side=side) for side in ("left", "right")}
    diffs: dict[str, float] = {}
    rel: dict[str, float] = {}
    for side, lm in lms.items():
        for size in (1, 8, len(prompts)):
            key = f"{side}_batch{size}" if size > 1 else f"{side}_one_by_one"
            gap = (lm.logprobs(prompts, conts, batch_size=size) - reference).abs()
            diffs[key] = float(gap.max())
            rel[key] = float((gap / reference.abs()).max())
    naive = float((_naive_left(model, tokenizer, prompts, conts) - reference).abs().max())

    lm = lms["left"]
    seconds = {
        f"batch{size}": _median_seconds(lambda size=size: lm.logprobs(prompts, conts, batch_size=size), args.repeats)
        for size in (8, len(prompts))
    }
    seconds["one_by_one"] = _median_seconds(lambda: lm.logprobs(prompts, conts, batch_size=1), args.repeats)
    paris, rome = lm.logprobs(["The capital of France is"] * 2, [" Paris", " Rome"]).tolist()
    correct = lm.logprobs(prompts, conts).reshape(-1, 2)
    result = {
        "model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 weights dequantised to fp32)",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "pairs": len(prompts),
        "load_s": round(load_s, 2),
        "max_abs_diff_vs_unbatched_unpadded": diffs,
        "max_rel_diff_vs_unbatched_unpadded": rel,
        "max_abs_diff_naive_left_padding_without_position_ids": naive,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "speedup_vs_one_by_one": {
            k: round(seconds["one_by_one"] / v, 2) for k, v in seconds.items() if k != "one_by_one"
        },
        "logprob_paris": round(paris, 4),
        "logprob_rome": round(rome, 4),
        "right_answer_preferred": f"{int((correct[:, 0] > correct[:, 1]).sum())}/{len(QUESTIONS)}",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
