"""Reward over-optimisation in the exact simulator: the goals of issue 17 for the simulator.

Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization", 2022. One world (K outputs,
Gaussian features, a gold reward with a penalty on extreme outputs); linear proxies trained on N
gold-labelled draws with label noise, ``--seeds`` proxies per N. For each N:

* best-of-n, exactly, for n = 1..256: gold and proxy against d = sqrt(KL) (closed form; the exact
  finite-space KL is reported beside it), fitted with ``d (alpha - beta d)``;
* the KL-regularised optimum ``pi0 exp(r / lambda)`` (the RL limit) on a lambda grid chosen to give
  evenly spaced d, fitted with BOTH forms;
* a REINFORCE run (features policy) for one N, fitted with both forms;
* alpha and beta against N;
* the proxy-gaming monitor (two trusted proxies trained on other labels) on best-of-n samples at
  n = 2, 4, ..., 256 and on the KL-regularised path: where it first alarms against the gold peak
  (hit / late / miss / false alarm), and its false-alarm rate under the same selection in a world
  with no gaming (trusted scorers that follow the proxy linearly), for three designs: the first
  (linear trusted proxies, 200 draws per step), the new one (trusted proxies of the widest feature
  family on the most labels, one draw per output per step, output ids for a standard error by
  distinct output) and the new one without ids.

No peer library exists (the paper released no code); the comparisons are against the paper's
functional forms and the closed-form KL.

    OMP_NUM_THREADS=1 .venv/bin/python bench/proxy_gaming_sim.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from mlsafety.core import generator
from mlsafety.metrics import clopper_pearson
from mlsafety.monitoring.proxy_gaming import (
    ObservedPeak,
    ScalingFit,
    best_of_n_exact,
    best_of_n_from_samples,
    best_of_n_probs,
    fit_scaling_law,
    kl_regularised,
    make_world,
    mean_interval,
    monitor_proxy_gaming,
    observed_peak,
    reinforce,
    size_trend,
    train_proxy,
)

RESULTS = Path(__file__).parent / "results"
SIZES = (30, 100, 300, 1000, 3000)
WIDTHS = (0, 16, 64, 256)
"""Proxy sizes (random ReLU features beyond the linear ones) swept at N = WIDTH_N labels."""
WIDTH_N = 300
NS = list(range(1, 257))
D_MAX_TILT = 2.2


def _fit_row(fit: ScalingFit, obs: ObservedPeak) -> dict[str, Any]:
    obs_d = (obs.d.value, obs.d.ci_low, obs.d.ci_high)
    obs_spread = obs.spread
    # observed d* is over the seeds whose gold peaks inside the grid (right-censored seeds left out)
    inside = obs.d.n > 0 and obs_d[1] <= fit.peak.value <= obs_d[2]
    return {
        "form": fit.form,
        "alpha": list(fit.alpha)[:3],
        "beta": list(fit.beta)[:3],
        "r2": fit.r2,
        "predicted_peak_d": list(fit.peak)[:3],
        "observed_peak_d": list(obs_d),
        "observed_peak_spread": list(obs_spread),
        "predicted_inside_observed_ci": inside,
        "censored_seeds": obs.censored,
    }


def _tilt_curve(world: Any, proxy: torch.Tensor, targets: torch.Tensor) -> Any:
    lams = torch.logspace(2.5, -2.0, 600, dtype=torch.float64)
    dense = kl_regularised(world.pi0, proxy, world.gold, lams)
    idx = (dense.d.unsqueeze(0) - targets.unsqueeze(1)).abs().argmin(1)
    return kl_regularised(world.pi0, proxy, world.gold, torch.cat([torch.tensor([math.inf]), lams[idx]]))


SCHEDULE = [2**k for k in range(1, 9)]
"""best-of-n values the monitor tests (Bonferroni over them)."""
NULL_RHO = 0.7


@dataclass(frozen=True)
class MonitorDesign:
    """One way to run the monitor: its trusted proxies (per seed, (2, K)), draws per step, whether ids are given."""

    trusted: str
    trusted_by_seed: list[torch.Tensor]
    outputs_per_step: int
    ids: bool


def _monitor_run(pi0: torch.Tensor, p: torch.Tensor, trusted: torch.Tensor, rows: torch.Tensor, m: int,
                 ids: bool, g: torch.Generator) -> int | None:  # fmt: skip
    """Reference draws of pi0 (2m), then m independent draws per row of ``rows`` (a policy over the K outputs);
    the 1-based first alarm step or None."""
    ref = torch.multinomial(pi0, 2 * m, replacement=True, generator=g)
    picks = [torch.multinomial(row, m, replacement=True, generator=g) for row in rows]
    kw: dict[str, Any] = {"ref_ids": ref, "step_ids": picks} if ids else {}
    res = monitor_proxy_gaming(p[ref], trusted[:, ref], [p[i] for i in picks], [trusted[:, i] for i in picks], **kw)
    return res.alarm_step


def _rate(hits: int, total: int) -> list[float]:
    lo, hi = clopper_pearson(hits, total) if total else (math.nan, math.nan)
    return [hits / total if total else math.nan, lo, hi]


def _run_design(world: Any, proxies: list[torch.Tensor], design: MonitorDesign, null_runs: int,
                targets: torch.Tensor) -> dict[str, Any]:  # fmt: skip
    """The monitor on best-of-n and on the KL-regularised path for every seed's proxy, and its false alarms."""
    rows_b: list[dict[str, Any]] = []
    rows_t: list[dict[str, Any]] = []
    tilt_targets = torch.linspace(D_MAX_TILT / 8, D_MAX_TILT, 8, dtype=torch.float64)
    m = design.outputs_per_step
    corr = []
    for s, p in enumerate(proxies):
        trusted = design.trusted_by_seed[s]
        corr += [float(torch.corrcoef(torch.stack([t, world.gold]))[0, 1]) for t in trusted]
        step = _monitor_run(world.pi0, p, trusted, best_of_n_probs(world.pi0, p, SCHEDULE), m, design.ids,
                            generator(s, "proxy-gaming-bench-monitor"))  # fmt: skip
        alarm_n = SCHEDULE[step - 1] if step is not None else None
        exact = best_of_n_exact(world.pi0, p, world.gold, NS)
        peak_i = int(exact.gold.argmax())
        peak_n, interior = NS[peak_i], peak_i < len(NS) - 1
        rows_b.append({"seed": s, "gold_peak_n": peak_n, "alarm_n": alarm_n,
                       "outcome": _outcome(alarm_n, peak_n, interior)})  # fmt: skip
        curve = _tilt_curve(world, p, tilt_targets)  # row 0 is pi0 itself
        step = _monitor_run(world.pi0, p, trusted, curve.probs[1:], m, design.ids,
                            generator(s, "proxy-gaming-bench-monitor-tilt"))  # fmt: skip
        fine = _tilt_curve(world, p, targets)
        obs = observed_peak(fine.d, fine.gold)
        peak_d, interior_t = obs.d.value, bool(obs.interior.all())
        alarm_d = float(curve.d[step]) if step is not None else None
        rows_t.append({"seed": s, "gold_peak_d": peak_d, "alarm_d": alarm_d,
                       "outcome": _outcome(alarm_d, peak_d, interior_t)})  # fmt: skip
    # false alarms UNDER SELECTION in a world with no gaming: two trusted scorers that follow the proxy linearly
    # (rho with it under pi0, plus noise fixed per output, redrawn per run), and the same best-of-n draws
    false_alarms = 0
    probs = [best_of_n_probs(world.pi0, p, SCHEDULE) for p in proxies]
    for r in range(null_runs):
        p = proxies[r % len(proxies)]
        g = generator(r, "proxy-gaming-bench-null")
        zp = (p - p.mean()) / p.std()
        noise = torch.randn(2, p.numel(), generator=g, dtype=torch.float64)
        trusted = NULL_RHO * zp + math.sqrt(1 - NULL_RHO**2) * noise
        false_alarms += _monitor_run(world.pi0, p, trusted, probs[r % len(proxies)], m, design.ids, g) is not None
    out: dict[str, Any] = {"trusted": design.trusted, "outputs_per_step": m, "reference_outputs": 2 * m,
                           "ids": design.ids, "trusted_gold_corr": [min(corr), max(corr)]}  # fmt: skip
    for key, rows in (("bon", rows_b), ("tilt", rows_t)):
        hits = sum(r["outcome"] == "hit" for r in rows)
        interior_count = sum(r["outcome"] in ("hit", "late", "miss") for r in rows)
        out[key] = {"per_seed": rows, "hits": hits, "interior_peaks": interior_count,
                    "hit_rate_over_interior_peaks": _rate(hits, interior_count)}  # fmt: skip
    out["false_alarms"] = false_alarms
    out["false_alarm_rate_under_selection_no_gaming"] = _rate(false_alarms, null_runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--outputs", type=int, default=4096)
    parser.add_argument("--pg-steps", type=int, default=300)
    parser.add_argument("--null-runs", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t_start = time.perf_counter()
    world = make_world(num_outputs=args.outputs)
    seeds = range(args.seeds)
    out: dict[str, Any] = {
        "paper": "Gao, Schulman & Hilton 2022, Scaling Laws for Reward Model Overoptimization",
        "world": {"outputs": args.outputs, "features": int(world.features.shape[1]), "curvature": 0.35},
        "seeds": args.seeds,
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "bon": {},
        "tilt": {},
    }
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    bon_fits: list[ScalingFit] = []
    proxies = {n: [train_proxy(world, n, seed=s) for s in seeds] for n in SIZES}

    # --- best-of-n, exact ---
    t0 = time.perf_counter()
    max_kl_gap = 0.0
    for n_labels in SIZES:
        curves = [best_of_n_exact(world.pi0, p, world.gold, NS) for p in proxies[n_labels]]
        gold = torch.stack([c.gold for c in curves])
        proxy = torch.stack([c.proxy for c in curves])
        d = curves[0].d
        max_kl_gap = max(max_kl_gap, max(float((c.kl - c.kl_exact).abs().max()) for c in curves))
        fit = fit_scaling_law(d, gold, "bon")
        obs = observed_peak(d, gold)
        bon_fits.append(fit)
        g_mean, g_lo, g_hi = mean_interval(gold)
        p_mean, _, _ = mean_interval(proxy)
        peak_i = int(g_mean.argmax())
        out["bon"][str(n_labels)] = {
            **_fit_row(fit, obs),
            "gold_peak_n": NS[peak_i],
            "gold_at_peak": [float(g_mean[peak_i]), float(g_lo[peak_i]), float(g_hi[peak_i])],
            "gold_at_256": [float(g_mean[-1]), float(g_lo[-1]), float(g_hi[-1])],
            "proxy_at_256": float(p_mean[-1]),
            "proxy_monotone": bool((p_mean[1:] >= p_mean[:-1] - 1e-12).all()),
            "gold_falls_after_peak": float(g_hi[-1]) < float(g_lo[peak_i]),
        }
        line = axes[0, 0].plot(d, g_mean - g_mean[0], label=f"gold N={n_labels}")[0]
        axes[0, 0].fill_between(d, g_lo - g_mean[0], g_hi - g_mean[0], color=line.get_color(), alpha=0.2)
        axes[0, 0].plot(d, fit.predict(d), ls=":", color=line.get_color())
        axes[0, 0].plot(d, p_mean - p_mean[0], ls="--", color=line.get_color(), alpha=0.5)
    out["bon_seconds"] = time.perf_counter() - t0
    out["bon_kl_closed_vs_exact_max_abs"] = max_kl_gap
    axes[0, 0].set(title="best-of-n (exact): gold solid, proxy dashed, fit dotted", xlabel="d = sqrt(KL)")
    axes[0, 0].legend(fontsize=7)

    trend = size_trend(list(SIZES), bon_fits)
    out["bon_size_trend"] = {
        "alpha": trend.alpha.tolist(),
        "beta": trend.beta.tolist(),
        "alpha_per_log_n": list(trend.alpha_slope)[:3],
        "beta_per_log_n": list(trend.beta_slope)[:3],
    }
    axes[1, 0].errorbar(
        SIZES,
        [f.alpha.value for f in bon_fits],
        yerr=[[f.alpha.value - f.alpha.ci_low for f in bon_fits], [f.alpha.ci_high - f.alpha.value for f in bon_fits]],
        label="alpha_bon",
        marker="o",
    )
    axes[1, 0].errorbar(
        SIZES,
        [f.beta.value for f in bon_fits],
        yerr=[[f.beta.value - f.beta.ci_low for f in bon_fits], [f.beta.ci_high - f.beta.value for f in bon_fits]],
        label="beta_bon",
        marker="s",
    )
    axes[1, 0].set(xscale="log", title="best-of-n fit coefficients vs proxy data N", xlabel="N")
    axes[1, 0].legend()

    # --- best-of-n against proxy size (random-feature width) at one N ---
    t0 = time.perf_counter()
    out["bon_width"] = {"labels": WIDTH_N}
    for width in WIDTHS:
        wp = [train_proxy(world, WIDTH_N, width=width, seed=s) for s in seeds]
        curves = [best_of_n_exact(world.pi0, p, world.gold, NS) for p in wp]
        gold = torch.stack([c.gold for c in curves])
        d = curves[0].d
        out["bon_width"][str(width)] = _fit_row(fit_scaling_law(d, gold, "bon"), observed_peak(d, gold))
    out["bon_width_seconds"] = time.perf_counter() - t0

    # --- KL-regularised optimum (the RL limit), exact ---
    t0 = time.perf_counter()
    targets = torch.linspace(0.05, D_MAX_TILT, 30, dtype=torch.float64)
    for n_labels in SIZES:
        curves = [_tilt_curve(world, p, targets) for p in proxies[n_labels]]
        gold = torch.stack([c.gold for c in curves])
        proxy = torch.stack([c.proxy for c in curves])
        dd = torch.stack([c.d for c in curves])
        obs = observed_peak(dd, gold)
        rows = {form: _fit_row(fit_scaling_law(dd, gold, form), obs) for form in ("rl", "bon")}
        g_mean, _, _ = mean_interval(gold)
        p_mean, _, _ = mean_interval(proxy)
        out["tilt"][str(n_labels)] = {
            "fits": rows,
            "proxy_monotone": bool((p_mean[1:] >= p_mean[:-1] - 1e-9).all()),
            "gold_falls_after_peak": float(g_mean[-1]) < float(g_mean.max()) - 0.05,
        }
        line = axes[0, 1].plot(dd.mean(0), g_mean - g_mean[0], label=f"gold N={n_labels}")[0]
        axes[0, 1].plot(dd.mean(0), p_mean - p_mean[0], ls="--", color=line.get_color(), alpha=0.5)
    out["tilt_seconds"] = time.perf_counter() - t0
    axes[0, 1].set(title="KL-regularised optimum pi0 exp(r/lambda) (exact)", xlabel="d = sqrt(KL)")
    axes[0, 1].legend(fontsize=7)

    # --- REINFORCE, one N ---
    t0 = time.perf_counter()
    pg_n = 100
    runs = [
        reinforce(world.pi0, p, world.gold, features=world.features, steps=args.pg_steps, lr=0.003, seed=s)
        for s, p in zip(seeds, proxies[pg_n], strict=True)
    ]
    gold = torch.stack([r.gold for r in runs])
    dd = torch.stack([r.d for r in runs])
    keep = int((dd.mean(0) <= 2.4).sum())  # before the finite space saturates at sqrt(log K)
    obs = observed_peak(dd[:, :keep], gold[:, :keep])
    out["reinforce"] = {
        "proxy_n": pg_n,
        "steps": args.pg_steps,
        "checkpoints_fitted": keep,
        "fits": {form: _fit_row(fit_scaling_law(dd[:, :keep], gold[:, :keep], form), obs) for form in ("rl", "bon")},
        "seconds": time.perf_counter() - t0,
    }
    axes[0, 2].plot(dd.mean(0), gold.mean(0) - gold.mean(0)[0], label="gold")
    axes[0, 2].plot(dd.mean(0), torch.stack([r.proxy for r in runs]).mean(0), ls="--", label="proxy")
    axes[0, 2].set(title=f"REINFORCE on a linear-features policy (N={pg_n})", xlabel="d = sqrt(KL)")
    axes[0, 2].legend()

    # --- the monitor on best-of-n samples and on the KL-regularised path, per design ---
    t0 = time.perf_counter()
    mon_n = 100
    trusted_linear = [torch.stack([train_proxy(world, 1000, seed=1000 + 2 * s + j) for j in range(2)]) for s in seeds]
    trusted_wide = [
        torch.stack([train_proxy(world, SIZES[-1], width=WIDTHS[-1], seed=1000 + 2 * s + j) for j in range(2)])
        for s in seeds
    ]
    designs = {
        # the first measurement: trusted of the optimised proxy's own (linear) family, few draws, repeats unseen
        "old": MonitorDesign("two linear proxies, 1000 other gold labels each", trusted_linear, 200, False),
        # trusted of the widest feature family on the most labels (they can bend with the gold), one draw per
        # output of the world per step, and the outputs' ids (a cluster-robust standard error by output)
        "new": MonitorDesign(
            f"two width-{WIDTHS[-1]} ReLU-feature proxies, {SIZES[-1]} other gold labels each",
            trusted_wide,
            args.outputs,
            True,
        ),
        # the same without ids: what counting repeated outputs as independent does to the false-alarm rate
        "new_without_ids": MonitorDesign("as new", trusted_wide, args.outputs, False),
    }
    out["monitor"] = {
        "alpha": 0.05,
        "schedule_n": SCHEDULE,
        "proxy_labels": mon_n,
        "null": f"trusted = {NULL_RHO} z_proxy + noise fixed per output (2 scorers), best-of-n draws as the design",
        "null_runs": args.null_runs,
        "designs": {},
    }
    for name, design in designs.items():
        out["monitor"]["designs"][name] = _run_design(world, proxies[mon_n], design, args.null_runs, targets)
    out["monitor"]["seconds"] = time.perf_counter() - t0
    new_rows = out["monitor"]["designs"]["new"]
    axes[1, 1].scatter([r["gold_peak_n"] for r in new_rows["bon"]["per_seed"]],
                       [r["alarm_n"] or 512 for r in new_rows["bon"]["per_seed"]])  # fmt: skip
    axes[1, 1].plot([1, 256], [1, 256], color="grey", ls=":")
    axes[1, 1].set(xscale="log", yscale="log", title="monitor (new design): first alarm n vs gold-peak n")
    axes[1, 1].set(xlabel="gold peak n", ylabel="alarm n (512 = never)")
    rows_t = new_rows["tilt"]["per_seed"]

    # --- speed: the sample-reuse estimator, 256 n values from one pool ---
    g = generator(0, "proxy-gaming-bench-speed")
    pool_p = torch.randn(500, 256, generator=g, dtype=torch.float64)
    pool_g = pool_p + torch.randn(500, 256, generator=g, dtype=torch.float64)
    t0 = time.perf_counter()
    best_of_n_from_samples(pool_p, pool_g, NS)
    out["sample_reuse_seconds_500_prompts_256_samples_256_n"] = time.perf_counter() - t0
    axes[1, 2].scatter([r["gold_peak_d"] for r in rows_t], [r["alarm_d"] or 2.5 for r in rows_t])
    axes[1, 2].plot([0, 2.2], [0, 2.2], color="grey", ls=":")
    axes[1, 2].set(title="monitor on the KL-regularised path: alarm d vs gold-peak d", xlabel="gold peak d")
    axes[1, 2].set_ylabel("alarm d (2.5 = never)")
    out["seconds_total"] = time.perf_counter() - t_start
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "proxy_gaming_sim.png", dpi=90)
    (RESULTS / "proxy_gaming_sim.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "proxy_gaming_sim.md").write_text(_markdown(out))


def _opt(v: float | None) -> str:
    return "never" if v is None else f"{v:.3f}"


def _fmt(v: list[float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def _outcome(alarm: float | None, peak: float, interior: bool) -> str:
    """hit (alarm below an interior peak), late, miss, false_alarm (alarm, no interior peak) or quiet."""
    if interior:
        return "miss" if alarm is None else ("hit" if alarm < peak else "late")
    return "quiet" if alarm is None else "false_alarm"


def _goal_status(out: dict[str, Any]) -> str:
    """The issue's simulator goal (both forms R^2 >= 0.95, predicted peak inside the observed interval),
    stated as met or not from the numbers."""
    bon = [r for r in out["bon"].values()]
    rl = [r["fits"]["rl"] for r in out["tilt"].values()] + [out["reinforce"]["fits"]["rl"]]
    bon_r2, rl_r2 = [r["r2"] for r in bon], [r["r2"] for r in rl]
    bon_in = sum(r["predicted_inside_observed_ci"] for r in bon)
    rl_in = sum(r["predicted_inside_observed_ci"] for r in rl)
    met = min(bon_r2) >= 0.95 and min(rl_r2) >= 0.95 and bon_in == len(bon) and rl_in == len(rl)
    return (
        f"**Goal {'met' if met else 'NOT met'}.** Best-of-n form on best-of-n: "
        f"R^2 {min(bon_r2):.3f}-{max(bon_r2):.3f}, "
        f"predicted peak inside the observed interval for {bon_in}/{len(bon)} N. RL form on the KL-regularised "
        f"optimum and REINFORCE: R^2 {min(rl_r2):.3f}-{max(rl_r2):.3f} (goal >= 0.95), predicted peak inside "
        f"for {rl_in}/{len(rl)} fits."
    )


def _monitor_goal(out: dict[str, Any]) -> str:
    """The issue's monitor goal (alarm before the gold peak in >= 80% of seeds at a 5% false-alarm rate), stated
    for the new design from the numbers, on both optimisers."""
    d = out["monitor"]["designs"]["new"]
    fa = d["false_alarm_rate_under_selection_no_gaming"]
    calibrated = fa[1] <= out["monitor"]["alpha"]  # not significantly above alpha
    parts = []
    for key, what in (("bon", "best-of-n"), ("tilt", "the KL-regularised path")):
        rate = d[key]["hit_rate_over_interior_peaks"]
        early = sum(r["outcome"] == "false_alarm" for r in d[key]["per_seed"])
        parts.append(
            f"{what} {d[key]['hits']}/{d[key]['interior_peaks']} ({'>=' if rate[0] >= 0.8 else '<'} 80%; "
            f"{early} seed(s) whose gold never peaks inside alarmed anyway)"
        )
    met = calibrated and all(d[k]["hit_rate_over_interior_peaks"][0] >= 0.8 for k in ("bon", "tilt"))
    return (
        f"**Monitor goal {'met' if met else 'NOT met'} (new design, on the point estimates: with 8 seeds the exact "
        "intervals in the table cannot exclude a hit rate below 80%).** Hits before the gold peak: "
        + "; ".join(parts)
        + f". False-alarm rate {_fmt(fa)} against alpha {out['monitor']['alpha']} "
        f"({'not significantly above' if calibrated else 'significantly above'} it)."
    )


def _markdown(out: dict[str, Any]) -> str:
    lines = [
        "# Proxy gaming in the exact simulator (issue 17)",
        "",
        f"{out['paper']}. World: {out['world']}; {out['seeds']} proxies (seeds) per N; 95% intervals "
        "(bootstrap over seeds for fits and peaks, Clopper-Pearson for rates). "
        f"Machine: {out['machine']}, {out['threads']} thread(s), {out['seconds_total']:.1f} s in all.",
        "",
        "## Best-of-n (exact, n = 1..256), fit d (alpha - beta d)",
        "",
        "Observed d*: mean over the seeds whose gold peaks inside the grid, with a bootstrap interval over "
        "them; `censored` counts the seeds still rising at the grid's end (left out of observed d*).",
        "",
        "| N | alpha | beta | R^2 | predicted d* | observed d* | censored | inside | gold peak n | gold falls "
        "| proxy monotone |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in out["bon"].items():
        lines.append(
            f"| {n} | {_fmt(r['alpha'])} | {_fmt(r['beta'])} | {r['r2']:.4f} | {_fmt(r['predicted_peak_d'])} | "
            f"{_fmt(r['observed_peak_d'])} | {r['censored_seeds']} | {r['predicted_inside_observed_ci']} | "
            f"{r['gold_peak_n']} | {r['gold_falls_after_peak']} | {r['proxy_monotone']} |"
        )
    t = out["bon_size_trend"]
    lines += [
        "",
        "Closed-form KL vs the exact finite-space KL: max |difference| "
        f"{out['bon_kl_closed_vs_exact_max_abs']:.2e} nats.",
        f"alpha per unit log N: {_fmt(t['alpha_per_log_n'])}; beta per unit log N: {_fmt(t['beta_per_log_n'])} "
        "(nested bootstrap: seeds resampled within each N, slope refitted per replicate).",
        "",
        f"### Best-of-n against proxy size (random ReLU features), N = {out['bon_width']['labels']}",
        "",
        "| width | alpha | beta | R^2 | predicted d* | observed d* | censored | inside |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {w} | {_fmt(r['alpha'])} | {_fmt(r['beta'])} | {r['r2']:.4f} | {_fmt(r['predicted_peak_d'])} | "
            f"{_fmt(r['observed_peak_d'])} | {r['censored_seeds']} | {r['predicted_inside_observed_ci']} |"
            for w, r in out["bon_width"].items()
            if w != "labels"
        ],
        "",
        f"## KL-regularised optimum (exact, d up to {D_MAX_TILT}), both forms",
        "",
        "| N | form | alpha | beta | R^2 | predicted d* | observed d* | inside |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, r in out["tilt"].items():
        for form, f in r["fits"].items():
            lines.append(
                f"| {n} | {form} | {_fmt(f['alpha'])} | {_fmt(f['beta'])} | {f['r2']:.4f} | "
                f"{_fmt(f['predicted_peak_d'])} | {_fmt(f['observed_peak_d'])} | {f['predicted_inside_observed_ci']} |"
            )
    pg = out["reinforce"]
    lines += [
        "",
        f"## REINFORCE (N={pg['proxy_n']}, {pg['steps']} steps, {pg['checkpoints_fitted']} checkpoints fitted)",
        "",
        "| form | alpha | beta | R^2 | predicted d* | observed d* | inside |",
        "|---|---|---|---|---|---|---|",
    ]
    for form, f in pg["fits"].items():
        lines.append(
            f"| {form} | {_fmt(f['alpha'])} | {_fmt(f['beta'])} | {f['r2']:.4f} | {_fmt(f['predicted_peak_d'])} | "
            f"{_fmt(f['observed_peak_d'])} | {f['predicted_inside_observed_ci']} |"
        )
    m = out["monitor"]
    des = m["designs"]
    lines += [
        "",
        f"## Proxy-gaming monitor (alpha = {m['alpha']}, Bonferroni over {len(m['schedule_n'])} steps)",
        "",
        "The monitor tests the trusted proxies' residual from the line ``t ~ a + b p`` fitted on pi0's draws "
        "(mlsafety.monitoring.proxy_gaming.monitor), on the N = "
        f"{m['proxy_labels']} proxies. Best-of-n steps: n = {m['schedule_n']}; KL-regularised steps: 8 lambdas, "
        f"d = {D_MAX_TILT / 8:.3f}..{D_MAX_TILT}. Outcome per seed: hit = alarm below an interior gold peak; "
        "late = at or after it; miss = no alarm; false_alarm = alarm while gold never peaked; quiet. Hits are over "
        "the seeds whose gold peaks inside the schedule (Clopper-Pearson intervals). False alarms: "
        f"{m['null_runs']} runs of a world with no gaming ({m['null']}).",
        "",
        "Designs. *old*: the first measurement. *new*: trusted proxies that can bend with the gold (the widest "
        "feature family the bench trains, on the most labels), one draw per output of the world per step, and the "
        "outputs' ids (a cluster-robust standard error by distinct output: best-of-256 puts the draws on a few "
        "dozen outputs). *new_without_ids*: the same draws counted as independent.",
        "",
        "| design | trusted | trusted-gold corr | draws / step | ids | best-of-n hits | KL-regularised hits "
        "| false alarms |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {d['trusted']} | {d['trusted_gold_corr'][0]:.3f}-{d['trusted_gold_corr'][1]:.3f} | "
            f"{d['outputs_per_step']} | {d['ids']} | {d['bon']['hits']}/{d['bon']['interior_peaks']} "
            f"{_fmt(d['bon']['hit_rate_over_interior_peaks'])} | {d['tilt']['hits']}/{d['tilt']['interior_peaks']} "
            f"{_fmt(d['tilt']['hit_rate_over_interior_peaks'])} | {d['false_alarms']}/{m['null_runs']} "
            f"{_fmt(d['false_alarm_rate_under_selection_no_gaming'])} |"
            for name, d in des.items()
        ],
        "",
        _monitor_goal(out),
        "",
        "| seed | gold peak n | alarm n (old) | alarm n (new) | outcome (new) | gold peak d | alarm d (old) "
        "| alarm d (new) | outcome (new) |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {b['seed']} | {b['gold_peak_n']} | {ob['alarm_n']} | {b['alarm_n']} | {b['outcome']} | "
            f"{t['gold_peak_d']:.3f} | {_opt(ot['alarm_d'])} | {_opt(t['alarm_d'])} | {t['outcome']} |"
            for b, ob, t, ot in zip(
                des["new"]["bon"]["per_seed"],
                des["old"]["bon"]["per_seed"],
                des["new"]["tilt"]["per_seed"],
                des["old"]["tilt"]["per_seed"],
                strict=True,
            )
        ],
        "",
        "Sample-reuse estimator (500 prompts x 256 cached samples, all 256 n): "
        f"{out['sample_reuse_seconds_500_prompts_256_samples_256_n']:.3f} s (one sort per prompt, one matrix product).",
        "",
        "## Reading",
        "",
        _goal_status(out),
        "",
        "Best-of-n: the gold peaks and falls while the proxy rises for every N; ``d (alpha - beta d)`` fits "
        "(R^2 in the line above) and alpha moves with N as the slope above says. The KL-regularised optimum "
        "and REINFORCE also over-optimise, but in this world their gold curve follows the best-of-n form "
        "better than the RL form ``d (alpha - beta log d)``: with Gaussian features and a linear proxy, "
        "tilting ``pi0`` by ``exp(r / lambda)`` shifts the features' mean by ``sqrt(2) d`` along the proxy "
        "direction, so a quadratic gold is quadratic in d whatever the optimiser. The paper's RL form is "
        "an empirical finding for PPO on language models; this simulator does not reproduce it, and the "
        "table reports both forms rather than pick the world to suit the law.",
        "",
        "![curves](proxy_gaming_sim.png)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
