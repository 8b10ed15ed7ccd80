"""Text attacks on ``minilm-mr`` (issue 14): our recipes next to TextAttack 0.3.11 and its published anchors.

For each recipe on the same seeded ``mr`` test examples: success rate, accuracy under attack,
perturbed-word share, queries per example (each with its 95% interval) and wall time. TextAttack's
PWWS and DeepWordBug recipes run on the same victim (wrapped so both call the same forward), the same
examples, the same WordNet database (our NLTK folder) and the same stop words (our list, given to
TextAttack as NLTK's ``stopwords`` corpus, which its recipes read), with the same query budget.
Strength: paired successes compared with an exact McNemar test (one-sided: is ours worse?).

TextAttack's published anchors (BERT on MR, Morris et al. 2020, Table 2/3): TextFooler succeeds on
86.6% of attacked examples; with the human-calibrated constraints on 10.6%.

TextAttack as a bench peer (``pip install --target`` outside the venv, see the results file for the
lines): ``textattack==0.3.11 --no-deps`` plus ``lru-dict``, ``levenshtein``, ``rapidfuzz``,
``langdetect``, ``pinyin``, ``lemminflect``, ``more-itertools``, ``num2words``, ``word2number``,
``language-tool-python``, ``toml``, ``bert-score``, ``editdistance``, ``terminaltables``; flair, jieba
and OpenHowNet are imported by ``import textattack`` but never called by these recipes, so import-only
stand-ins (raising if called) are put on the path instead of the real packages (flair alone pulls in
dozens of packages).

Install the peer with ``make bench-peers`` (hash-checked pins in ``bench/peers/textattack.txt``, into
``.venv/bench-peers/textattack``; the stand-ins are ``bench/peers/textattack_stubs``); this script puts both
on ``sys.path`` and gives NLTK our stop words as its ``stopwords`` corpus and our WordNet folder.

Run: ``.venv/bin/python bench/text_attacks.py --n 20`` (writes bench/results/text_attacks.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mlsafety import zoo
from mlsafety.core import Classifier, generator
from mlsafety.metrics import Estimate, bootstrap_mean, proportion
from mlsafety.robustness import text as T
from mlsafety.robustness.text.constraints import antonym_swaps, default_stop_words

RESULTS = Path(__file__).parent / "results"
PEER_PINS = (
    "textattack==0.3.11 lru-dict==1.4.1 levenshtein==0.27.5 rapidfuzz==3.14.6 langdetect==1.0.9 pinyin==0.4.0 "
    "lemminflect==0.2.3 more-itertools==11.2.1 num2words==0.5.14 word2number==1.1 language-tool-python==3.4.0 "
    "toml==0.10.2 bert-score==0.3.13 editdistance==0.8.1 terminaltables==3.1.10"
)
"""What TextAttack's PWWS and DeepWordBug recipes import, installed with --no-deps (flair, jieba and OpenHowNet,
imported by ``import textattack`` but never called by these recipes, are import-only stand-ins instead)."""
MORRIS = {"min_word_cos": 0.9, "sim_threshold": 0.98, "sim_metric": "cosine"}
"""Morris et al. 2020's tightened TextFooler thresholds (word cosine 0.9, sentence similarity 0.98), without
their grammar checker."""
ANCHORS = {"textfooler (BERT/MR, TextAttack)": 0.866, "textfooler + Morris et al. 2020 constraints": 0.106}


def est(e: Estimate | None) -> dict[str, float] | None:
    return None if e is None else {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}


def fmt(e: dict[str, float] | None, pct: bool = False) -> str:
    if e is None:
        return "-"
    k = 100.0 if pct else 1.0
    unit = "%" if pct else ""
    return f"{k * e['value']:.1f}{unit} [{k * e['ci_low']:.1f}, {k * e['ci_high']:.1f}] (n={int(e['n'])})"


def unmark(marked: str) -> str:
    """A stored example's text without the ``[[ ]]`` marks around changed words."""
    return marked.replace("[[", "").replace("]]", "")


def count_antonym_swaps(run: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """Successes of ``run`` whose changed words include a WordNet antonym of the word replaced
    (:func:`~mlsafety.robustness.text.constraints.antonym_swaps` on each stored example against its original)."""
    swaps = [
        antonym_swaps(t, unmark(r.get("marked", ""))) if r["status"] == "succeeded" else []
        for t, r in zip(texts, run["rows"])
    ]
    won = sum(r["status"] == "succeeded" for r in run["rows"])
    hits = [s for s in swaps if s]
    return {
        "antonym_successes": len(hits),
        "antonym_share": est(proportion(len(hits), won)) if won else None,
        "antonym_pairs": [list(p) for s in hits for p in s],
    }


def summarise(rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    attacked = [r for r in rows if r["status"] != "skipped"]
    won = [r for r in attacked if r["status"] == "succeeded"]

    def mean(v: list[float], name: str) -> dict[str, float] | None:
        return est(bootstrap_mean(torch.tensor(v, dtype=torch.float64), name=name)) if v else None

    return {
        "n": len(rows),
        "attacked": len(attacked),
        "succeeded": len(won),
        "success_rate": est(proportion(len(won), len(attacked))) if attacked else None,
        "accuracy_under_attack": est(proportion(len(attacked) - len(won), len(rows))),
        "perturbed_word_share": mean([r["share"] for r in won], "share"),
        "queries_per_example": mean([float(r["queries"]) for r in attacked], "queries"),
        "wall_s": wall,
        "s_per_attacked_example": wall / max(1, len(attacked)),
    }


def ours(name: str, model: Any, texts: list[str], labels: list[int], budget: int, **kw: Any) -> dict[str, Any]:
    attack = T.create(name, model, query_budget=budget, **kw)
    t0 = time.perf_counter()
    results = attack.attack(texts, labels)
    wall = time.perf_counter() - t0
    rows = [{"status": r.status, "share": r.perturbed_share, "queries": r.queries, "marked": r.marked} for r in results]
    out = summarise(rows, wall)
    out["rows"] = rows
    out["forward_calls"] = attack.queries.calls
    out["texts_scored"] = attack.queries.texts
    return out


PEER_DIR = Path(sys.prefix) / "bench-peers" / "textattack"
STUBS_DIR = Path(__file__).parent / "peers" / "textattack_stubs"


def use_textattack_peer() -> None:
    """Put the TextAttack peer (``make bench-peers``) and its import-only stand-ins on ``sys.path``, and give
    NLTK our WordNet folder and our stop words as its ``stopwords`` corpus (TextAttack's recipes read it)."""
    import nltk

    if PEER_DIR.is_dir():
        for p in (str(STUBS_DIR), str(PEER_DIR)):
            if p not in sys.path:
                sys.path.insert(0, p)
    words = Path(sys.prefix) / "bench-peers" / "nltk" / "corpora" / "stopwords" / "english"
    words.parent.mkdir(parents=True, exist_ok=True)
    words.write_text("\n".join(sorted(default_stop_words())) + "\n", encoding="utf-8")
    for folder in (str(zoo.nltk_data_dir()), str(words.parents[2])):
        if folder not in nltk.data.path:
            nltk.data.path.insert(0, folder)


def textattack_run(recipe: str, clf: Classifier, texts: list[str], labels: list[int], budget: int) -> dict[str, Any]:
    use_textattack_peer()
    import numpy as np
    import textattack
    from textattack.attack_recipes import DeepWordBugGao2018, PWWSRen2019
    from textattack.attack_results import SkippedAttackResult, SuccessfulAttackResult

    calls = {"n": 0, "texts": 0}

    class Wrapper(textattack.models.wrappers.ModelWrapper):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.model = clf.module

        def __call__(self, text_list: list[str]) -> Any:
            calls["n"] += 1
            calls["texts"] += len(text_list)
            with torch.inference_mode():
                return np.asarray(clf.logits(list(text_list)).float().cpu())

    build = {"pwws": PWWSRen2019, "deepwordbug": DeepWordBugGao2018}[recipe]
    textattack.shared.utils.set_seed(0)  # its DeepWordBug draws characters at random: the same draws each run
    attack = build.build(Wrapper())
    attack.goal_function.query_budget = budget
    rows = []
    t0 = time.perf_counter()
    for text, y in zip(texts, labels):
        res = attack.attack(text, int(y))
        if isinstance(res, SkippedAttackResult):
            rows.append({"status": "skipped", "share": 0.0, "queries": 1})
            continue
        orig = res.original_result.attacked_text
        adv = res.perturbed_result.attacked_text
        ok = isinstance(res, SuccessfulAttackResult)
        changed = len(orig.all_words_diff(adv)) if ok else 0
        rows.append(
            {
                "status": "succeeded" if ok else "failed",
                "share": changed / max(1, len(orig.words)),
                "queries": int(res.perturbed_result.num_queries),
                "marked": adv.text if ok else "",
            }
        )
    wall = time.perf_counter() - t0
    out = summarise(rows, wall)
    out["rows"] = rows
    out["forward_calls"] = calls["n"]
    out["texts_scored"] = calls["texts"]
    return out


def mcnemar(ours_rows: list[dict[str, Any]], theirs_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact McNemar on paired successes: b = ours only, c = theirs only; p = P(X >= c | b + c, 1/2),
    the one-sided chance of seeing ``c`` or more theirs-only wins if both were equally strong."""
    b = sum(1 for o, t in zip(ours_rows, theirs_rows) if o["status"] == "succeeded" and t["status"] != "succeeded")
    c = sum(1 for o, t in zip(ours_rows, theirs_rows) if o["status"] != "succeeded" and t["status"] == "succeeded")
    n = b + c
    p = sum(math.comb(n, k) for k in range(c, n + 1)) / 2**n if n else 1.0
    return {"ours_only": b, "textattack_only": c, "p_ours_worse": p}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="examples per recipe")
    ap.add_argument("--budget", type=int, default=1000, help="queries per example")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (see text_profile.md)")
    ap.add_argument("--skip-textattack", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated stages to run (default all)")
    ap.add_argument("--md-only", action="store_true", help="rewrite the .md from the .json and stop")
    ap.add_argument("--repeats", type=int, default=1, help="runs per stage, interleaved; wall time is the median")
    ap.add_argument("--rerun-note", default="", help="a line saying which rows this run re-measured and why")
    args = ap.parse_args()
    if args.md_only:
        write_md(json.loads((RESULTS / "text_attacks.json").read_text()))
        return
    torch.set_num_threads(args.threads)
    model = zoo.load_model("minilm-mr")
    clf = Classifier(model)
    data = zoo.load_dataset("mr", "test")
    idx = torch.randperm(len(data.x), generator=generator(args.seed, "bench", "text-attacks"))[: args.n]
    texts, labels = list(data.x[idx]), data.y[idx].tolist()
    out: dict[str, Any] = {
        "victim": "minilm-mr",
        "data": f"mr test, {args.n} examples (seeded permutation, seed {args.seed})",
        "budget": args.budget,
        "threads": args.threads,
        "repeats": args.repeats,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "note": f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU cores when it started: absolute "
        "times depend on what else runs; compare ratios within a run",
        "anchors": ANCHORS,
        "runs": {},
        "comparisons": {},
    }
    path = RESULTS / "text_attacks.json"
    if path.exists():
        try:
            prev = json.loads(path.read_text())
            if prev.get("budget") == args.budget and prev.get("data") == out["data"] and args.only:
                # a partial rerun keeps the other rows, and the header of the run that measured them
                for key in ("note", "repeats", "threads", "python", "torch"):
                    out[key] = prev.get(key, out[key])
                out["rerun"] = prev.get("rerun", "")
                out["runs"].update(prev.get("runs", {}))
                out["comparisons"].update(prev.get("comparisons", {}))
        except (OSError, ValueError):
            pass
    if args.rerun_note:
        out["rerun"] = "; ".join(filter(None, [out.get("rerun", ""), args.rerun_note]))
    out["texts"] = texts
    only = set(filter(None, args.only.split(",")))
    stages: list[tuple[str, Any]] = [
        ("ours/deepwordbug", lambda: ours("deepwordbug", model, texts, labels, args.budget)),
        ("textattack/deepwordbug", lambda: textattack_run("deepwordbug", clf, texts, labels, args.budget)),
        ("ours/deepwordbug-unbatched", lambda: ours("deepwordbug", model, texts, labels, args.budget, batch_size=1)),
        ("ours/pwws", lambda: ours("pwws", model, texts, labels, args.budget)),
        ("textattack/pwws", lambda: textattack_run("pwws", clf, texts, labels, args.budget)),
        ("ours/textfooler", lambda: ours("textfooler", model, texts, labels, args.budget)),
        ("ours/textfooler-cos0.3", lambda: ours("textfooler", model, texts, labels, args.budget, min_word_cos=0.3)),
        (
            "ours/textfooler-antonyms-allowed",
            lambda: ours("textfooler", model, texts, labels, args.budget, refuse_antonyms=False),
        ),
        (
            "ours/textfooler-cos0.3-antonyms-allowed",
            lambda: ours("textfooler", model, texts, labels, args.budget, min_word_cos=0.3, refuse_antonyms=False),
        ),
        (
            "ours/textfooler-morris",
            lambda: ours("textfooler", model, texts, labels, args.budget, **MORRIS),
        ),
    ]
    chosen = [(k, run) for k, run in stages if not (only and k not in only)]
    chosen = [(k, run) for k, run in chosen if not (k.startswith("textattack") and args.skip_textattack)]
    walls: dict[str, list[float]] = {}
    for rep in range(args.repeats):  # interleaved: a slow spell of the machine touches every stage alike
        for key, run in chosen:
            print(f"running {key} (repeat {rep + 1}/{args.repeats}) ...", flush=True)
            try:
                got = run()
            except Exception as exc:  # a peer that cannot run is reported, not fatal
                got = {"error": f"{type(exc).__name__}: {exc}"}
            if "error" in got:
                out["runs"][key] = got
                continue
            walls.setdefault(key, []).append(got["wall_s"])
            if rep == 0:
                out["runs"][key] = got
            r = out["runs"][key]
            r.setdefault("succeeded_repeats", []).append(got["succeeded"])  # TextAttack's DeepWordBug draws at random
            if got["rows"] != r["rows"]:
                r["rows_differ_across_repeats"] = True  # the first repeat's rows are the ones compared
            r["wall_s_repeats"] = walls[key]
            r["wall_s"] = statistics.median(walls[key])
            r["s_per_attacked_example"] = r["wall_s"] / max(1, r["attacked"])
    for r in out["runs"].values():
        if "rows" in r:
            r.update(count_antonym_swaps(r, texts))
    for key, _ in chosen:
        r = out["runs"][key]
        print(key, {k: v for k, v in r.items() if k != "rows"}, flush=True)
        for recipe in ("pwws", "deepwordbug"):
            a, b = out["runs"].get(f"ours/{recipe}"), out["runs"].get(f"textattack/{recipe}")
            if a and b and "rows" in a and "rows" in b:
                cmp = mcnemar(a["rows"], b["rows"])
                ta, tb = a.get("wall_s_repeats", [a["wall_s"]]), b.get("wall_s_repeats", [b["wall_s"]])
                pairs = [y / x for x, y in zip(ta, tb, strict=False)]  # repeat by repeat: run side by side
                cmp["wall_ratio_repeats"] = pairs
                cmp["wall_ratio_textattack_over_ours"] = statistics.median(pairs)
                cmp["forward_calls"] = {"ours": a["forward_calls"], "textattack": b["forward_calls"]}
                out["comparisons"][recipe] = cmp
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        write_md(out)


def antonym_cell(r: dict[str, Any]) -> str:
    if "antonym_successes" not in r:
        return "-"
    pairs = ", ".join(f"{a}->{b}" for a, b in r.get("antonym_pairs", []))
    share = r.get("antonym_share")
    pct = f" ({100 * share['value']:.0f}% [{100 * share['ci_low']:.0f}, {100 * share['ci_high']:.0f}])" if share else ""
    return f"{r['antonym_successes']} of {r['succeeded']}{pct}" + (f": {pairs}" if pairs else "")


def write_md(out: dict[str, Any]) -> None:
    lines = [
        "# Text attacks on minilm-mr (issue 14)",
        "",
        f"Victim `{out['victim']}`, data: {out['data']}, query budget {out['budget']} per example, "
        f"{out['threads']} torch thread(s); wall times are the median of {out.get('repeats', 1)} interleaved "
        f"run(s). {out['note']}.",
        *([f"Re-measured: {out['rerun']}."] if out.get("rerun") else []),
        "",
        "| run | success rate | accuracy under attack | perturbed-word share | queries / attacked example "
        "| wall s | s / attacked example | forward calls | successes swapping a WordNet antonym |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in out["runs"].items():
        if "error" in r:
            lines.append(f"| {key} | could not run: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {key} | {fmt(r['success_rate'], True)} | {fmt(r['accuracy_under_attack'], True)} | "
            f"{fmt(r['perturbed_word_share'], True)} | {fmt(r['queries_per_example'])} | {r['wall_s']:.0f} | "
            f"{r['s_per_attacked_example']:.1f} | {r['forward_calls']} | {antonym_cell(r)} |"
        )
    lines += [
        "",
        "Last column: successes whose changed words include a WordNet antonym of the word replaced "
        "(`constraints.antonym_swaps`, direct antonymy, adjective clusters and their see-also heads, on lemmatised "
        "words), their share of the successes with its 95% Clopper-Pearson interval, and the pairs; such a swap "
        "changes the label rather than fooling the model. The textfooler "
        "recipes refuse them by default (`NoAntonym`); the `-antonyms-allowed` rows are the recipe without it "
        "(`refuse_antonyms=False`), as these rows were measured before. It does not catch sentiment flips "
        "WordNet does not list as antonyms (bored -> fun, pointless -> hilarious), which remain in the successes.",
    ]
    lines += ["", "Anchors (TextAttack's published tables, BERT on MR):", ""]
    lines += [f"- {k}: {100 * v:.1f}% attack success" for k, v in out["anchors"].items()]
    if out["comparisons"]:
        lines += ["", "## Against TextAttack 0.3.11 (same victim, examples, WordNet, stop words, budget)", ""]
        lines += ["| recipe | ours only | TextAttack only | McNemar p (ours worse) | wall time TextAttack / ours |"]
        lines += ["|---|---|---|---|---|"]
        for recipe, c in out["comparisons"].items():
            each = c.get("wall_ratio_repeats", [])
            spread = f" ({min(each):.2f}-{max(each):.2f} over {len(each)} repeats)" if len(each) > 1 else ""
            lines.append(
                f"| {recipe} | {c['ours_only']} | {c['textattack_only']} | {c['p_ours_worse']:.3g} | "
                f"{c['wall_ratio_textattack_over_ours']:.2f}x{spread} |"
            )
    lines += [
        "",
        "## TextAttack as a bench peer",
        "",
        "Installed outside the venv, no dependency resolution (their own pins would replace the project's torch "
        "and transformers):",
        "",
        f"    pip install --target <peers>/textattack --no-deps {PEER_PINS}",
        "",
        "`import textattack` also imports flair, jieba and OpenHowNet (POS tagging for other recipes, Chinese); "
        "PWWS and DeepWordBug never call them, so import-only stand-ins that raise when called are put on "
        "`PYTHONPATH` (`bench/text_attacks.py` documents them). TextAttack's stop-word constraint reads NLTK's "
        "`stopwords` corpus (a download): it is given our list as that corpus, so both libraries skip the same "
        "words; `NLTK_DATA` points at the same WordNet folder the library builds. Its PWWS asks NLTK for "
        "`omw-1.4` once (refused: no network) and carries on with English WordNet.",
    ]
    (RESULTS / "text_attacks.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
