"""``mlsafety overoptimization``: reward over-optimisation in the exact simulator or on a language model.

Gao, Schulman & Hilton (2022, "Scaling Laws for Reward Model Overoptimization"): ``sim`` runs the
exact best-of-n simulator over seeds, ``lm`` the best-of-n experiment on a causal language model
from samples drawn once and cached in ``--out``; both write a plot, a JSON file and print a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from mlsafety.cli._common import friendly, out_console


@click.group("overoptimization")
def overopt_group() -> None:
    """Reward over-optimisation (proxy gaming): the exact simulator, or best-of-n on a language model."""


def _positive(name: str, value: float) -> None:
    from mlsafety.core import InputError

    if not value >= 1:
        raise InputError(f"{name} must be at least 1, got {value}")


def _ns(n_max: int) -> tuple[int, ...]:
    from mlsafety.monitoring.proxy_gaming import lm as pg

    return pg.powers_of_two(n_max)


@overopt_group.command("sim")
@click.option("--seeds", default=8, show_default=True, type=int, help="Worlds (and proxies) drawn, one per seed.")
@click.option("--labels", default=64, show_default=True, type=int, help="Gold labels each proxy is trained on (N).")
@click.option("--n-max", default=256, show_default=True, type=int, help="Largest n of best-of-n.")
@click.option("--n-boot", default=1000, show_default=True, type=int, help="Bootstrap resamples (over seeds).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the plot and results.")
@friendly
def overopt_sim(seeds: int, labels: int, n_max: int, n_boot: int, out: str) -> None:
    """Exact best-of-n in the simulator: gold and proxy reward against d = sqrt(KL), the fit d (alpha - beta d)."""
    import torch

    from mlsafety.core import InputError
    from mlsafety.monitoring.proxy_gaming import (
        best_of_n_exact,
        fit_scaling_law,
        make_world,
        observed_peak,
        train_proxy,
    )

    _positive("--seeds", seeds)
    _positive("--n-max", n_max)
    if labels < 2:
        raise InputError(f"--labels must be at least 2, got {labels}")
    ns = _ns(n_max)
    curves = []
    for s in range(seeds):
        world = make_world(seed=s)
        proxy = train_proxy(world, labels, seed=s)
        curves.append(best_of_n_exact(world.pi0, proxy, world.gold, list(ns)))
    gold = torch.stack([c.gold for c in curves])
    prox = torch.stack([c.proxy for c in curves])
    d = curves[0].d
    fit = fit_scaling_law(d, gold, "bon", True, n_boot) if len(ns) >= 3 else None
    peak = observed_peak(d, gold, n_boot) if seeds > 1 else None
    result: dict[str, Any] = {"ns": list(ns), "d": d.tolist(), "gold": gold.mean(0).tolist(),
                              "proxy": prox.mean(0).tolist(), "seeds": seeds, "labels": labels}  # fmt: skip
    if fit is not None:
        result["fit"] = {
            "alpha": list(fit.alpha)[:3],
            "beta": list(fit.beta)[:3],
            "r2": fit.r2,
            "peak_d": list(fit.peak)[:3],
        }
    if peak is not None:
        result["observed_peak_d"] = list(peak.d)[:3]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sim.json").write_text(json.dumps(result, indent=1))
    _plot(folder / "sim.png", d, gold.mean(0), prox.mean(0), None if fit is None else (fit.alpha.value, fit.beta.value))
    _print_curve(ns, d, gold.mean(0).tolist(), prox.mean(0).tolist())
    out_console.print(f"wrote {folder / 'sim.json'} and {folder / 'sim.png'}")


@overopt_group.command("lm")
@click.option("--model", default="smollm2-135m", show_default=True, help="A causal LM: zoo name or saved folder.")
@click.option("--reward", required=True, help="The proxy reward optimised: path/to/file.py:factory.")
@click.option("--gold", required=True, help="The gold reward: path/to/file.py:factory.")
@click.option("--n-max", default=256, show_default=True, type=int, help="Largest n of best-of-n (samples per prompt).")
@click.option("--prompts", default=16, show_default=True, type=int, help="mr review openings continued.")
@click.option("--max-new-tokens", default=16, show_default=True, type=int, help="Tokens per continuation.")
@click.option("--temperature", default=1.0, show_default=True, type=float, help="Sampling temperature (> 0).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the samples and the bootstrap.")
@click.option("--n-boot", default=1000, show_default=True, type=int, help="Bootstrap resamples (over prompts).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder: samples cache, plot, results.")
@friendly
def overopt_lm(model: str, reward: str, gold: str, n_max: int, prompts: int, max_new_tokens: int,
               temperature: float, seed: int, n_boot: int, out: str) -> None:  # fmt: skip
    """Best-of-n on a language model: samples drawn once (cached in --out), scored once per reward."""
    from mlsafety.audit import load_scorer, resolve_language_model
    from mlsafety.core import InputError
    from mlsafety.monitoring.proxy_gaming import lm as pg
    from mlsafety.monitoring.proxy_gaming.scorers import check_scorers

    _positive("--n-max", n_max)
    if prompts < 1:
        raise InputError(f"the prompt set is empty: --prompts must be at least 1, got {prompts}")
    if not temperature > 0:
        raise InputError(f"--temperature must be > 0 (best-of-n needs distinct samples), got {temperature}")
    proxy_fn, gold_fn = load_scorer(reward, "--reward"), load_scorer(gold, "--gold")
    texts = pg.review_openings(prompts)
    check_scorers({"proxy": proxy_fn, "gold": gold_fn}, texts[:2])
    lm = resolve_language_model(model)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    samples = pg.sample_continuations(lm, texts, n_max, max_new_tokens, temperature, seed, 64, model,
                                      cache=folder / "samples.json")  # fmt: skip
    proxy = pg.score_samples(samples, proxy_fn)
    gold_scores = pg.score_samples(samples, gold_fn)
    curve = pg.overoptimization_curve(proxy, gold_scores, _ns(n_max), n_boot, seed)
    result = pg.curve_summary(curve, proxy, {"gold": gold_scores}, n_boot, seed)
    result["tokens_per_second"] = samples.tokens_per_second
    (folder / "results.json").write_text(json.dumps(result, indent=1))
    fit = result.get("fit")
    _plot(folder / "curve.png", curve.d, curve.gold_mean, curve.per_prompt_proxy.mean(0),
          None if fit is None else (fit["alpha"][0], fit["beta"][0]))  # fmt: skip
    _print_curve(curve.ns, curve.d, [e.value for e in curve.gold], [e.value for e in curve.proxy])
    peak = result["peak"]
    out_console.print(f"gold peak at n={peak['n']} (d={peak['d'][0]:.3f} [{peak['d'][1]:.3f}, {peak['d'][2]:.3f}]"
                      f"{'' if peak['interior'] else ', still rising at n-max'}); "
                      f"monitor alarm at n={result['monitor']['alarm_n']}")  # fmt: skip
    out_console.print(
        f"wrote {folder / 'results.json'} and {folder / 'curve.png'} (samples: {folder / 'samples.json'})"
    )


def _print_curve(ns: Any, d: Any, gold: list[float], proxy: list[float]) -> None:
    table = Table("n", "d = sqrt(KL)", "gold", "proxy", box=None)
    for i, n in enumerate(ns):
        table.add_row(str(int(n)), f"{float(d[i]):.3f}", f"{gold[i]:+.3f}", f"{proxy[i]:+.3f}")
    out_console.print(table)


def _plot(path: Path, d: Any, gold: Any, proxy: Any, fit: tuple[float, float] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    x = torch.as_tensor(d, dtype=torch.float64)
    ax.plot(x.numpy(), torch.as_tensor(gold).numpy(), "-o", markersize=3, label="gold")
    ax.plot(x.numpy(), torch.as_tensor(proxy).numpy(), "--o", markersize=3, label="proxy")
    if fit is not None:
        a, b = fit
        grid = torch.linspace(0, float(x.max()), 100, dtype=torch.float64)
        ax.plot(grid.numpy(), (grid * (a - b * grid)).numpy(), ":", color="black", label="fit d(a - b d)")
    ax.set_xlabel("d = sqrt(KL)")
    ax.set_ylabel("reward (standardised)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
