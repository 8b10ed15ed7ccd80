"""What the first small operations after a forward pass cost, guard or not (issue 20's overhead goal).

The guard's overhead is timed as ``guard(x)`` against ``model(x)``: everything the guard does after the
model's forward pass counts. On this machine an operation run right after a forward pass is many times slower
than the same operation run again at once, whatever it is (a NumPy add of 640 floats included): the forward
pass has evicted the code and data of everything else from the caches. This bench shows how much of the
guard's added time is that.

For each zoo model and batch size, each operation is timed twice per round, right after ``model(x)`` ("after
the forward") and right after itself ("again"); medians over rounds, wall time on one torch thread:

- ``numpy add``: ``a + 1`` on a NumPy array of 640 floats (no torch at all);
- ``torch add``: ``logits + 1``;
- ``decide``: the guard's whole decision on the forward's outputs (:meth:`mlsafety.guard.Guard.decide`);
- ``guard - model``: ``guard(x)`` minus ``model(x)``, as bench/guard.py times the overhead.

Run: ``.venv/bin/python bench/guard_cold.py`` (writes bench/results/guard_cold.{json,md}); run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsafety.audit import AuditConfig, Store, cap_data, prepare_inputs, run_audit
from mlsafety.guard import export_guard, load_guard

RESULTS = Path(__file__).parent / "results"
CHECK = "defence-in-depth"


def build(name: str, tmp: Path, max_samples: int) -> tuple[Any, torch.Tensor]:
    db = tmp / f"{name}.sqlite"
    config = AuditConfig(model=name, checks=[CHECK], max_samples=max_samples, seed=0,
                         check_params={CHECK: {"adaptive": False}})  # fmt: skip
    run_audit(config, db=db, report="")
    with Store(db, create=False) as store:
        export_guard(store, "latest", tmp / name)
    cfg = AuditConfig(model=name, checks=[CHECK], max_samples=max_samples, seed=0)
    _, data = prepare_inputs(cfg)
    return load_guard(tmp / name).guard, cap_data(data, cfg.max_samples, cfg.seed).test.x


def measure(guard: Any, x: torch.Tensor, rounds: int) -> dict[str, Any]:
    model = guard.model
    with torch.no_grad():
        outputs = guard.outputs(x)
        logits = outputs.logits
        arr = np.ones(640)
        ops = {
            "numpy add": lambda: arr + 1,
            "torch add": lambda: logits + 1,
            "decide": lambda: guard.decide(outputs),
        }
        after: dict[str, list[float]] = {k: [] for k in ops}
        again: dict[str, list[float]] = {k: [] for k in ops}
        added: list[float] = []
        for _ in range(rounds):
            for k, op in ops.items():
                model(x)
                t0 = time.perf_counter()
                op()
                t1 = time.perf_counter()
                op()
                t2 = time.perf_counter()
                after[k].append(t1 - t0)
                again[k].append(t2 - t1)
            t0 = time.perf_counter()
            model(x)
            t1 = time.perf_counter()
            guard(x)
            t2 = time.perf_counter()
            added.append((t2 - t1) - (t1 - t0))
    us = 1e6
    return {
        "batch": x.shape[0],
        "after_forward_us": {k: statistics.median(v) * us for k, v in after.items()},
        "again_us": {k: statistics.median(v) * us for k, v in again.items()},
        "guard_minus_model_us": statistics.median(added) * us,
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# The first operations after a forward pass (issue 20's overhead goal)",
        "",
        f"Machine: {r['machine']}; 1 torch thread; wall time, median of {r['rounds']} rounds; load average "
        f"{r['load'][0]:.1f} at the start. Each operation timed right after `model(x)` and again right after "
        "itself (see `bench/guard_cold.py`).",
        "",
        "| model (monitor) | batch | numpy add: after forward / again (us) | torch add | guard.decide | "
        "guard - model (us) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in r["models"].items():
        for e in m["rows"]:
            a, g = e["after_forward_us"], e["again_us"]
            cells = [f"{a[k]:.0f} / {g[k]:.0f}" for k in ("numpy add", "torch add", "decide")]
            lines.append(f"| {name} ({m['monitor']}) | {e['batch']} | " + " | ".join(cells)
                         + f" | {e['guard_minus_model_us']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits-cnn", "fashion-cnn"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--max-samples", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "machine": f"{os.uname().machine}, torch {torch.__version__}",
        "rounds": args.rounds,
        "load": list(os.getloadavg()),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            guard, x = build(name, Path(tmp), args.max_samples)
            rows = [measure(guard, x[:b], args.rounds) for b in args.batches]
            result["models"][name] = {"monitor": guard.monitor.name, "rows": rows}
            print(name, json.dumps(rows), flush=True)
    result["load_end"] = list(os.getloadavg())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guard_cold.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "guard_cold.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
