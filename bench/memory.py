"""Peak memory of the metric-level checks, before and after the weighted bootstrap (issue 12 point 6).

Each case runs in a fresh subprocess that builds synthetic data, runs the checks' tasks on an
``AuditContext`` exactly as the audit does (one shared forward pass, then ``calibration``,
``calibration-basic``, ``selective``, ``clean`` on the cached logits) and reports its peak resident
set size (``ru_maxrss``): the honest figure, torch allocations and softmax copies included.

BEFORE is the code at commit ``OLD`` (extracted with ``git archive`` into a temporary folder and put
first on ``PYTHONPATH``); AFTER is this working tree. BEFORE runs under an address-space limit
(``--before-limit-gb``) so that a case that cannot run fails with the allocation it asked for
instead of swapping a shared machine.

The model is a linear head over 64 "pixels" (``Flatten -> Linear(64, K)``), so the logits are
synthetic (N, K) float32 as a real model's would be; labels agree with the arg-max 70% of the time.
Validation data has N/5 inputs. The OOD cases (:data:`OOD_CASES`) add one far OOD set of N inputs
and run ``ood-basic`` and ``ood`` (its logit-only detectors) the same way.

    .venv/bin/python bench/memory.py            # all cases, writes bench/results/memory.{json,md}
    .venv/bin/python bench/memory.py --ood-only # the OOD cases only, merged into memory.json
    .venv/bin/python bench/memory.py --child N K N_BOOT CHECKS   # one case (used internally)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
OLD = "5d9478a"
"""The last commit before issue 12's work: ``bootstrap_statistic`` resampled (n_boot, N, K) arrays."""
METRIC_CHECKS = ["calibration", "calibration-basic", "selective", "clean"]
OOD_CHECKS = ["ood-basic", "ood"]
LOGIT_DETECTORS = ["msp", "max-logit", "energy", "entropy", "gen", "kl-matching", "temperature-msp"]
"""The ``ood`` check's detectors here: every registered detector that needs logits only (no
features, gradients or extra passes), so the scores come from the shared forward pass."""


def child(n: int, k: int, n_boot: int, checks: list[str]) -> None:
    """Run ``checks`` (``name`` or ``name@n_boot``; n_boot 0 = the check's default) and print the peak."""
    import torch
    from torch import nn

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from mlsafety.audit import CHECKS, AuditContext, AuditData
    from mlsafety.audit import checks as _checks  # noqa: F401  (registers the checks)
    from mlsafety.core import ArrayDataset, Classifier

    g = torch.Generator().manual_seed(0)
    head = nn.Linear(64, k)
    with torch.no_grad():
        head.weight.copy_(torch.randn(k, 64, generator=g) * 1.5)
        head.bias.copy_(-head.weight.sum(1) / 2)  # centre: x is uniform in [0, 1]
    model = Classifier(nn.Sequential(nn.Flatten(), head).eval())

    def dataset(m: int, name: str) -> ArrayDataset:
        x = torch.rand(m, 1, 8, 8, generator=g)
        y = torch.empty(m, dtype=torch.long)
        with torch.no_grad():
            for s in range(0, m, 4096):  # labels in blocks: no (m, K) copy before the measurement
                y[s : s + 4096] = head(x[s : s + 4096].flatten(1)).argmax(1)
        flip = torch.rand(m, generator=g) > 0.7
        y[flip] = torch.randint(0, k, (int(flip.sum()),), generator=g)
        return ArrayDataset(x, y, name=name)

    data = AuditData(test=dataset(n, "test"), val=dataset(max(n // 5, 2 * k), "val"))
    if any(c.split("@")[0] in OOD_CHECKS for c in checks):  # one far OOD set of N inputs: x in [0, 1]^64 + 0.25
        x = torch.rand(n, 1, 8, 8, generator=g) + 0.25
        data.ood = {"shifted": ArrayDataset(x, torch.full((n,), -1, dtype=torch.long), name="shifted", kind="far")}
    ctx = AuditContext(model, data, seed=0, batch_size=1024)
    setup_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rows = 0
    error = None
    try:
        for spec in checks:
            name, _, own = spec.partition("@")
            params: dict[str, object] = {"detectors": LOGIT_DETECTORS} if name == "ood" else {}
            boots = int(own or n_boot)
            if boots and name != "clean":
                params["n_boot"] = boots
            check = CHECKS.create(name, quick=False, **params)
            for task in check.tasks(ctx):
                rows += len(task.run().rows)
            if os.environ.get("BENCH_VERBOSE"):
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"# {name}: {time.perf_counter() - t0:.1f} s, peak {peak:.0f} MB", file=sys.stderr)
    except (RuntimeError, MemoryError) as exc:  # an allocation the address-space limit refused
        error = " ".join(str(exc).split())[:160]
    print(
        json.dumps(
            {
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "setup_mb": setup_kb / 1024,
                "seconds": time.perf_counter() - t0,
                "rows": rows,
                "error": error,
            }
        )
    )


def old_tree() -> Path:
    dest = Path(tempfile.gettempdir()) / f"mlsafety-bench-memory-{OLD}"
    if not (dest / "src" / "mlsafety").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD, "src"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def measure(
    which: str, n: int, k: int, n_boot: int, checks: list[str], limit_gb: float, mmap: bool = False
) -> dict[str, object]:
    src = old_tree() if which == "before" else ROOT / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "2", "MPLBACKEND": "Agg"}
    if mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    cmd = [sys.executable, __file__, "--child", str(n), str(k), str(n_boot), ",".join(checks)]

    def limit() -> None:
        if which == "before":
            cap = int(limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=limit, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"peak_mb": None, "error": f"exit {proc.returncode}: {tail[:160]}"}
    result: dict[str, object] = json.loads(lines[-1])
    return result


CASES: list[tuple[str, int, int, int, list[str]]] = [
    # (label, N, K, n_boot, checks)
    ("calibration 7,000 x 10", 7_000, 10, 500, ["calibration"]),
    ("calibration 28,000 x 10", 28_000, 10, 500, ["calibration"]),
    ("calibration 7,000 x 100", 7_000, 100, 500, ["calibration"]),
    ("4 metric checks 7,000 x 10", 7_000, 10, 500, METRIC_CHECKS),
    ("4 metric checks 28,000 x 10", 28_000, 10, 500, METRIC_CHECKS),
    ("4 metric checks 7,000 x 100", 7_000, 100, 500, METRIC_CHECKS),
    ("4 metric checks 50,000 x 1,000", 50_000, 1_000, 500, METRIC_CHECKS),
]
SCALING: list[tuple[str, int, int, int, list[str]]] = [
    ("7,000 x 10, n_boot 600", 7_000, 10, 600, METRIC_CHECKS),
    ("7,000 x 10, n_boot 2,400", 7_000, 10, 2_400, METRIC_CHECKS),
    ("7,000 x 100, n_boot 600", 7_000, 100, 600, METRIC_CHECKS),
    ("7,000 x 100, n_boot 2,400", 7_000, 100, 2_400, METRIC_CHECKS),
    ("14,000 x 10, n_boot 500", 14_000, 10, 500, METRIC_CHECKS),
    ("28,000 x 10, n_boot 500", 28_000, 10, 500, METRIC_CHECKS),
    ("56,000 x 10, n_boot 500", 56_000, 10, 500, METRIC_CHECKS),
]
"""AFTER only. n_boot from 600 up: a chunk of draws holds 2**21 / N rows (299 at N = 7,000), so any
n_boot above that uses the same chunk; below it the chunk is smaller."""
OOD_CASES: list[tuple[str, int, int, int, list[str]]] = [
    # n_boot 0: each check's default (ood-basic 500, ood 200); x4: 2,000 and 800
    ("ood-basic 50,000 x 1,000, default n_boot", 50_000, 1_000, 0, ["ood-basic"]),
    ("ood-basic 50,000 x 1,000, n_boot x4", 50_000, 1_000, 0, ["ood-basic@2000"]),
    ("OOD checks 7,000 x 1,000, default n_boot", 7_000, 1_000, 0, OOD_CHECKS),
    ("OOD checks 7,000 x 1,000, n_boot x4", 7_000, 1_000, 0, ["ood-basic@2000", "ood@800"]),
    ("OOD checks 50,000 x 1,000, default n_boot", 50_000, 1_000, 0, OOD_CHECKS),
    ("OOD checks 50,000 x 1,000, n_boot x4", 50_000, 1_000, 0, ["ood-basic@2000", "ood@800"]),
    ("6 metric-level checks 50,000 x 1,000", 50_000, 1_000, 0, METRIC_CHECKS + OOD_CHECKS),
]
"""``ood-basic`` (MSP, Energy) and ``ood`` (:data:`LOGIT_DETECTORS`) on the test data (N) against one
far OOD set of N inputs, so every interval bootstraps N + N scores: one OOD task and one pooled
``ood-far`` task per detector in ``ood``. The last case runs the four metric checks and both OOD
checks in one process (AFTER only: BEFORE's metric checks alone ask for a 400 GB array)."""
AFTER_ONLY = {"6 metric-level checks 50,000 x 1,000"}
MMAP_THRESHOLD = 1 << 20
"""glibc's ``M_MMAP_THRESHOLD`` for the second column: blocks of 1 MB and more are mmapped and given
back to the system when freed. By default glibc raises that threshold after the first freed block
(up to 32 MB), and the heap then keeps fragments of freed chunk buffers: RSS creeps up with the
number of chunks although live memory does not."""


def fmt(r: dict[str, object], limit_gb: float) -> str:
    """One result cell: peak RSS and time, or where an allocation was refused."""
    error = str(r.get("error") or "")
    asked = re.search(r"tried to allocate (\d+) bytes", error)
    if asked:
        error = f"fails: a further {int(asked.group(1)) / 1e9:,.1f} GB refused under the {limit_gb:g} GB limit"
    if r.get("peak_mb") is None:
        return error or "fails"
    text = f"{float(r['peak_mb']):,.0f} MB"  # type: ignore[arg-type]
    return f"{text}, then {error}" if error else f"{text} ({float(r['seconds']):.1f} s)"  # type: ignore[arg-type]


def setup_cell(r: dict[str, object]) -> str:
    return f"{float(r['setup_mb']):,.0f} MB" if r.get("setup_mb") else ""  # type: ignore[arg-type]


def growth_cell(r: dict[str, object]) -> str:
    if r.get("peak_mb") is None:
        return ""
    return f"{float(r['peak_mb']) - float(r['setup_mb']):,.0f} MB"  # type: ignore[arg-type]


def render(out: dict[str, Any]) -> str:
    limit = float(out["before_limit_gb"])
    md = [
        "# Peak memory of the metric-level checks (issue 12 point 6)",
        "",
        "Peak RSS (`ru_maxrss`) of a fresh process that builds synthetic logits (N x K float32 from one",
        "shared forward pass; validation N/5) and runs the checks' tasks on an `AuditContext` as the audit",
        "does, default parameters (n_boot 500). BEFORE: commit "
        f"`{out['old_commit']}` (bootstrap over (n_boot, N, K) resampled copies),",
        f"run under a {limit:g} GB address-space limit so that a case that cannot run is refused instead of",
        "swapping; AFTER: this tree (bootstrap from multinomial weights, in chunks). Figures include the",
        "interpreter, torch and matplotlib, the data and the logits (the `setup` column: before any check).",
        f"Machine: {out['machine']}, {out['cpus']} CPUs, 2 threads, shared with other work (times are rough).",
        "",
        "| case | BEFORE | AFTER | AFTER setup |",
        "|---|---|---|---|",
    ]
    for c in out["cases"]:
        md.append(f"| {c['case']} | {fmt(c['before'], limit)} | {fmt(c['after'], limit)} | {setup_cell(c['after'])} |")
    md += [
        "",
        "4 metric checks: `calibration`, `calibration-basic`, `selective` (4 detectors), `clean`, in one",
        "process sharing the forward pass. BEFORE needed 400 GB for one array at 50,000 x 1,000 (classwise",
        "ECE's (n_boot, N, 2K) resample).",
        "",
        "## AFTER: growth in N and in the number of bootstrap draws (4 metric checks)",
        "",
        "A chunk of draws holds 2^21 / N rows (299 at N = 7,000): above that, n_boot changes the number",
        "of chunks, not their size (below it the chunk is smaller). Right-hand columns: glibc told to give",
        "freed blocks of 1 MB and more back (`MALLOC_MMAP_THRESHOLD_=1048576`); by default it raises that",
        "threshold after the first free and its heap keeps fragments of freed chunk buffers, so RSS creeps",
        "up with the number of chunks while live memory does not.",
        "",
        "| case | peak (default malloc) | peak - setup | peak (mmap threshold 1 MB) | peak - setup |",
        "|---|---|---|---|---|",
    ]
    rows: dict[str, list[str]] = {}
    for c in out["scaling"]:
        rows.setdefault(c["case"], []).extend([fmt(c["result"], limit), growth_cell(c["result"])])
    md += [f"| {label} | {' | '.join(cells)} |" for label, cells in rows.items()]
    if out.get("ood_cases"):
        md += [
            "",
            "## OOD checks: `ood-basic` and `ood` (fused AUROC / AUPR / FPR@95 bootstrap)",
            "",
            "Synthetic logits (N x 1,000) of the test data and of one far OOD set of N inputs (x + 0.25), in",
            "one process: `ood-basic` (MSP, Energy; n_boot 500), then `ood` with the seven detectors that need",
            "logits only (" + ", ".join(LOGIT_DETECTORS) + "; n_boot 200), each scored on the set",
            "and on the pooled `ood-far` group: 16 intervals over N + N scores, nearly all distinct.",
            "x4: n_boot 2,000 and 800. No feature-based detector is run (the model's features are its 64",
            "inputs; their fitting and search, not the bootstrap, would be measured).",
            "",
            "BEFORE, `ood_metrics` evaluated 250 resamples at once: (250, distinct scores) float64 histograms",
            "and about fifteen temporaries of that size (200 MB each at 50k + 50k scores). AFTER, resamples are",
            "evaluated in blocks of at most 2^18 (resample, score) entries (2 MB arrays), with the same draws.",
            "`kl-matching` held five (N, K) float64 arrays at once (+1.8 GB at 50,000 x 1,000, the larger part",
            "of the `ood` peak); AFTER it scores blocks of 2^21 / K rows. What remains above setup is the",
            "checks' own forward outputs and per-detector (N, K) work, linear in N x K. `ood-basic` alone",
            "shows the bootstrap's share: 1.4 GB of BEFORE's 2.8 GB. The tree just before this change (commit",
            "`ec21b89`, the other checks already on bootstrap weights) measured as BEFORE: 2,929 MB at",
            "50,000 x 1,000 with default n_boot. The peak no longer depends on n_boot at 50k (1,590 MB at",
            "both); at 7k, 4x the draws adds 40 MB (glibc heap fragments, see above). Times are rough: the",
            "BEFORE and AFTER runs overlapped each other and other work on the 2 CPUs.",
            "",
            "| case | BEFORE | AFTER | AFTER setup |",
            "|---|---|---|---|",
        ]
        for c in out["ood_cases"]:
            md.append(
                f"| {c['case']} | {fmt(c['before'], limit)} | {fmt(c['after'], limit)} | {setup_cell(c['after'])} |"
            )
    return "\n".join(md) + "\n"


def ood_cases(skip_before: bool, limit: float) -> list[dict[str, object]]:
    cases = []
    for label, n, k, b, checks in OOD_CASES:
        skipped: dict[str, object] = {"peak_mb": None, "error": "skipped"}
        if label in AFTER_ONLY:
            skipped = {"peak_mb": None, "error": "not run: its 4 metric checks alone ask for a 400 GB array"}
        before = skipped if skip_before or label in AFTER_ONLY else measure("before", n, k, b, checks, limit)
        after = measure("after", n, k, b, checks, limit)
        print(label, "before", fmt(before, limit), "after", fmt(after, limit), flush=True)
        cases.append({"case": label, "n": n, "k": k, "checks": checks, "before": before, "after": after})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, metavar=("N", "K", "N_BOOT", "CHECKS"))
    parser.add_argument("--before-limit-gb", type=float, default=10.0)
    parser.add_argument("--skip-before", action="store_true", help="only measure this working tree")
    parser.add_argument("--render", action="store_true", help="rewrite memory.md from memory.json")
    parser.add_argument("--ood-only", action="store_true", help="only the OOD cases, merged into memory.json")
    args = parser.parse_args()
    if args.child:
        n, k, b, checks = args.child
        child(int(n), int(k), int(b), checks.split(","))
        return
    if args.render:
        (RESULTS / "memory.md").write_text(render(json.loads((RESULTS / "memory.json").read_text())))
        return
    limit = args.before_limit_gb
    if args.ood_only:
        out = json.loads((RESULTS / "memory.json").read_text())
        out["ood_cases"] = ood_cases(args.skip_before, limit)
        (RESULTS / "memory.json").write_text(json.dumps(out, indent=2) + "\n")
        (RESULTS / "memory.md").write_text(render(out))
        return
    out = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "old_commit": OLD,
        "before_limit_gb": limit,
        "cases": [],
        "scaling": [],
    }
    for label, n, k, b, checks in CASES:
        skipped: dict[str, object] = {"peak_mb": None, "error": "skipped"}
        before = skipped if args.skip_before else measure("before", n, k, b, checks, limit)
        after = measure("after", n, k, b, checks, limit)
        print(label, "before", fmt(before, limit), "after", fmt(after, limit), flush=True)
        out["cases"].append(
            {"case": label, "n": n, "k": k, "n_boot": b, "checks": checks, "before": before, "after": after}
        )
    for label, n, k, b, checks in SCALING:
        for mmap in (False, True):
            r = measure("after", n, k, b, checks, limit, mmap=mmap)
            print(label, "mmap" if mmap else "default", fmt(r, limit), flush=True)
            out["scaling"].append({"case": label, "n": n, "k": k, "n_boot": b, "mmap_threshold": mmap, "result": r})
    out["ood_cases"] = ood_cases(args.skip_before, limit)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "memory.md").write_text(render(out))
    print(render(out))


if __name__ == "__main__":
    main()
