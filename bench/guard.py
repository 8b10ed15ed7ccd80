"""The runtime guard (issue 20): overhead, served throughput and latency, drift detection delay.

For each zoo image classifier: a small defence-in-depth audit (``--max-samples``, no adaptive attack) is
stored in a temporary database and exported with :func:`mlsafety.guard.export_guard`, then

1. **Overhead**: ``Guard`` forward vs the bare model's forward on the same batch (goal <= 1.15x),
   interleaved repeats, the median of per-pair ratios with its 2.5-97.5% spread, timed as the calling
   thread's CPU time on one torch thread (``time.thread_time``: what the forward costs, which other
   processes on a loaded machine do not inflate as they do wall time; ``--threads N`` > 1 times wall);
2. **Drift**: the conformal Shiryaev-Roberts alarm (level ``--arl``) on streams of the model's test data
   (clean), of a corruption of it and of each of the zoo's OOD sets: false alarms on the clean stream and
   the detection delay (inputs until the first alarm) over replicate streams (seeded permutations), its
   mean with a bootstrap 95% interval and the median;
3. **Served** (first model only): a real uvicorn server on 127.0.0.1, 1 / 8 / 32 concurrent clients each
   posting single images from separate processes (8 clients each): throughput, p50 / p99 latency, and the share of the
   wall time outside the guard's forward pass (``1 - model_seconds / wall``).

Timings are taken on a shared, loaded machine (other sessions running on 2 cores): read the ratios,
which are measured side by side in one run, not the absolute numbers.

Run: ``.venv/bin/python bench/guard.py [--quick]`` (writes bench/results/guard.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from mlsafety.audit import AuditConfig, Store, cap_data, prepare_inputs, run_audit
from mlsafety.cli._serve import build_app
from mlsafety.guard import DriftAlarm, export_guard, load_guard
from mlsafety.robustness.corruptions import corrupt

RESULTS = Path(__file__).parent / "results"
CHECK = "defence-in-depth"


def quantile(v: list[float], q: float) -> float:
    return float(torch.tensor(v, dtype=torch.float64).quantile(q))


def overhead(guard: Any, x: torch.Tensor, repeats: int) -> dict[str, float]:
    model = guard.model
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    ratios, tg, tm = [], [], []
    with torch.no_grad():
        guard(x)
        model(x)
        for _ in range(repeats):
            t0 = clock()
            model(x)
            t1 = clock()
            guard(x)
            t2 = clock()
            tm.append(t1 - t0)
            tg.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
    return {
        "batch": x.shape[0],
        "model_ms_median": 1000 * statistics.median(tm),
        "guard_ms_median": 1000 * statistics.median(tg),
        "ratio_median": statistics.median(ratios),
        "ratio_p2_5": quantile(ratios, 0.025),
        "ratio_p97_5": quantile(ratios, 0.975),
        "repeats": repeats,
    }


def delays(guard: Any, reference: torch.Tensor, x: torch.Tensor, arl: float, reps: int, seed: int) -> dict[str, Any]:
    with torch.no_grad():
        scores = guard(x).score.cpu()
    g = torch.Generator().manual_seed(seed)
    first, alarms = [], 0
    for r in range(reps):
        alarm = DriftAlarm(reference, arl=arl, seed=r)
        alarm.update(scores[torch.randperm(scores.numel(), generator=g)])
        first.append(alarm.first_alarm)
        alarms += alarm.alarms
    hit = [f for f in first if f is not None]
    from scipy.stats import chi2

    seen = reps * scores.numel()
    lo = 0.0 if alarms == 0 else chi2.ppf(0.025, 2 * alarms) / 2
    hi = chi2.ppf(0.975, 2 * alarms + 2) / 2  # exact (Garwood) Poisson interval on the alarm count
    out: dict[str, Any] = {
        "stream_length": int(scores.numel()), "replicates": reps, "alarmed": len(hit), "alarms": alarms,
        "alarms_per_1000": 1000 * alarms / seen, "alarms_per_1000_ci": [1000 * lo / seen, 1000 * hi / seen],
    }  # fmt: skip
    if hit:
        t = torch.tensor(hit, dtype=torch.float64)
        boot = [float(t[torch.randint(len(hit), (len(hit),), generator=g)].mean()) for _ in range(2000)]
        out.update(
            delay_mean=float(t.mean()),
            delay_ci=[quantile(boot, 0.025), quantile(boot, 0.975)],
            delay_median=float(t.median()),
        )
    return out


LOAD_CLIENT = """
import asyncio, json, sys, time
import httpx

port, clients, per_client, first = (int(v) for v in sys.argv[1:5])
start_at = float(sys.argv[5])
images = json.load(sys.stdin)


async def client(k, http, lat):
    for i in range(per_client):
        img = images[(k * per_client + i) % len(images)]
        t0 = time.perf_counter()
        r = await http.post("/predict", json={"id": f"{k}-{i}", "images": [img]})
        lat.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text


async def run():
    lat = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as h:
        await h.get("/healthz")  # connections and imports warm before the clock starts
        await asyncio.sleep(max(0.0, start_at - time.time()))  # every client process starts together
        late = time.time() - start_at
        await asyncio.gather(*(client(first + k, h, lat) for k in range(clients)))
        return time.time(), late, lat


end, late, lat = asyncio.run(run())
print(json.dumps({"end": end, "late": late, "latencies": lat}))
"""
"""One load-generating process: ``clients`` concurrent clients from ``start_at`` (wall clock) on."""

CLIENTS_PER_PROCESS = 8
"""One httpx client process saturates a core near 30 connections (its per-request cost grows with the
pool: 1.5 ms at 8, 3.6 ms at 32), and then it, not the server, sets the pace; so 32 clients are 4
processes of 8."""


def served(guard: Any, drift: DriftAlarm, x: torch.Tensor, clients: list[int], per_client: int) -> list[dict[str, Any]]:
    import subprocess
    import sys

    import uvicorn

    app = build_app(guard, drift, tuple(x.shape[1:]), max_batch=64, max_wait_ms=2)
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and a bare
    # socket.socket() says 0, so every keep-alive answer waited ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    images = json.dumps(x.tolist())
    rows = []
    try:
        for c in clients:
            m0 = app.state.metrics.model_seconds
            groups = [min(CLIENTS_PER_PROCESS, c - f) for f in range(0, c, CLIENTS_PER_PROCESS)]
            start_at = time.time() + 3.0  # after every process has imported httpx and connected
            errs = [tempfile.TemporaryFile("w+") for _ in groups]
            procs = [subprocess.Popen([sys.executable, "-c", LOAD_CLIENT, str(port), str(n), str(per_client),
                                       str(i * CLIENTS_PER_PROCESS), str(start_at)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errs[i], text=True)
                     for i, n in enumerate(groups)]  # fmt: skip
            for p in procs:  # every process gets its images before any is waited for (each reads them first)
                assert p.stdin is not None
                p.stdin.write(images)
                p.stdin.close()
            answers = [p.stdout.read() if p.stdout else "" for p in procs]
            for p, err in zip(procs, errs, strict=True):
                if p.wait():
                    err.seek(0)
                    raise RuntimeError(f"a load-generating process failed: {err.read().strip().splitlines()[-1:]}")
                err.close()
            outs = [json.loads(out) for out in answers]
            if max(o["late"] for o in outs) > 0.1:
                raise RuntimeError("a load-generating process was not ready at the start time")
            wall = max(o["end"] for o in outs) - start_at
            lat = [v for o in outs for v in o["latencies"]]
            model_s = app.state.metrics.model_seconds - m0  # the guard's time during the load (idle before)
            rows.append({
                "clients": c, "requests": c * per_client, "throughput_rps": c * per_client / wall,
                "p50_ms": 1000 * quantile(lat, 0.5), "p99_ms": 1000 * quantile(lat, 0.99),
                "share_outside_model": 1 - model_s / wall,
            })  # fmt: skip
    finally:
        srv.should_exit = True
        th.join(10)
        sock.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits-cnn", "fashion-cnn"])
    ap.add_argument("--max-samples", type=int, default=400)
    ap.add_argument("--arl", type=float, default=1000.0)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and requests (a smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: overhead timed as CPU time)")
    ap.add_argument(
        "--overhead-only",
        action="store_true",
        help="re-time the overhead only; the drift and served tables of results/guard.json are kept",
    )
    ap.add_argument(
        "--served-only",
        action="store_true",
        help="re-measure the served endpoint only; the overhead and drift tables of results/guard.json are kept",
    )
    ap.add_argument(
        "--json-out",
        type=Path,
        help="with --overhead-only: write that table here and leave results/ alone (bench/guard_compare.py)",
    )
    args = ap.parse_args()
    if args.json_out and not args.overhead_only:
        ap.error("--json-out goes with --overhead-only")
    torch.set_num_threads(args.threads)
    repeats, per_client = (10, 5) if args.quick else (200, 20)
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; shared and loaded (other sessions on 2 cores): ratios only; "
        + ("overhead timed as thread CPU time" if torch.get_num_threads() == 1 else "overhead timed as wall time"),
        "arl": args.arl,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.models):
            db = Path(tmp) / "runs.sqlite"
            config = AuditConfig(model=name, checks=[CHECK], max_samples=args.max_samples, seed=0,
                                 check_params={CHECK: {"adaptive": False}})  # fmt: skip
            run_audit(config, db=db, report="")
            with Store(db, create=False) as store:
                export_guard(store, "latest", Path(tmp) / name, arl=args.arl)
            loaded = load_guard(Path(tmp) / name)
            guard = loaded.guard
            cfg = AuditConfig(model=name, checks=[CHECK], max_samples=args.max_samples, seed=0)
            _, data = prepare_inputs(cfg)
            data = cap_data(data, cfg.max_samples, cfg.seed)
            x = data.test.x
            entry: dict[str, Any] = {"monitor": guard.monitor.name, "input_shape": list(x.shape[1:])}
            if args.served_only:
                if i == 0:
                    entry["served"] = served(guard, loaded.new_drift(), x, [1, 8, 32], per_client)
                    print(name, json.dumps(entry["served"]), flush=True)
                result["models"][name] = entry
                continue
            entry["overhead"] = [overhead(guard, x[:b], repeats) for b in (1, 64, min(256, x.shape[0]))]
            if args.overhead_only:
                result["models"][name] = entry
                print(name, json.dumps(entry["overhead"][0]), flush=True)
                continue
            ref = loaded.drift.reference
            streams = {"clean (test data)": x}
            g = torch.Generator().manual_seed(1)
            for corr, sev in (("gaussian-noise", 3), ("contrast", 5)):
                streams[f"corruption/{corr}/{sev}"] = corrupt(x, corr, sev, generator=g)
            streams.update({f"ood/{k}": v.x for k, v in data.ood.items()})
            entry["drift"] = {k: delays(guard, ref, v, args.arl, args.reps, 7) for k, v in streams.items()}
            if i == 0:
                entry["served"] = served(guard, loaded.new_drift(), x, [1, 8, 32], per_client)
            result["models"][name] = entry
            print(name, json.dumps(entry["overhead"][-1]), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        return
    if args.overhead_only or args.served_only:  # the earlier run's other figures stay, said so in the results
        earlier = json.loads((RESULTS / "guard.json").read_text())
        for name, entry in result["models"].items():
            kept = {k: v for k, v in earlier["models"].get(name, {}).items() if k not in entry}
            result["models"][name] = {**entry, **kept}
        result["models"] = {**earlier["models"], **result["models"]}  # models not re-run keep their figures
        result["arl"] = earlier["arl"]
        when = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (load {os.getloadavg()[0]:.1f})"
        timed = {**earlier.get("timed", {}), ("overhead" if args.overhead_only else "served"): when}
        result["timed"] = timed
        result["note"] = "; ".join(f"{k} tables re-measured on {v}" for k, v in sorted(timed.items())) + (
            "; the other tables are from the earlier full run (the guard's outputs are unchanged)."
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guard.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "guard.md").write_text(markdown(result))
    print((RESULTS / "guard.md").read_text())


def markdown(r: dict[str, Any]) -> str:
    out = ["# Runtime guard (issue 20)", "", f"Machine: {r['machine']}.", ""]
    out += ["Goal: `Guard` forward <= 1.15x the bare model's forward.", ""]
    if "note" in r:
        out += [r["note"], ""]
    for name, e in r["models"].items():
        out += [f"## {name} (monitor `{e['monitor']}`, input {e['input_shape']})", ""]
        out += ["| batch | model ms | guard ms | added us (medians) | ratio (median) | ratio 2.5-97.5% |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for o in e["overhead"]:
            added = 1000 * (o["guard_ms_median"] - o["model_ms_median"])
            out.append(f"| {o['batch']} | {o['model_ms_median']:.2f} | {o['guard_ms_median']:.2f} | {added:.0f} | "
                       f"{o['ratio_median']:.2f} | {o['ratio_p2_5']:.2f}-{o['ratio_p97_5']:.2f} |")  # fmt: skip
        out += ["", f"Drift alarm (level {r['arl']:g}: mean clean inputs before a false alarm >= level):", ""]
        out += ["Replicates are seeded permutations of one set of inputs (not independent draws). Alarms per 1,000 "
                f"inputs (the statistic restarts after each alarm) has an exact Poisson 95% interval; the stated "
                f"clean rate is at most {1000 / r['arl']:g}.", ""]  # fmt: skip
        out += ["| stream | length | streams alarmed | alarms / 1000 inputs [95% CI] "
                "| mean delay to first alarm [95% CI] | median |", "|---|---|---|---|---|---|"]  # fmt: skip
        for k, d in e["drift"].items():
            ci = (f"{d['delay_mean']:.1f} [{d['delay_ci'][0]:.1f}, {d['delay_ci'][1]:.1f}]" if "delay_mean" in d
                  else "no alarm")  # fmt: skip
            med = f"{d['delay_median']:.0f}" if "delay_median" in d else "-"
            rate = f"{d['alarms_per_1000']:.2f} [{d['alarms_per_1000_ci'][0]:.2f}, {d['alarms_per_1000_ci'][1]:.2f}]"
            out.append(f"| {k} | {d['stream_length']} | {d['alarmed']}/{d['replicates']} | {rate} | {ci} | {med} |")
        if "served" in e:
            out += ["", "Served (uvicorn on 127.0.0.1, single-image requests, micro-batched):", ""]
            out += ["| clients | requests | req/s | p50 ms | p99 ms | share of wall time outside the guard forward |",
                    "|---|---|---|---|---|---|"]  # fmt: skip
            for s in e["served"]:
                out.append(f"| {s['clients']} | {s['requests']} | {s['throughput_rps']:.1f} | {s['p50_ms']:.1f} | "
                           f"{s['p99_ms']:.1f} | {s['share_outside_model']:.2f} |")  # fmt: skip
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
