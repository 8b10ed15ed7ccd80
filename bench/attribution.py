"""Attribution speed and agreement against Captum on the embedded digits model.

Same model, same 256 test inputs, same targets, one process, one thread; each pair runs
interleaved several times and the median is kept. Reports our time, Captum's time, the ratio
(Captum / ours: above 1 means we are faster) and the largest absolute difference of the maps.

    OMP_NUM_THREADS=1 .venv/bin/python bench/attribution.py [--repeats 5]

Writes bench/results/attribution.json and bench/results/attribution.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from mlsafety import zoo
from mlsafety.monitoring import transparency as tr

RESULTS = Path(__file__).parent / "results"


def _time(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    from captum import attr as captum

    model = zoo.load_model("digits-cnn")
    test = zoo.load_dataset("digits", "test")
    x, y = test.x[:256], test.y[:256]
    n_sg = 25

    # SmoothGrad draws different noise in each library, so its maps are compared by their error
    # against a many-sample reference rather than with each other.
    cases: dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor], bool]] = {
        "saliency": (
            lambda: tr.attribute("saliency", model, x, y),
            lambda: captum.Saliency(model).attribute(x, target=y),
            True,
        ),
        "input-x-gradient": (
            lambda: tr.attribute("input-x-gradient", model, x, y),
            lambda: captum.InputXGradient(model).attribute(x, target=y),
            True,
        ),
        "integrated-gradients (50 steps, batch 256)": (
            lambda: tr.attribute("integrated-gradients", model, x, y, batch_size=256),
            lambda: captum.IntegratedGradients(model).attribute(x, target=y, n_steps=50, internal_batch_size=256),
            True,
        ),
        "integrated-gradients (50 steps, one batch)": (
            lambda: tr.attribute("integrated-gradients", model, x, y, batch_size=256 * 50),
            lambda: captum.IntegratedGradients(model).attribute(x, target=y, n_steps=50),
            True,
        ),
        "smoothgrad (25 samples)": (
            lambda: tr.attribute("smoothgrad", model, x, y, n_samples=n_sg, batch_size=256 * n_sg),
            lambda: captum.NoiseTunnel(captum.Saliency(model)).attribute(
                x, target=y, nt_type="smoothgrad", nt_samples=n_sg, stdevs=0.15, abs=False
            ),
            False,
        ),
        "occlusion (2x2, stride 1)": (
            lambda: tr.attribute("occlusion", model, x, y),
            lambda: captum.Occlusion(model).attribute(x, sliding_window_shapes=(1, 2, 2), strides=1, target=y),
            True,
        ),
    }
    rows = []
    for name, (ours_fn, theirs_fn, comparable) in cases.items():
        ours_t, theirs_t = [], []
        for _ in range(args.repeats):
            t, ours = _time(ours_fn)
            ours_t.append(t)
            t, theirs = _time(theirs_fn)
            theirs_t.append(t)
        o, c = statistics.median(ours_t), statistics.median(theirs_t)
        row = {"method": name, "ours_s": o, "captum_s": c, "captum_over_ours": c / o}
        if comparable:
            row["max_abs_diff"] = float((ours - theirs).abs().max())
        else:
            ref = tr.attribute("smoothgrad", model, x, y, n_samples=500, batch_size=256 * 50, seed=99)
            row["ours_err_vs_500_sample_ref"] = float((ours - ref).abs().mean())
            row["captum_err_vs_500_sample_ref"] = float((theirs - ref).abs().mean())
        rows.append(row)
        print(row, flush=True)
    ig = tr.IntegratedGradients()
    _, delta = ig.attribute_with_delta(model, x, y)
    result = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "inputs": 256,
        "repeats": args.repeats,
        "rows": rows,
        "ig_mean_abs_delta": float(delta.abs().mean()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "attribution.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Attribution time against Captum (digits-cnn, 256 inputs, 1 thread, median of "
        f"{args.repeats} interleaved runs)",
        "",
        "| method | ours (s) | Captum (s) | Captum / ours | agreement |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        agree = (
            f"max abs diff {r['max_abs_diff']:.1e}"
            if "max_abs_diff" in r
            else f"mean error vs 500-sample reference: ours {r['ours_err_vs_500_sample_ref']:.3f}, "
            f"Captum {r['captum_err_vs_500_sample_ref']:.3f}"
        )
        lines.append(
            f"| {r['method']} | {r['ours_s']:.3f} | {r['captum_s']:.3f} | {r['captum_over_ours']:.2f} | {agree} |"
        )
    lines += [
        "",
        f"Integrated gradients (Gauss-Legendre, 50 steps): mean |convergence delta| {result['ig_mean_abs_delta']:.2e}.",
    ]
    (RESULTS / "attribution.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "attribution.md").read_text())


if __name__ == "__main__":
    main()
