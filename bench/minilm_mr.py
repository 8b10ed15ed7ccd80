"""Bench: how accurate is the shipped ``minilm-mr``, and what does its recipe cost?

Measures, on this machine:

1. with ``--train``: ``mlsafety zoo train minilm-mr`` (the recipe, with the thread count the zoo
   records for it) into a temporary file, its wall time, and whether it reproduces the shipped
   file bit for bit (float sums depend on the CPU; see ``bench/reproduce.py``);
2. the shipped model's accuracy on ``mr``'s val and test splits, each with its exact
   (Clopper-Pearson) and Wilson 95% interval;
3. the shipped file's size and the trained part's parameter count.

The options that were tried before the recipe was chosen (same split, same encoder) are recorded
in ``TRIED`` with the figures measured when they were tried (``bench/results/minilm_mr.json``).

    .venv/bin/python bench/minilm_mr.py [--train] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mlsafety import zoo
from mlsafety.core import Classifier, TextDataset
from mlsafety.metrics import proportion, wilson

NAME = "minilm-mr"
RESULTS = Path(__file__).parent / "results" / "minilm_mr.json"

TRIED = [
    # measured on mr's split (train 6,043 / val 2,014 / test 2,015) with frozen minilm features
    {"option": "logistic head on frozen mean-pooled embeddings (Adam 40 epochs)", "val": 0.778, "test": 0.816},
    {"option": "logistic head on L2-normalised embeddings", "val": 0.774, "test": 0.809},
    {"option": "MLP head (384-256-2, dropout 0.5) on frozen embeddings, 20 epochs", "val": 0.776, "test": 0.822},
    {"option": "MLP head (384-512-2, dropout 0.5) on frozen embeddings, 60 epochs", "val": 0.777, "test": 0.826},
]


def accuracy(model: torch.nn.Module, data: TextDataset, batch_size: int = 128) -> dict[str, Any]:
    """Accuracy of ``model`` on ``data`` (sentences run shortest first), with two 95% intervals."""
    clf = Classifier(model)
    order = torch.argsort(torch.tensor([len(t) for t in data.texts]), stable=True)
    correct = torch.zeros(len(data), dtype=torch.bool)
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = order[start : start + batch_size]
            correct[idx] = clf.logits(data.texts[idx]).argmax(dim=1) == data.y[idx]
    est = proportion(correct)
    k, n = int(correct.sum()), len(data)
    lo, hi = wilson(k, n)
    return {
        "accuracy": est.value,
        "clopper_pearson_95": [est.ci_low, est.ci_high],
        "wilson_95": [lo, hi],
        "n": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="also run the recipe and time it")
    parser.add_argument("--threads", type=int, default=2, help="threads for the evaluation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shipped = zoo.weights_path(NAME)
    result: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "shipped_file_bytes": shipped.stat().st_size,
        "trained_parameters": sum(v.numel() for v in load_file(str(shipped)).values()),
    }
    if args.train:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{NAME}.safetensors"
            start = time.perf_counter()
            zoo.train_model(NAME, out=out)
            seconds = time.perf_counter() - start
            new, old = load_file(str(out)), load_file(str(shipped))
            result["training"] = {
                "seconds": round(seconds, 1),
                "threads": zoo.model_info(NAME).threads,
                "bit_identical_to_shipped": new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new),
                "max_abs_weight_difference": max(float((new[k] - old[k]).abs().max()) for k in new),
            }
    model = zoo.load_model(NAME)
    for split in ("val", "test"):
        result[split] = accuracy(model, zoo.load_dataset("mr", split))  # type: ignore[arg-type]
    result["tried"] = TRIED
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if RESULTS.exists():  # keep figures this run did not measure (e.g. the training time)
        previous = json.loads(RESULTS.read_text(encoding="utf-8"))
        result = {**previous, **result}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
