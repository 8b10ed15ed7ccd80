"""``mlsafety overoptimization``: reward over-optimisation in the exact simulator or on a language model.

Gao, Schulman & Hilton (2022, "Scaling Laws for Reward Model Overoptimization"): ``sim`` runs the
simulator over seeds (exact best-of-n, the exact KL-regularised optimum over ``--lambdas``, or
REINFORCE), ``lm`` the best-of-n experiment on a causal language model
from samples drawn once and cached in ``--out``; both write a plot, a JSON file and print a table.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from mlsafety.cli._common import MAX_BOOT, NonEmptyPath, Seed, friendly, out_console, print_wrote


@click.group("overoptimization")
def overopt_group() -> None:
    """Reward over-optimisation (proxy gaming): the exact simulator, or best-of-n on a language model."""


def _positive(name: str, value: float) -> None:
    from mlsafety.core import InputError

    if not value >= 1:
        raise InputError(f"{name} must be at least 1, got {value}")


MAX_SEEDS = 1000
MAX_LABELS = 10**7
MAX_WIDTH = 10_000
MAX_STEPS = 100_000
MAX_SAMPLES = 2**20
"""Upper bounds of the counts: 10**20 seeds or REINFORCE steps ran until killed, and 10**20 labels, features,
resamples or samples failed with a traceback (an int64 overflow, or a matrix of width**2 floats)."""


def _at_most(name: str, value: int, cap: int) -> None:
    from mlsafety.core import InputError

    if value > cap:
        raise InputError(f"{name} must be at most {cap:_}, got {value}")


def _out_folder(out: str, what: str) -> Path:
    """``--out`` as a folder where ``what`` can be written, checked before any work (under a file or in a
    read-only folder the write failed with a traceback at the end; '' wrote into the working folder)."""
    from mlsafety.core import check_output_path

    folder = Path(out)
    check_output_path(folder / "results.json", what=what, flag="--out", example="overopt")
    return folder


def _n_max(value: int) -> tuple[int, ...]:
    """1, 2, 4, ..., --n-max, refused up front (before any sampling) when the fit would get < 3 points."""
    from mlsafety.core import InputError
    from mlsafety.monitoring.proxy_gaming import lm as pg

    if not value >= 4:
        raise InputError(f"--n-max must be at least 4 (the fit needs n = 1, 2, 4), got {value}")
    return pg.powers_of_two(value)


def _lambdas(text: str) -> list[float]:
    from mlsafety.core import InputError

    try:
        lams = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--lambdas must be comma-separated numbers, got {text!r}") from None
    if len(lams) < 3 or not all(0 < v < math.inf for v in lams):  # inf is the base policy, always included
        raise InputError(
            f"--lambdas needs at least 3 values, each finite and > 0 (the KL penalty's weight), got {text!r}"
        )
    return sorted(set(lams), reverse=True)


def _triples(values: Any) -> list[tuple[float, float, float]]:
    """Mean over seeds (rows) with its 95% t interval, per column."""
    from mlsafety.monitoring.proxy_gaming import mean_interval

    m, lo, hi = mean_interval(values)
    return [(float(a), float(b), float(c)) for a, b, c in zip(m, lo, hi, strict=True)]


@overopt_group.command("sim")
@click.option("--optimiser", default="bon", show_default=True, type=click.Choice(["bon", "tilt", "reinforce"]),
              help="bon: exact best-of-n; tilt: the exact KL-regularised optimum pi0 exp(r / lambda); "
                   "reinforce: REINFORCE on a features policy.")  # fmt: skip
@click.option("--seeds", default=8, show_default=True, type=int, help="Proxies drawn, one per seed.")
@click.option("--labels", default=64, show_default=True, type=int, help="Gold labels each proxy is trained on (N).")
@click.option(
    "--width",
    default=0,
    show_default=True,
    type=int,
    help="Random ReLU features of the proxy beyond the linear ones (its size; 0: a linear proxy).",
)
@click.option("--n-max", default=256, show_default=True, type=int, help="Largest n of best-of-n (bon).")
@click.option("--lambdas", default="10,5,2,1,0.5,0.3,0.2,0.15,0.1,0.07,0.05", show_default=True,
              help="KL-penalty weights swept (tilt), comma-separated, each > 0.")  # fmt: skip
@click.option("--steps", default=300, show_default=True, type=int, help="REINFORCE steps (reinforce).")
@click.option("--n-boot", default=1000, show_default=True, type=int, help="Bootstrap resamples (over seeds).")
@click.option("--out", required=True, type=NonEmptyPath(file_okay=False), help="Folder for the plot and results.")
@friendly
def overopt_sim(optimiser: str, seeds: int, labels: int, width: int, n_max: int, lambdas: str, steps: int,
                n_boot: int, out: str) -> None:  # fmt: skip
    """The exact simulator: gold and proxy reward against d = sqrt(KL) over seeds, fitted with both forms."""
    import torch

    from mlsafety.audit import curve_png
    from mlsafety.core import InputError
    from mlsafety.monitoring.proxy_gaming import (
        best_of_n_exact,
        fit_scaling_law,
        kl_regularised,
        make_world,
        observed_peak,
        reinforce,
        train_proxy,
    )

    if seeds < 2:  # one seed gave zero-width intervals and NaN fits
        raise InputError(f"--seeds must be at least 2 (the intervals are over seeds), got {seeds}")
    if labels < 2:
        raise InputError(f"--labels must be at least 2, got {labels}")
    if width < 0:
        raise InputError(f"--width must be >= 0, got {width}")
    for name, value, cap in (("--seeds", seeds, MAX_SEEDS), ("--labels", labels, MAX_LABELS),
                             ("--width", width, MAX_WIDTH), ("--n-boot", n_boot, MAX_BOOT)):  # fmt: skip
        _at_most(name, value, cap)
    ns = _n_max(n_max) if optimiser == "bon" else ()
    lams = _lambdas(lambdas) if optimiser == "tilt" else []
    if optimiser == "reinforce":
        _positive("--steps", steps)
        _at_most("--steps", steps, MAX_STEPS)
    _positive("--n-boot", n_boot)  # refused before the seeds run, not by the fit after them
    folder = _out_folder(out, "the plot and results")
    world = make_world()
    gold_rows, proxy_rows, d_rows = [], [], []
    for s in range(seeds):
        proxy = train_proxy(world, labels, width=width, seed=s)
        if optimiser == "bon":
            c: Any = best_of_n_exact(world.pi0, proxy, world.gold, list(ns))
        elif optimiser == "tilt":
            c = kl_regularised(world.pi0, proxy, world.gold, [float("inf"), *lams])
        else:
            c = reinforce(world.pi0, proxy, world.gold, features=world.features, steps=steps, lr=0.003, seed=s)
        gold_rows.append(c.gold)
        proxy_rows.append(c.proxy)
        d_rows.append(c.d)
    gold, prox, dd = torch.stack(gold_rows), torch.stack(proxy_rows), torch.stack(d_rows)
    d = dd.mean(0)
    fits = {form: fit_scaling_law(dd, gold, form, True, n_boot) for form in ("bon", "rl")}
    peak = observed_peak(dd, gold, n_boot)
    gold_t, proxy_t = _triples(gold), _triples(prox)
    result: dict[str, Any] = {"optimiser": optimiser, "seeds": seeds, "labels": labels, "width": width,
                              "d": d.tolist(), "gold": [list(t) for t in gold_t],
                              "proxy": [list(t) for t in proxy_t]}  # fmt: skip
    if optimiser == "bon":
        result["ns"] = list(ns)
    elif optimiser == "tilt":
        result["lambdas"] = ["inf", *lams]
    else:
        result["steps"] = c.step.tolist()
    result["fits"] = {form: {"alpha": list(f.alpha)[:3], "beta": list(f.beta)[:3], "r2": f.r2,
                             "peak_d": list(f.peak)[:3]} for form, f in fits.items()}  # fmt: skip
    result["fit"] = result["fits"]["bon" if optimiser == "bon" else "rl"]
    result["observed_peak_d"] = list(peak.d)[:3]
    result["censored_seeds"] = peak.censored
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sim.json").write_text(json.dumps(result, indent=1))
    (folder / "sim.png").write_bytes(curve_png(d, gold_t, proxy_t, (fits["bon"].alpha.value, fits["bon"].beta.value)))
    _print_curve(result.get("ns") or result.get("lambdas") or result["steps"], d, [t[0] for t in gold_t],
                 [t[0] for t in proxy_t], {"bon": "n", "tilt": "lambda", "reinforce": "step"}[optimiser])  # fmt: skip
    print_wrote(f"wrote {folder / 'sim.json'} and {folder / 'sim.png'}")


@overopt_group.command("lm")
@click.option("--model", default="smollm2-135m", show_default=True, help="A causal LM: zoo name or saved folder.")
@click.option("--reward", required=True, help="The proxy reward optimised: path/to/file.py:factory.")
@click.option("--gold", required=True, help="The gold reward: path/to/file.py:factory.")
@click.option(
    "--trusted",
    multiple=True,
    help="A trusted proxy watched by the proxy-gaming monitor: "
    "path/to/file.py:factory; repeatable. Without one no monitor runs (the gold would be circular).",
)
@click.option("--n-max", default=256, show_default=True, type=int, help="Largest n of best-of-n (samples per prompt).")
@click.option("--prompts", default=16, show_default=True, type=int, help="mr review openings continued.")
@click.option("--max-new-tokens", default=16, show_default=True, type=int, help="Tokens per continuation.")
@click.option("--temperature", default=1.0, show_default=True, type=float, help="Sampling temperature (> 0).")
@click.option("--seed", default=0, show_default=True, type=Seed(), help="Seed of the samples and the bootstrap.")
@click.option("--n-boot", default=1000, show_default=True, type=int, help="Bootstrap resamples (over prompts).")
@click.option("--out", required=True, type=NonEmptyPath(file_okay=False), help="Folder: samples cache, plot, results.")
@friendly
def overopt_lm(model: str, reward: str, gold: str, trusted: tuple[str, ...], n_max: int, prompts: int,
               max_new_tokens: int, temperature: float, seed: int, n_boot: int, out: str) -> None:  # fmt: skip
    """Best-of-n on a language model: samples drawn once (cached in --out), scored once per reward."""
    from mlsafety.audit import curve_png, load_scorer, resolve_language_model
    from mlsafety.core import InputError
    from mlsafety.monitoring.proxy_gaming import lm as pg
    from mlsafety.monitoring.proxy_gaming.scorers import check_scorers

    ns = _n_max(n_max)
    _at_most("--n-max", n_max, MAX_SAMPLES)
    if prompts < 1:
        raise InputError(f"the prompt set is empty: --prompts must be at least 1, got {prompts}")
    if prompts < 2:  # one prompt gave zero-width intervals, and the monitor refused it only after the sampling
        raise InputError(f"--prompts must be at least 2 (intervals and the monitor are over prompts), got {prompts}")
    if not 0 < temperature < math.inf:
        raise InputError(f"--temperature must be finite and > 0 (best-of-n needs distinct samples), got {temperature}")
    _positive("--max-new-tokens", max_new_tokens)  # both refused before any sampling, not after it
    _positive("--n-boot", n_boot)
    _at_most("--n-boot", n_boot, MAX_BOOT)
    folder = _out_folder(out, "the samples, plot and results")
    proxy_fn, gold_fn = load_scorer(reward, "--reward"), load_scorer(gold, "--gold")
    trusted_fns = {f"trusted {i + 1} ({spec})": load_scorer(spec, "--trusted") for i, spec in enumerate(trusted)}
    texts = pg.review_openings(prompts)
    check_scorers({"proxy": proxy_fn, "gold": gold_fn, **trusted_fns}, None)  # input types only: load_scorer probed
    lm = resolve_language_model(model)
    made = next((p for p in (*reversed(folder.parents), folder) if not p.exists()), None)  # the first folder made
    folder.mkdir(parents=True, exist_ok=True)
    try:
        samples = pg.sample_continuations(lm, texts, n_max, max_new_tokens, temperature, seed, 64, model,
                                          cache=folder / "samples.json")  # fmt: skip
    except InputError:  # refused before the first sample (prompt plus --max-new-tokens too long): no empty folder
        if made is not None and not any(p.is_file() for p in made.rglob("*")):
            shutil.rmtree(made)
        raise
    proxy = pg.score_samples(samples, proxy_fn)
    gold_scores = pg.score_samples(samples, gold_fn)
    curve = pg.overoptimization_curve(proxy, gold_scores, ns, n_boot, seed)
    watched = {name: pg.score_samples(samples, fn) for name, fn in trusted_fns.items()} or None
    result = pg.curve_summary(curve, proxy, watched, n_boot, seed)
    monitor = result.get("monitor")
    result["tokens_per_second"] = samples.tokens_per_second
    (folder / "results.json").write_text(json.dumps(result, indent=1))
    fit = result.get("fit")
    (folder / "curve.png").write_bytes(curve_png(curve.d, [tuple(e)[:3] for e in curve.gold],
                                                 [tuple(e)[:3] for e in curve.proxy],
                                                 None if fit is None else (fit["alpha"][0], fit["beta"][0]),
                                                 None if monitor is None else monitor["alarm_d"]))  # fmt: skip
    _print_curve(curve.ns, curve.d, [e.value for e in curve.gold], [e.value for e in curve.proxy], "n")
    peak = result["peak"]
    out_console.print(f"gold peak at n={peak['n']} (d={peak['d'][0]:.3f} [{peak['d'][1]:.3f}, {peak['d'][2]:.3f}]"
                      f"{_after_peak(peak)}); {_monitor_said(monitor)}")  # fmt: skip
    print_wrote(f"wrote {folder / 'results.json'} and {folder / 'curve.png'} (samples: {folder / 'samples.json'})")


def _monitor_said(monitor: dict[str, Any] | None) -> str:
    """The monitor's outcome in words: where it alarmed, or that it never did up to --n-max."""
    if monitor is None:
        return "no monitor (give --trusted)"
    if monitor["alarm_n"] is None:
        return f"no monitor alarm up to n-max ({monitor['outcome']})"
    return f"monitor alarm at n={monitor['alarm_n']} ({monitor['outcome']})"


def _after_peak(peak: dict[str, Any]) -> str:
    """What the gold does after its peak: still rising, a real fall (beyond its interval), or flat."""
    if not peak["interior"]:
        return ", still rising at n-max"
    fall = peak["fall"]
    verdict = "falls after it" if peak["falls"] else "flat after it: the fall is within its interval"
    return f", {verdict}: {fall[0]:.3f} [{fall[1]:.3f}, {fall[2]:.3f}] by n-max"


def _print_curve(steps: Any, d: Any, gold: list[float], proxy: list[float], label: str) -> None:
    table = Table(label, "d = sqrt(KL)", "gold", "proxy", box=None)
    for i, n in enumerate(steps):
        table.add_row(str(n), f"{float(d[i]):.3f}", f"{gold[i]:+.3f}", f"{proxy[i]:+.3f}")
    out_console.print(table)
