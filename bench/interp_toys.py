"""Toy models of superposition and grokking reproduced on a CPU, with the emergence monitor.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/interp_toys.py [--part superposition|dims|grokking|all]``.

Superposition (Elhage et al. 2022): the two-features-in-one-dimension phase diagram (feature density
x relative importance), the five-features-in-two-dimensions geometry as sparsity grows (ReLU and
linear), and the dimensions-per-feature curve with the feature dimensionalities' clustering at simple
fractions. Writes ``bench/results/interp_superposition.{json,md,png}``. ``--part dims`` runs the larger
feature-dimensionality sweep alone (many sparsities x initialisations as one batched model), writes
``bench/results/interp_superposition_dims.{json,png}`` and adds its section to the note.

Grokking (Power et al. 2022; Nanda et al. 2023): ``grokking_recipe``'s defaults over ``--seeds``
(default 0 1 2, about 10 CPU minutes each), the progress measures at every checkpoint, the emergence
step of test accuracy with its bootstrap interval, and each progress measure's lead over test
accuracy's change point (``leading_indicators``). ``--run-dir`` keeps the trained runs for a rerun.
Writes ``bench/results/interp_grokking.{json,md,png}``
and the cached run the tests read, ``tests/data/interp_grokking_run.json`` (measures and packed
per-example test outcomes, no weights).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from mlsafety.monitoring.interp.emergence import detect_emergence, leading_indicators
from mlsafety.monitoring.interp.grokking import grokking_recipe, progress_measures
from mlsafety.monitoring.interp.superposition import (
    REPRESENTATION,
    antipodal_pairs,
    classify_feature,
    dimensions_per_feature,
    feature_dimensionality,
    feature_norms,
    feature_superposition,
    geometric_importance,
    train_toy_models,
)

RESULTS = Path(__file__).parent / "results"
CACHED = Path(__file__).parents[1] / "tests" / "data" / "interp_grokking_run.json"
FRACTIONS = {"1": 1.0, "3/4": 0.75, "2/3": 2 / 3, "1/2": 0.5, "2/5": 0.4, "1/3": 1 / 3}


def _env() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}


RESTARTS = 4
"""Restarts per superposition setting; the lowest-loss one is kept (as the paper does)."""


def phase_diagram(steps: int, size: int) -> dict[str, Any]:
    """n=2 features in m=1 dimension; feature 0 has importance 1, feature 1 the relative importance.

    Sparse settings see few active features per step, so the batch is larger than elsewhere (2048:
    about 20 active values per feature and step at density 0.01) and the learning rate decays on a
    cosine.
    """
    density = torch.logspace(0, -2, size)  # 1 - S
    rel = torch.logspace(-1, 1, size)
    dd, rr = torch.meshgrid(density, rel, indexing="ij")
    imp = torch.stack([torch.ones(size * size), rr.reshape(-1)], 1)
    tm = train_toy_models(
        2, 1, 1 - dd.reshape(-1), imp, steps=steps, batch=2048, lr=1e-2, seed=0, restarts=RESTARTS, cosine=True
    )
    cls = classify_feature(tm.W, 1).reshape(size, size)
    return {
        "restarts": RESTARTS,
        "density": density.tolist(),
        "relative_importance": rel.tolist(),
        "extra_feature": cls.tolist(),
        "labels": list(REPRESENTATION),
    }


GEOMETRY_DECAY = 0.9
"""Importance ``0.9^i`` of the n=5, m=2 figure, as in the paper's introduction notebook."""


def geometry(steps: int) -> dict[str, Any]:
    """n=5 features in m=2 dimensions, importance 0.9^i, as sparsity grows; ReLU and linear."""
    sparsity = torch.tensor([0.0, 0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99])
    out: dict[str, Any] = {"sparsity": sparsity.tolist(), "decay": GEOMETRY_DECAY, "restarts": 2 * RESTARTS}
    for name, linear in (("relu", False), ("linear", True)):
        tm = train_toy_models(
            5,
            2,
            sparsity,
            geometric_importance(5, GEOMETRY_DECAY),
            linear=linear,
            steps=steps,
            batch=1024,
            lr=1e-2,
            restarts=2 * RESTARTS,
            cosine=True,
        )
        norms = feature_norms(tm.W)
        rep = norms > 0.5
        out[name] = {
            "W": tm.W.tolist(),
            "norms": norms.tolist(),
            "superposition": feature_superposition(tm.W).tolist(),
            "represented": rep.sum(1).tolist(),
            "max_superposition_represented": [
                float(feature_superposition(w)[r].max()) if r.any() else 0.0 for w, r in zip(tm.W, rep, strict=True)
            ],
            "antipodal_pairs": [antipodal_pairs(w) for w in tm.W],
            "dimensionality": [
                [round(float(v), 3) for v in feature_dimensionality(w)[r]] for w, r in zip(tm.W, rep, strict=True)
            ],
        }
    return out


def dimensionality(n: int, m: int, steps: int, levels: int) -> dict[str, Any]:
    """Uniform importance, n features in m dimensions, over feature densities 1 .. 0.01."""
    density = torch.logspace(0, -2, levels)
    tm = train_toy_models(
        n, m, 1 - density, torch.ones(n), steps=steps, batch=1024, lr=3e-3, seed=0, restarts=2, cosine=True
    )
    d_star = dimensions_per_feature(tm.W)
    d_i = feature_dimensionality(tm.W)
    rep = feature_norms(tm.W) > 0.5
    counts = {}
    for label, f in FRACTIONS.items():
        counts[label] = int(((d_i - f).abs() < 0.03)[rep].sum())
    return {
        "n": n,
        "m": m,
        "density": density.tolist(),
        "dimensions_per_feature": d_star.tolist(),
        "feature_dimensionality": [[float(v) for v in d[r]] for d, r in zip(d_i, rep, strict=True)],
        "represented": rep.sum(1).tolist(),
        "near_fraction_counts": counts,
        "represented_total": int(rep.sum()),
    }


DIM_FRACTIONS = {"1": 1.0, "3/4": 0.75, "2/3": 2 / 3, "1/2": 0.5, "2/5": 0.4, "3/8": 0.375}
"""The paper's feature-dimensionality fractions (uniform polytopes: dedicated, tetrahedron, triangle,
digon, pentagon, square antiprism)."""
DIM_TOL = 0.02
"""A feature counts at its nearest fraction when within this of it (2/5 and 3/8 are 0.025 apart)."""


def dimensionality_sweep(
    n: int, m: int, inv_density: list[float], inits: int, steps: int, batch: int, lr: float
) -> dict[str, Any]:
    """Elhage et al.'s "Feature dimensionality" figure: uniform importance, n features in m dimensions.

    Every (sparsity, initialisation) pair is its own instance of one batched model and every one is
    kept (no best-of-restarts), so the counts are over ``inits`` trained models per sparsity.
    """
    inv = torch.tensor(inv_density, dtype=torch.float32)
    sparsity = 1 - 1 / inv
    start = time.thread_time()
    tm = train_toy_models(
        n,
        m,
        sparsity.repeat(inits),
        torch.ones(n),
        steps=steps,
        batch=batch,
        lr=lr,
        seed=1,
        cosine=True,
        eval_batch=2048,
    )
    cpu = time.thread_time() - start
    levels = len(inv_density)
    W = tm.W.reshape(inits, levels, m, n)
    d_star = dimensions_per_feature(W)  # (inits, levels)
    d_i = feature_dimensionality(W)
    rep = feature_norms(W) > 0.5
    fr = torch.tensor(list(DIM_FRACTIONS.values()))
    near = (d_i.unsqueeze(-1) - fr).abs()  # (inits, levels, n, fractions)
    nearest = near.argmin(-1)
    hit = rep & (near.min(-1).values < DIM_TOL)
    counts = {
        label: [int((hit[:, k] & (nearest[:, k] == j)).sum()) for k in range(levels)]
        for j, label in enumerate(DIM_FRACTIONS)
    }
    return {
        "n": n,
        "m": m,
        "inits": inits,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "tolerance": DIM_TOL,
        "inv_density": inv.tolist(),
        "dimensions_per_feature": d_star.T.tolist(),  # per level: one value per init
        "loss": tm.loss.reshape(inits, levels).T.tolist(),
        "represented": rep.sum(-1).T.tolist(),
        "feature_dimensionality": [
            [round(float(v), 4) for j in range(inits) for v in d_i[j, k][rep[j, k]]] for k in range(levels)
        ],
        "near_fraction_counts": counts,
        "train_cpu_seconds": cpu,
    }


def run_dims(quick: bool) -> None:
    """The feature-dimensionality sweep alone (``--part dims``); it adds a section to the superposition note."""
    inv = [float(v) for v in torch.logspace(0, 2, 8 if quick else 22)]
    inv += [float(v) for v in torch.logspace(math.log10(1.3), math.log10(4.0), 4 if quick else 14)]
    inv = sorted(set(round(v, 4) for v in inv))
    res: dict[str, Any] = {"env": _env(), "trainer": TRAINER}
    start = time.perf_counter()
    res |= dimensionality_sweep(
        DIMS_N, DIMS_M, inv, 2 if quick else DIMS_INITS, 500 if quick else DIMS_STEPS, 1024, 3e-3
    )
    res["seconds"] = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "interp_superposition_dims.json").write_text(json.dumps(res, indent=1))
    _plot_dims(res)
    old = RESULTS / "interp_superposition.json"
    if old.exists():
        (RESULTS / "interp_superposition.md").write_text(_md_superposition(json.loads(old.read_text())))


DIMS_N, DIMS_M, DIMS_INITS, DIMS_STEPS = 100, 10, 3, 6000
"""The sweep's size: chosen to fit about 20-30 minutes of one core (see the note)."""


def _plot_dims(res: dict[str, Any]) -> None:
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 1]})
    inv = res["inv_density"]
    for x, ds in zip(inv, res["feature_dimensionality"], strict=True):
        ax.scatter([x] * len(ds), ds, s=5, alpha=0.25, color="tab:blue", lw=0)
    ds_mean = [sum(v) / len(v) for v in res["dimensions_per_feature"]]
    ax.plot(inv, ds_mean, "k-", lw=1.5, label="D* = m / ||W||_F^2 (mean over inits)")
    for label, f in DIM_FRACTIONS.items():
        ax.axhline(f, color="grey", lw=0.5, ls=":")
        ax.text(inv[-1] * 1.12, f, label, fontsize=8, va="center")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("1 / (1 - S)")
    ax.set_ylabel("dimensions per feature")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(
        f"n={res['n']}, m={res['m']}, uniform importance, {res['inits']} inits x {res['steps']} Adam steps; "
        "dots: D_i of features with ||W_i|| > 0.5",
        fontsize=9,
    )
    all_d = [v for ds in res["feature_dimensionality"] for v in ds]
    hx.hist(all_d, bins=110, range=(0, 1.1), orientation="horizontal", color="tab:blue")
    for f in DIM_FRACTIONS.values():
        hx.axhline(f, color="grey", lw=0.5, ls=":")
    hx.set_ylim(0, 1.1)
    hx.set_xscale("log")
    hx.set_xlabel("features (all sparsities)")
    fig.tight_layout()
    fig.savefig(RESULTS / "interp_superposition_dims.png", dpi=110)
    plt.close(fig)


def _md_dims(res: dict[str, Any]) -> list[str]:
    labels = list(DIM_FRACTIONS)
    tot = {k: sum(v) for k, v in res["near_fraction_counts"].items()}
    lines = [
        f"## Feature dimensionality, n={res['n']} in m={res['m']}, uniform importance (`--part dims`)",
        "",
        f"`OMP_NUM_THREADS=1 .venv/bin/python bench/interp_toys.py --part dims`: {len(res['inv_density'])} "
        f"sparsities x {res['inits']} initialisations = {len(res['inv_density']) * res['inits']} models trained "
        f"as one batched model, {res['steps']} Adam steps each (batch {res['batch']}, lr {res['lr']} cosine-decayed "
        f"to 0), {res['train_cpu_seconds']:.0f} s of one thread's CPU time ({res['seconds']:.0f} s wall on a "
        f"shared 2-core machine; {res['env']}). Every model is kept (no best-of-restarts). Counts: represented "
        f"features (||W_i|| > 0.5) summed over the {res['inits']} models whose D_i lies within {res['tolerance']} "
        "of the fraction (nearest one when two are close); seeded run, counts, not sampled estimates.",
        "",
        "| 1/(1-S) | D* per init | represented per init | " + " | ".join(labels) + " |",
        "|---|---|---|" + "---|" * len(labels),
    ]
    for k, x in enumerate(res["inv_density"]):
        ds = ", ".join(f"{v:.3f}" for v in res["dimensions_per_feature"][k])
        rep = ", ".join(str(v) for v in res["represented"][k])
        cells = " | ".join(str(res["near_fraction_counts"][lab][k]) for lab in labels)
        lines.append(f"| {x:.4g} | {ds} | {rep} | {cells} |")
    total = sum(len(v) for v in res["feature_dimensionality"])
    lines += [
        "",
        f"All sparsities, of {total} represented features: " + ", ".join(f"{k}: {v}" for k, v in tot.items()),
        "",
        "Where each fraction's cluster sits (1/(1-S) with at least 3 features at it, and their count):",
        "",
    ]
    for lab in labels:
        where = [
            f"{x:.4g} ({c})"
            for x, c in zip(res["inv_density"], res["near_fraction_counts"][lab], strict=True)
            if c >= 3
        ]
        lines.append(f"- {lab}: " + (", ".join(where) if where else "nowhere"))
    # Is the 2/3 pile a cluster or a slice of a smear? Compare it with an even spread over [0.55, 0.78].
    lo, hi = 0.55, 0.78
    mid = [v for ds in res["feature_dimensionality"] for v in ds if lo <= v <= hi]
    at = sum(abs(v - 2 / 3) < res["tolerance"] for v in mid)
    expect = len(mid) * 2 * res["tolerance"] / (hi - lo)
    lines += [
        "",
        f"Of the {len(mid)} features with D_i in [{lo}, {hi}], {at} lie within {res['tolerance']} of 2/3, where an "
        f"even spread over that range would put {expect:.0f}: the 2/3 pile stands out of a spread of values "
        "between 1/2 and 3/4 rather than holding every feature there, unlike the 1/2 plateau, where every "
        "represented feature of a model sits at 1/2.",
        "",
        "![feature dimensionality](interp_superposition_dims.png)",
        "",
    ]
    return lines


TRAINER = "batched, hand-written gradient, per-instance Xavier init (commit 87260c8)"
"""Recorded with each run: results made before that commit used the stacked Xavier init."""


def run_superposition(quick: bool) -> None:
    start = time.perf_counter()
    steps = 1000 if quick else 2000
    res: dict[str, Any] = {"env": _env(), "steps": steps, "trainer": TRAINER}
    res["phase_diagram"] = phase_diagram(steps, 6 if quick else 12)
    res["geometry"] = geometry(steps)
    res["dimensionality"] = dimensionality(80, 10, steps, 8 if quick else 16)
    res["seconds"] = time.perf_counter() - start
    res["cpu_seconds"] = time.process_time()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "interp_superposition.json").write_text(json.dumps(res, indent=1))
    _plot_superposition(res)
    (RESULTS / "interp_superposition.md").write_text(_md_superposition(res))


def _plot_superposition(res: dict[str, Any]) -> None:
    fig = plt.figure(figsize=(16, 9))
    pd = res["phase_diagram"]
    ax = fig.add_subplot(2, 3, 1)
    ax.imshow(
        torch.tensor(pd["extra_feature"]),
        origin="upper",
        cmap=matplotlib.colors.ListedColormap(["#ddd", "#4a4", "#c33"]),
        vmin=0,
        vmax=2,
        aspect="auto",
    )
    ax.set_xticks(range(len(pd["relative_importance"])), [f"{v:.2g}" for v in pd["relative_importance"]], rotation=60)
    ax.set_yticks(range(len(pd["density"])), [f"{v:.2g}" for v in pd["density"]])
    ax.set_xlabel("relative importance of feature 2")
    ax.set_ylabel("feature density 1 - S")
    ax.set_title("n=2, m=1: grey not represented, green dedicated, red superposed", fontsize=9)
    geo = res["geometry"]
    for row, name in enumerate(("relu", "linear")):
        ax = fig.add_subplot(2, 3, 2 + 3 * row if row else 2)
        for k, (s, W) in enumerate(zip(geo["sparsity"], geo[name]["W"], strict=True)):
            w = torch.tensor(W)
            for i in range(w.shape[1]):
                ax.plot([3 * k, 3 * k + float(w[0, i])], [0, float(w[1, i])], color=plt.get_cmap("viridis")(i / 4))
            ax.text(3 * k, -1.6, f"S={s:g}", ha="center", fontsize=7)
        ax.set_ylim(-1.8, 1.4)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(f"{name}: columns W_i of W (n=5, m=2, importance {geo['decay']}^i)", fontsize=9)
    dim = res["dimensionality"]
    ax = fig.add_subplot(2, 3, 3)
    inv = [1 / d for d in dim["density"]]
    ax.plot(inv, dim["dimensions_per_feature"], "k-", label="D* = m / ||W||_F^2")
    for x, ds in zip(inv, dim["feature_dimensionality"], strict=True):
        ax.scatter([x] * len(ds), ds, s=6, alpha=0.4, color="tab:blue")
    for label, f in FRACTIONS.items():
        ax.axhline(f, color="grey", lw=0.5, ls=":")
        ax.text(inv[-1] * 1.1, f, label, fontsize=7, va="center")
    ax.set_xscale("log")
    ax.set_xlabel("1 / (1 - S)")
    ax.set_ylabel("dimensions per feature")
    ax.set_title(f"n={dim['n']}, m={dim['m']}, uniform importance", fontsize=9)
    ax = fig.add_subplot(2, 3, 6)
    all_d = [v for ds in dim["feature_dimensionality"] for v in ds]
    ax.hist(all_d, bins=60, range=(0, 1.05), color="tab:blue")
    for f in FRACTIONS.values():
        ax.axvline(f, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("feature dimensionality D_i (represented features, all densities)")
    ax = fig.add_subplot(2, 3, 4)
    for name, style in (("relu", "-o"), ("linear", "--s")):
        ax.plot(geo["sparsity"], geo[name]["represented"], style, label=f"{name}: features with ||W_i|| > 0.5")
    ax.axhline(2, color="grey", lw=0.5)
    ax.set_xlabel("sparsity S (n=5, m=2)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "interp_superposition.png", dpi=110)
    plt.close(fig)


def _md_superposition(res: dict[str, Any]) -> str:
    geo, dim, pd = res["geometry"], res["dimensionality"], res["phase_diagram"]
    lines = [
        "# Toy models of superposition (Elhage et al. 2022), reproduced on a CPU",
        "",
        f"Wall time {res['seconds']:.0f} s, process CPU {res.get('cpu_seconds', float('nan')):.0f} s "
        f"({res['env']}); `OMP_NUM_THREADS=1 .venv/bin/python bench/interp_toys.py --part superposition`.",
        f"{res.get('steps')} Adam steps per model with cosine decay; every setting trained from "
        f"{pd.get('restarts')} (phase diagram), {geo.get('restarts')} (n=5) or 2 (n=80) initialisations,"
        " keeping the one with the lowest loss on a shared evaluation batch, as the paper does.",
        "The figures are seeded runs (seed 0), counts of features, not measurements with sampling error.",
        "Trainer: "
        + res.get(
            "trainer",
            "the one before commit 87260c8 (autograd; Xavier init of the stacked (I, m, n) tensor, whose scale "
            "shrinks with the instance count; two uniform draws per feature entry). The sections above the "
            "feature-dimensionality one were not rerun with the new trainer.",
        ),
        "",
        f"## n=5 features in m=2 dimensions, importance {geo.get('decay')}^i",
        "",
        "| S | ReLU: represented | ReLU: D_i of represented | ReLU: antipodal pairs "
        "| linear: represented | linear: max interference |",
        "|---|---|---|---|---|---|",
    ]
    for k, s in enumerate(geo["sparsity"]):
        r, li = geo["relu"], geo["linear"]
        lines.append(
            f"| {s:g} | {r['represented'][k]} | {r['dimensionality'][k]} "
            f"| {r['antipodal_pairs'][k]} "
            f"| {li['represented'][k]} | {li['max_superposition_represented'][k]:.2f} |"
        )
    pent = [
        s
        for s, n, d in zip(geo["sparsity"], geo["relu"]["represented"], geo["relu"]["dimensionality"], strict=True)
        if n == 5 and all(abs(v - 0.4) < 0.03 for v in d)
    ]
    lines += ["", f"ReLU pentagon (5 features, every D_i within 0.03 of 2/5) at S = {pent}."]
    counts = torch.tensor(pd["extra_feature"])
    lines += [
        "",
        "## Phase diagram, n=2 in m=1 (rows: density 1 - S from 1 to 0.01; columns: relative importance 0.1 to 10)",
        "",
        "0 = extra feature not represented, 1 = dedicated dimension, 2 = superposed (antipodal pair).",
        "",
        "```",
        *(
            " ".join(str(int(v)) for v in row) + f"   density {d:.3g}"
            for row, d in zip(counts, pd["density"], strict=True)
        ),
        "```",
        "",
        f"## Dimensionality, n={dim['n']} in m={dim['m']}, uniform importance",
        "",
        "| density 1 - S | represented | D* = m / ‖W‖_F² |",
        "|---|---|---|",
        *(
            f"| {d:.3g} | {r} | {ds:.3f} |"
            for d, r, ds in zip(dim["density"], dim["represented"], dim["dimensions_per_feature"], strict=True)
        ),
        "",
        "Represented features (all densities) whose D_i lies within 0.03 of a fraction, "
        f"of {dim['represented_total']}: " + ", ".join(f"{k}: {v}" for k, v in dim["near_fraction_counts"].items()),
        "",
        "![superposition](interp_superposition.png)",
        "",
    ]
    dims = RESULTS / "interp_superposition_dims.json"
    if dims.exists():
        lines += _md_dims(json.loads(dims.read_text()))
    return "\n".join(lines)


def _pack(row: torch.Tensor) -> str:
    bits = "".join("1" if b else "0" for b in row.tolist())
    return f"{int(bits, 2):x}"


SERIES = ("restricted_contrast", "restricted_loss", "excluded_loss", "weight_norm", "train_loss", "test_loss")


def _grok_seed(seed: int, steps: int | None, p: int | None, run_dir: Path | None) -> tuple[dict[str, Any], Any]:
    """One seed: train (or load the run saved in ``run_dir``), measure, date emergence and the leads."""
    overrides: dict[str, Any] = {k: v for k, v in (("steps", steps), ("p", p)) if v is not None}
    saved = None if run_dir is None else run_dir / f"grokking_seed{seed}_{overrides}.pt"
    cpu0 = time.process_time()
    if saved is not None and saved.exists():
        run = torch.load(saved, weights_only=False)
    else:
        run = grokking_recipe(seed=seed, **overrides)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            torch.save(run, saved)
    m = progress_measures(run)
    e = detect_emergence(m.steps, m.test_correct, threshold=0.5, n_boot=1000)
    series = {k: getattr(m, k) for k in SERIES if getattr(m, k) is not None}
    leads = leading_indicators(m.steps, series, m.test_correct, n_boot=1000)
    memorised = next((s for s, a in zip(m.steps, m.train_acc, strict=True) if a > 0.99), None)
    res = {
        "seed": seed,
        "p": run.model.p,
        "train_seconds": run.seconds,
        "cpu_seconds": time.process_time() - cpu0,
        "n_test": int(run.test.numel()),
        "key_freqs": m.key_freqs,
        "train_acc_above_0.99_at": memorised,
        "emergence": {
            "threshold": e.threshold,
            "step": e.step,
            "ci_low": e.ci_low,
            "ci_high": e.ci_high,
            "emerged_share": e.emerged_share,
        },
        "final_test_acc": {
            "value": e.accuracy[-1].value,
            "ci_low": e.accuracy[-1].ci_low,
            "ci_high": e.accuracy[-1].ci_high,
        },
        "accuracy_change_point": {"step": leads.accuracy_step, "ci": [leads.accuracy_low, leads.accuracy_high]},
        "indicators": [
            {
                "name": r.name,
                "change_point": r.step,
                "ci": [r.ci_low, r.ci_high],
                "lead": r.lead,
                "lead_ci": [r.lead_low, r.lead_high],
                "precedes": r.precedes,
            }
            for r in leads.indicators
        ],
        "measures": m.as_dict(),
    }
    return res, m


def run_grokking(steps: int | None, p: int | None, seeds: list[int], run_dir: Path | None) -> None:
    """Every seed in ``seeds``; the first one's run is the cached run the tests read."""
    start = time.perf_counter()
    runs = []
    for i, seed in enumerate(seeds):
        res, m = _grok_seed(seed, steps, p, run_dir)
        runs.append(res)
        if i == 0:
            cached = {k: res[k] for k in ("n_test", "key_freqs", "emergence", "measures")}
            cached["recipe"] = {"p": p, "steps": steps, "seed": seed, "defaults": "grokking_recipe signature"}
            cached["test_correct_hex"] = [_pack(r) for r in m.test_correct]
            CACHED.parent.mkdir(exist_ok=True)
            CACHED.write_text(json.dumps(cached, separators=(",", ":")))
    out = {
        "env": _env(),
        "recipe": {"p": p, "steps": steps, "defaults": "grokking_recipe signature"},
        "seeds": seeds,
        "seconds": time.perf_counter() - start,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "interp_grokking.json").write_text(json.dumps(out, indent=1))
    _plot_grokking(runs[0])
    (RESULTS / "interp_grokking.md").write_text(_md_grokking(out))


def _plot_grokking(res: dict[str, Any]) -> None:
    m = res["measures"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    axes[0].plot(m["steps"], m["train_acc"], label="train accuracy")
    axes[0].plot(m["steps"], m["test_acc"], label="test accuracy")
    e = res["emergence"]
    if e["step"] is not None:
        axes[0].axvline(e["step"], color="k", ls="--", lw=0.8, label="emergence (test acc. > 0.5, 95%)")
        axes[0].axvspan(e["ci_low"], e["ci_high"], color="k", alpha=0.1)
    axes[0].axvline(res["accuracy_change_point"]["step"], color="grey", lw=0.8, label="test acc. change point")
    axes[0].legend(fontsize=8)
    for key in ("train_loss", "test_loss", "restricted_loss", "excluded_loss"):
        axes[1].plot(m["steps"], m[key], label=key.replace("_", " "))
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    axes[2].plot(m["steps"], m["weight_norm"], color="tab:purple", label="weight norm (sum of squares)")
    axes[2].legend(fontsize=8, loc="upper left")
    if m.get("restricted_contrast") is not None:
        twin = axes[2].twinx()
        twin.plot(m["steps"], m["restricted_contrast"], color="tab:green", label="restricted contrast (key - non-key)")
        twin.legend(fontsize=8, loc="upper right")
    for ax in axes:
        ax.set_xlabel("step")
    fig.suptitle(f"Grokking a + b mod {res['p']}, seed {res['seed']}: key frequencies {m['key_freqs']}")
    fig.tight_layout()
    fig.savefig(RESULTS / "interp_grokking.png", dpi=110)
    plt.close(fig)


def _md_grokking(out: dict[str, Any]) -> str:
    rec = out["recipe"]
    lines = [
        f"# Grokking a + b mod {out['runs'][0]['p']} (Power et al. 2022; Nanda et al. 2023)",
        "",
        f"Written by `OMP_NUM_THREADS=1 .venv/bin/python bench/interp_toys.py --part grokking "
        f"--seeds {' '.join(map(str, out['seeds']))}` with `grokking_recipe` defaults "
        f"(overrides p={rec['p']}, steps={rec['steps']}); {out['seconds']:.0f} s wall in all ({out['env']}).",
        "",
        "Every interval below is conditional on one training run (it resamples that run's test pairs or "
        "its measures' residuals); the seed-to-seed spread is the list of seeds itself.",
        "",
        "Emergence step by seed: "
        + ", ".join(f"seed {r['seed']}: {r['emergence']['step']}" for r in out["runs"])
        + "; restricted_contrast's lead by seed: "
        + ", ".join(
            f"seed {r['seed']}: {i['lead']} [{i['lead_ci'][0]}, {i['lead_ci'][1]}]"
            for r in out["runs"]
            for i in r["indicators"]
            if i["name"] == "restricted_contrast"
        )
        + ".",
    ]
    for res in out["runs"]:
        e, f, acp = res["emergence"], res["final_test_acc"], res["accuracy_change_point"]
        lines += [
            "",
            f"## Seed {res['seed']} (training {res['train_seconds']:.0f} s wall, "
            f"measuring {res['cpu_seconds']:.0f} s CPU)",
            "",
            f"- Train accuracy above 0.99 from step {res['train_acc_above_0.99_at']}.",
            f"- Test accuracy emerges (first checkpoint from which its exact 95% lower bound stays above "
            f"{e['threshold']}) at step {e['step']}, 95% bootstrap interval over the {res['n_test']} test pairs "
            f"[{e['ci_low']}, {e['ci_high']}] (emerged in {e['emerged_share']:.0%} of resamples).",
            f"- Test accuracy's own least-squares change point: step {acp['step']} [{acp['ci'][0]}, {acp['ci'][1]}].",
            f"- Final test accuracy {f['value']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}].",
            f"- Key frequencies (final embedding, 80% of its Fourier norm): {res['key_freqs']}.",
            "",
            "| measure | change point [95%] | lead over test accuracy's change point [95%] | leads? |",
            "|---|---|---|---|",
            *(
                f"| {r['name']} | {r['change_point']} [{r['ci'][0]}, {r['ci'][1]}] "
                f"| {r['lead']} [{r['lead_ci'][0]}, {r['lead_ci'][1]}] | {'yes' if r['precedes'] else 'no'} |"
                for r in res["indicators"]
            ),
        ]
    lines += [
        "",
        "All change points are least-squares single breaks of a piecewise-constant fit (the same estimator for",
        "test accuracy and every measure); a smooth decline is dated at its middle, and a non-linear scale (a",
        "loss rather than an accuracy) shifts the date, so 'leads' means 'moved first on its own scale'. A",
        "measure leads when its lead's interval lies above 0. train_loss leads trivially (memorisation);",
        "restricted_contrast (restricted loss with the key frequencies minus with random non-key sets) is",
        "the measure that separates a Fourier circuit from a memoriser. With the recipe's raised learning",
        "rate, slingshot spikes (Thilak et al. 2022) make the losses and the weight norm jump every",
        "~1,300 steps, which the one-break fit can date instead of the trend.",
        "",
        "![grokking](interp_grokking.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("superposition", "dims", "grokking", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="smaller superposition grids and fewer steps")
    parser.add_argument("--steps", type=int, default=None, help="grokking steps (default: the recipe's)")
    parser.add_argument("--p", type=int, default=None, help="grokking modulus (default: the recipe's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="grokking seeds (first: cached)")
    parser.add_argument("--run-dir", type=Path, default=None, help="save/reuse trained grokking runs here")
    args = parser.parse_args()
    if args.part in ("superposition", "all"):
        run_superposition(args.quick)
    if args.part in ("dims", "all"):
        run_dims(args.quick)
    if args.part in ("grokking", "all"):
        run_grokking(args.steps, args.p, args.seeds, args.run_dir)


if __name__ == "__main__":
    main()
