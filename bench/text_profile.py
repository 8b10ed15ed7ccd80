"""Where a text attack's time goes on ``minilm-mr`` (issue 14), measured side by side in one process.

1. One forward call, split: tokenisation (:meth:`Classifier.encode`, dynamic padding to the batch's longest
   text) against the model's forward, per call, on batches of the sizes a search step sends.
2. Intra-op threads: the same forward calls with 1 and with 2 torch threads, alternating, wall and CPU time
   of the process (on a machine whose cores are busy with other jobs, a second thread waits for a core at
   every parallel region, and spins while it waits).
4. TextGrad (no fluency) on text_whitebox's 30 examples with its candidate sets judged all at once (as it
   was) and in rounds that stop at ``max_candidates`` per site (as it is), one after the other in one
   process, each with an empty sentence-embedding cache (``--textgrad``; about two minutes of CPU).
3. DeepWordBug on the bench's 20 examples with the edit-distance constraint as it was (the whole texts'
   Levenshtein distance for every candidate) and as it is (the changed words' distances bound it first),
   alternating, one thread: CPU seconds of this thread and whether the results are identical.

Timings on a shared 2-core machine: compare the ratios within one run; the load average is recorded.

Run: ``.venv/bin/python bench/text_profile.py [--textgrad]`` (writes bench/results/text_profile.json; the
findings are read in text_profile.md).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mlsafety import zoo
from mlsafety.core import Classifier, generator
from mlsafety.robustness import text as T
from mlsafety.robustness.text._base import AttackedText
from mlsafety.robustness.text.constraints import EditDistance, levenshtein

OUT = Path(__file__).parent / "results"


class WholeTextEditDistance(EditDistance):
    """The constraint as it was: the whole texts' distance for every candidate."""

    def allows(self, original: AttackedText, candidates: Sequence[AttackedText]) -> list[bool]:
        return [levenshtein(original.text, c.text) <= self.max_edits for c in candidates]


def forward_split(clf: Classifier, texts: list[str], sizes: Sequence[int], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in sizes:
        batch_texts = texts[:n]
        enc, fwd = [], []
        with torch.inference_mode():
            clf.logits(batch_texts)  # warm
            for _ in range(repeats):
                t = time.thread_time()
                b = clf.encode(batch_texts)
                t1 = time.thread_time()
                clf.logits(b)
                t2 = time.thread_time()
                enc.append(t1 - t)
                fwd.append(t2 - t1)
        out[str(n)] = {
            "tokens_padded": int(b.input_ids.shape[1]),
            "encode_ms": 1000 * statistics.median(enc),
            "forward_ms": 1000 * statistics.median(fwd),
        }
    return out


def threads(clf: Classifier, texts: list[str], calls: int, rounds: int) -> dict[str, Any]:
    res: dict[str, list[tuple[float, float]]] = {"1": [], "2": []}
    batches = [texts[i : i + 5] for i in range(0, 5 * calls, 5)]
    with torch.inference_mode():
        for _ in range(rounds):
            for k in ("1", "2"):
                torch.set_num_threads(int(k))
                w, c = time.perf_counter(), time.process_time()
                for b in batches:
                    clf.logits(b)
                res[k].append((time.perf_counter() - w, time.process_time() - c))
    torch.set_num_threads(1)
    return {
        k: {"wall_s": [round(a, 3) for a, _ in v], "cpu_s": [round(b, 3) for _, b in v], "calls_per_round": calls}
        for k, v in res.items()
    }


def deepwordbug(model: Any, texts: list[str], labels: list[int], rounds: int) -> dict[str, Any]:
    timings: dict[str, list[float]] = {"whole-text distance (before)": [], "per-word bound first (now)": []}
    marked: dict[str, list[str]] = {}
    for _ in range(rounds):
        for key in timings:
            attack = T.create("deepwordbug", model, query_budget=1000)
            if key.startswith("whole"):
                attack.constraints = [
                    WholeTextEditDistance(c.max_edits) if isinstance(c, EditDistance) else c for c in attack.constraints
                ]
            t = time.thread_time()
            results = attack.attack(texts, labels)
            timings[key].append(time.thread_time() - t)
            marked[key] = [r.marked for r in results]
    a, b = marked.values()
    return {"cpu_s": timings, "identical_results": a == b, "successes": sum(m != t for m, t in zip(a, texts))}


def textgrad(clf: Classifier) -> dict[str, Any]:
    from mlsafety.robustness.text import textgrad as tg
    from mlsafety.robustness.text._resources import minilm_encoder

    data = zoo.load_dataset("mr", "test")
    idx = torch.randperm(len(data), generator=generator(0, "bench", "text-whitebox"))[:30].sort().values
    texts, labels = [str(data.x[int(i)]) for i in idx], data.y[idx]
    rounds = tg.first_allowed

    def all_at_once(problem: Any, cands: list[Any], max_candidates: int, skip: tuple[type, ...] = ()) -> Any:
        for con in problem.attack.constraints:
            if cands and not isinstance(con, skip):
                cands = [c for c, ok in zip(cands, con.allows(problem.original, cands)) if ok]
        out: dict[int, list[str]] = {}
        for c in cands:
            pool = out.setdefault(c.last, [])
            if len(pool) < max_candidates:
                pool.append(c.words[c.last])
        return out

    res: dict[str, Any] = {}
    marked = []
    try:
        for name, fn in (("all at once (before)", all_at_once), ("rounds (now)", rounds)):
            tg.first_allowed = fn
            minilm_encoder()._cache.clear()
            attack = T.TextGrad(query_budget=300, fluency="none").build(clf)
            t = time.thread_time()
            results = attack.attack(texts, labels)
            res[name] = {
                "cpu_s": time.thread_time() - t,
                "sentence_texts_encoded": len(minilm_encoder()._cache),
                "successes": sum(r.success for r in results),
            }
            marked.append([r.marked for r in results])
    finally:
        tg.first_allowed = rounds
    res["identical_results"] = marked[0] == marked[1]
    return res


def main() -> None:
    torch.set_num_threads(1)
    model = zoo.load_model("minilm-mr")
    clf = Classifier(model)
    data = zoo.load_dataset("mr", "test")
    idx = torch.randperm(len(data.x), generator=generator(0, "bench", "text-attacks"))[:20]
    texts, labels = [str(t) for t in data.x[idx]], data.y[idx].tolist()
    T.create("deepwordbug", model).attack(texts[:1], labels[:1])  # load the similarity encoder and WordNet once
    record: dict[str, Any] = {"load_average_start": os.getloadavg()}
    many = [str(t) for t in data.x[:128]]
    record["forward_split"] = forward_split(clf, many, (1, 5, 20, 128), repeats=5)
    record["threads"] = threads(clf, texts, calls=4, rounds=3)
    record["deepwordbug"] = deepwordbug(model, texts, labels, rounds=2)
    if "--textgrad" in sys.argv:
        record["textgrad"] = textgrad(clf)
    record["load_average_end"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "text_profile.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
