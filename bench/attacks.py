"""Attacks side by side with the peers, in one process, on the same model and inputs.

1. PGD-10 speed on a CIFAR-shaped ResNet (random weights) and on the embedded digits model: ours
   (with and without early stopping) against a plain hand-written PyTorch loop, torchattacks' PGD
   and ART's PyTorch PGD, all at equal settings (eps, step size, steps, one random start).
   Medians over repetitions; robust accuracy of each.
2. Strength on the digits model: our APGD-CE and AutoAttack against torchattacks' at equal budgets
   (lower robust accuracy = stronger, more honest evaluation).
3. Peak memory of PGD-100 against PGD-10 (no graph growth), each in a fresh subprocess.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/attacks.py [--quick]``; writes
``bench/results/attacks.json`` and ``bench/results/attacks.md``. ``--hardening`` instead trains
PGD-AT and TRADES copies of the digits model and compares their robust accuracy with the shipped
one (``bench/results/attacks-hardening.{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import Normalize
from mlsafety.robustness.attacks import PGD, create
from mlsafety.zoo import load_dataset, load_model

RESULTS = Path(__file__).parent / "results"
Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _import_torchattacks() -> Any:
    """torchattacks, imported when a comparison needs it."""
    import torchattacks

    return torchattacks


# -- models ------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.skip(x))


class ResNet(nn.Module):
    """A CIFAR-shaped ResNet (3x32x32 inputs, 10 classes): stem, three stages of two blocks, linear head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.norm = Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        chans = [width, 2 * width, 4 * width]
        layers, cin = [], width
        for i, c in enumerate(chans):
            layers += [Block(cin, c, 1 if i == 0 else 2), Block(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(self.norm(x)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def resnet_setup(n: int, calibration_batch: int = 256) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ResNet()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights, but batch-norm statistics of the inputs, so answers vary with x
        model.train()
        for _ in range(5):
            model(torch.rand(calibration_batch, 3, 32, 32, generator=g))
    model.eval()
    x = torch.rand(n, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels = the model's own answers, so clean accuracy is 100%
    return model, x, y


def digits_setup(n: int | None = None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = load_model("digits-cnn")
    test = load_dataset("digits", "test")
    x, y = (test.x, test.y) if n is None else (test.x[:n], test.y[:n])
    return model, x, y


# -- PGD implementations ----------------------------------------------------------------------
def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """The loop everyone writes: random start, sign steps, clamp to the ball and the box."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1).detach()
    return x_adv


def pgd_contenders(eps: float, alpha: float, steps: int, n_classes: int, shape: tuple[int, ...]) -> dict[str, Attack]:
    torchattacks = _import_torchattacks()
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    def ours(early: bool) -> Attack:
        atk = PGD(eps=eps, steps=steps, step_size=alpha, early_stop=early, batch_size=4096)
        return lambda m, x, y: atk(m, x, y)

    def ta(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torchattacks.PGD(m, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)

    def art(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        clf = PyTorchClassifier(m, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=n_classes,
                                clip_values=(0.0, 1.0))  # fmt: skip
        atk = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps,
                                              num_random_init=1, batch_size=len(x), verbose=False)  # fmt: skip
        return torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))

    return {
        "mlsafety PGD (early stop)": ours(True),
        "mlsafety PGD (no early stop)": ours(False),
        "plain PyTorch loop": lambda m, x, y: plain_pgd(m, x, y, eps, alpha, steps),
        "torchattacks PGD": ta,
        "ART PGD (PyTorch)": art,
    }


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def time_pgd(setup: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
             reps: int) -> dict[str, Any]:  # fmt: skip
    alpha = 2.5 * eps / steps if setup == "digits" else 2 / 255
    contenders = pgd_contenders(eps, alpha, steps, 10, tuple(x.shape[1:]))
    times: dict[str, list[float]] = {k: [] for k in contenders}
    accs: dict[str, list[float]] = {k: [] for k in contenders}
    for rep in range(reps + 1):  # the first round warms up and is not timed
        for name, fn in contenders.items():
            torch.manual_seed(rep)
            t0 = time.perf_counter()
            x_adv = fn(model, x, y)
            dt = time.perf_counter() - t0
            if rep:
                times[name].append(dt)
                accs[name].append(robust_accuracy(model, x_adv, y))
    med = {k: statistics.median(v) for k, v in times.items()}
    plain, art = med["plain PyTorch loop"], med["ART PGD (PyTorch)"]
    return {
        "setup": setup, "n": len(x), "eps": eps, "step_size": alpha, "steps": steps, "reps": reps,
        "median_seconds": med,
        "robust_accuracy": {k: statistics.mean(v) for k, v in accs.items()},
        "time_vs_plain_loop": {k: v / plain for k, v in med.items()},
        "art_speedup_over": {k: art / v for k, v in med.items()},
    }  # fmt: skip


# -- equal settings ------------------------------------------------------------------------------
def equal_settings(steps: int = 10) -> dict[str, Any]:
    """PGD without random start: every implementation then walks the same path, so robust accuracy
    compares exactly (with random starts each library draws its own noise, and the figures differ
    by the luck of the draw)."""
    torchattacks = _import_torchattacks()
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    def plain_no_start(m: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
        x_adv = x.clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(m(x_adv), y), x_adv)
            x_adv = (x + (x_adv.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()
        return x_adv

    out: dict[str, Any] = {"steps": steps, "rows": []}
    for setup, (model, x, y), eps in (("resnet-cifar-shaped", resnet_setup(128), 8 / 255),
                                      ("digits", digits_setup(), 0.1)):  # fmt: skip
        alpha = 2.5 * eps / steps if setup == "digits" else 2 / 255
        ours = PGD(eps=eps, steps=steps, step_size=alpha, random_start=False, early_stop=False, batch_size=4096)
        ours_es = PGD(eps=eps, steps=steps, step_size=alpha, random_start=False, early_stop=True, batch_size=4096)
        clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
                                clip_values=(0.0, 1.0))  # fmt: skip
        art = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps,
                                              num_random_init=0, batch_size=len(x), verbose=False)  # fmt: skip
        advs = {
            "mlsafety PGD (early stop)": ours_es(model, x, y),
            "mlsafety PGD (no early stop)": ours(model, x, y),
            "plain PyTorch loop": plain_no_start(model, x, y, eps, alpha),
            "torchattacks PGD": torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y),
            "ART PGD (PyTorch)": torch.from_numpy(art.generate(x.numpy(), y=y.numpy())),
        }
        out["rows"].append({"setup": setup, "n": len(x), "eps": eps,
                            "robust_accuracy": {k: robust_accuracy(model, v, y) for k, v in advs.items()}})  # fmt: skip
    return out


def equal_markdown(res: dict[str, Any]) -> str:
    names = list(res["rows"][0]["robust_accuracy"])
    lines = [f"# PGD-{res['steps']} at equal settings (no random start)", "",
             "Every implementation takes the same deterministic path from the clean input, so robust accuracy "
             "compares exactly; lower means stronger.", "",
             "| model | n | eps | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]  # fmt: skip
    for row in res["rows"]:
        accs = " | ".join(f"{row['robust_accuracy'][k]:.4f}" for k in names)
        lines.append(f"| {row['setup']} | {row['n']} | {row['eps']:.4f} | {accs} |")
    return "\n".join(lines) + "\n"


# -- strength ----------------------------------------------------------------------------------
def strength(eps: float, n: int, quick: bool) -> dict[str, Any]:
    torchattacks = _import_torchattacks()
    model, x, y = digits_setup(n)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    out: dict[str, Any] = {"n": n, "eps": eps, "clean_accuracy": float(ok.float().mean())}
    steps = 25 if quick else 100
    queries = 500 if quick else 5000
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "mlsafety apgd-ce": lambda: create("apgd-ce", eps=eps, steps=steps)(model, x, y),
        "torchattacks APGD-CE": lambda: torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1,
                                                          loss="ce", seed=0)(x, y),
        "mlsafety autoattack": lambda: create("autoattack", eps=eps, steps=steps, n_queries=queries)(model, x, y),
        "torchattacks AutoAttack": lambda: _ta_autoattack(torchattacks, model, eps, steps, queries)(x, y),
        # torchattacks' own defaults: its members run 10 iterations, not the paper's 100
        "torchattacks AutoAttack (its defaults)": lambda: torchattacks.AutoAttack(
            model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)(x, y),
    }  # fmt: skip
    for name, fn in runs.items():
        t0 = time.perf_counter()
        x_adv = fn().detach()
        dt = time.perf_counter() - t0
        linf = float((x_adv - x).abs().amax())
        out[name] = {"robust_accuracy": robust_accuracy(model, x_adv, y), "seconds": dt, "max_linf": linf}
        print(f"  {name}: robust accuracy {out[name]['robust_accuracy']:.4f} in {dt:.1f}s", flush=True)
    return out


def _ta_autoattack(torchattacks: Any, model: nn.Module, eps: float, steps: int, queries: int) -> Any:
    aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    # equal budgets: torchattacks' members default to 10 iterations; give them ours (and Square's queries)
    for atk in aa._autoattack.attacks:
        for attr, value in (("steps", steps), ("n_queries", queries)):
            if hasattr(atk, attr):
                setattr(atk, attr, value)
    return aa


# -- memory ------------------------------------------------------------------------------------
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def memory_child(steps: int, n: int) -> None:
    """Print the peak resident memory growth (MiB) during one PGD run in this fresh process.

    After the setup, the kernel's peak-RSS mark (``VmHWM``) is reset (``/proc/self/clear_refs``), so the
    mark read after the attack is the attack's own exact peak; the growth is that peak minus the
    resident size just before the attack.
    """
    model, x, y = resnet_setup(n, calibration_batch=n)
    with torch.no_grad():
        model(x)  # warm up allocator and kernels
    before = _rss_mib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    reset = _vm_hwm_mib()
    PGD(eps=8 / 255, steps=steps, step_size=2 / 255, early_stop=False, batch_size=4096)(model, x, y)
    peak = _vm_hwm_mib()
    print(json.dumps({"steps": steps, "peak_rss_growth_mib": peak - before, "rss_before_mib": before,
                      "hwm_after_reset_mib": reset}))  # fmt: skip


def memory(n: int) -> dict[str, Any]:
    out = {}
    for steps in (10, 100):
        # A fixed mmap threshold stops glibc from moving freed large blocks to the heap, where
        # fragmentation would raise the high-water mark with the number of steps, not with live data.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        res = subprocess.run([sys.executable, __file__, "--memory-child", str(steps), "--n", str(n)],
                             capture_output=True, text=True, check=True, env=env)  # fmt: skip
        out[f"pgd-{steps}"] = json.loads(res.stdout.strip().splitlines()[-1])
    a, b = out["pgd-10"]["peak_rss_growth_mib"], out["pgd-100"]["peak_rss_growth_mib"]
    out["peak_growth_ratio_100_vs_10"] = b / a
    out["peak_rss_ratio_100_vs_10"] = (b + out["pgd-100"]["rss_before_mib"]) / (a + out["pgd-10"]["rss_before_mib"])
    return out


# -- hardening ---------------------------------------------------------------------------------
def hardening(eps: float = 0.1) -> dict[str, Any]:
    """PGD-AT and TRADES on digits from a seeded re-initialisation, as ``mlsafety harden --from-scratch
    --shift 1 --eps 0.1 [--method trades]`` does; robust accuracy of each against the shipped model."""
    from mlsafety.robustness import evaluate, harden
    from mlsafety.zoo import random_shift

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    base = load_model("digits-cnn")
    models: dict[str, nn.Module] = {"shipped digits-cnn": base}
    seconds: dict[str, float] = {}
    for method in ("pgd", "trades"):
        t0 = time.perf_counter()
        models[method] = harden(base, train, method=method, from_scratch=True, seed=0, eps=eps,
                                augment=lambda x, g: random_shift(x, g, 1))  # fmt: skip
        seconds[method] = time.perf_counter() - t0
        print(f"  trained {method} in {seconds[method]:.0f}s", flush=True)
    out: dict[str, Any] = {"train_eps": eps, "train_seconds": seconds, "n_test": len(test), "models": {}}
    for name, model in models.items():
        row: dict[str, Any] = {}
        for e in (0.05, 0.1, 0.15):
            for attack in ("apgd-ce", "autoattack-fast"):
                r = evaluate(model, test, create(attack, eps=e))
                row["clean"] = r.clean_accuracy.value
                row[f"{attack}@{e:g}"] = [r.robust_accuracy.value, r.robust_accuracy.ci_low, r.robust_accuracy.ci_high]
        out["models"][name] = row
        print(f"  {name}: {row}", flush=True)
    return out


def hardening_markdown(res: dict[str, Any]) -> str:
    cols = [k for k in next(iter(res["models"].values())) if k != "clean"]
    lines = ["# Hardening the digits model", "",
             f"Trained at L-inf eps {res['train_eps']} from a seeded re-initialisation (40 epochs, PGD-7, one-pixel "
             f"shifts); robust accuracy on the {res['n_test']} test inputs with exact 95% intervals.", "",
             "| model | clean | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]  # fmt: skip
    for name, row in res["models"].items():
        cells = [f"{row[c][0]:.3f} [{row[c][1]:.3f}, {row[c][2]:.3f}]" for c in cols]
        lines.append(f"| {name} | {row['clean']:.3f} | " + " | ".join(cells) + " |")
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in res["train_seconds"].items())
    return "\n".join([*lines, "", f"Training time on one CPU thread: {secs}.", ""])


# -- report ------------------------------------------------------------------------------------
def markdown(res: dict[str, Any]) -> str:
    lines = ["# Attacks benchmark", "", f"{res['machine']}; torch {res['torch']}; OMP threads "
             f"{res['threads']}. Medians of timed repetitions after one warm-up round (ResNet {res['reps']}, digits "
             f"{4 * res['reps']}); contenders interleaved within each round.", ""]  # fmt: skip
    for block in res["pgd"]:
        lines += [f"## PGD-{block['steps']} on {block['setup']} (n={block['n']}, eps={block['eps']:.4g}, "
                  f"step {block['step_size']:.4g}, {block['reps']} reps)", "",
                  "| implementation | median s | x plain loop | ART time / this | robust acc |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for k, t in block["median_seconds"].items():
            lines.append(f"| {k} | {t:.3f} | {block['time_vs_plain_loop'][k]:.2f} | "
                         f"{block['art_speedup_over'][k]:.2f} | {block['robust_accuracy'][k]:.4f} |")  # fmt: skip
        lines.append("")
    s = res["strength"]
    lines += [f"## Strength on digits-cnn (n={s['n']}, Linf eps={s['eps']}, clean acc {s['clean_accuracy']:.4f})", "",
              "| attack | robust acc | seconds |", "|---|---|---|"]  # fmt: skip
    for k, v in s.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v['robust_accuracy']:.4f} | {v['seconds']:.1f} |")
    m = res["memory"]
    lines += ["", "## Peak memory (ResNet, PGD without early stop, fresh process each, exact kernel peak-RSS mark)", "",
              f"Peak resident memory growth during the attack: PGD-10 {m['pgd-10']['peak_rss_growth_mib']:.1f} MiB, "
              f"PGD-100 {m['pgd-100']['peak_rss_growth_mib']:.1f} MiB: ratio {m['peak_growth_ratio_100_vs_10']:.3f}.",
              ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller budgets")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hardening", action="store_true", help="run only the hardening comparison (slow)")
    parser.add_argument("--only-memory", action="store_true", help="run only the memory comparison")
    parser.add_argument("--equal-start", action="store_true", help="run only PGD without random start (exact)")
    parser.add_argument("--n", type=int, default=128, help="ResNet batch size")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.n)
        return
    reps = 2 if args.quick else 5
    res: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}", "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "reps": reps, "pgd": []}  # fmt: skip
    if args.hardening:
        RESULTS.mkdir(parents=True, exist_ok=True)
        hard = hardening()
        (RESULTS / "attacks-hardening.json").write_text(json.dumps(hard, indent=1))
        (RESULTS / "attacks-hardening.md").write_text(hardening_markdown(hard))
        print(hardening_markdown(hard))
        return
    if args.equal_start:
        RESULTS.mkdir(parents=True, exist_ok=True)
        eq = equal_settings()
        (RESULTS / "attacks-equal.json").write_text(json.dumps(eq, indent=1))
        (RESULTS / "attacks-equal.md").write_text(equal_markdown(eq))
        print(equal_markdown(eq))
        return
    if args.only_memory:  # re-measure memory and update the stored results
        mem = memory(args.n)
        print(json.dumps(mem, indent=1))
        path = RESULTS / "attacks.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            stored["memory"] = mem
            path.write_text(json.dumps(stored, indent=1))
            (RESULTS / "attacks.md").write_text(markdown(stored))
        return
    for setup, (model, x, y), eps in (("resnet-cifar-shaped", resnet_setup(args.n), 8 / 255),
                                      ("digits", digits_setup(), 0.1)):  # fmt: skip
        print(f"PGD-10 on {setup}", flush=True)
        # digits runs take a fraction of a second: more repetitions for a stable median
        block = time_pgd(setup, model, x, y, eps, 10, reps if setup != "digits" else 4 * reps)
        print(json.dumps(block["median_seconds"], indent=1), json.dumps(block["robust_accuracy"], indent=1))
        res["pgd"].append(block)
    print("strength on digits", flush=True)
    res["strength"] = strength(0.1, 100, args.quick)
    print("memory", flush=True)
    res["memory"] = memory(args.n)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "attacks.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "attacks.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
