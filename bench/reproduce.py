"""Bench: does each zoo recipe reproduce its shipped weights bit for bit on this machine?

``mlsafety zoo train NAME`` runs a seeded recipe with the thread count the shipped file was trained
with, yet float sums in training depend on the CPU's kernels (AVX2 vs AVX-512 vs NEON, the BLAS and
oneDNN paths torch picks for it), so bit-identical weights hold only on the machine kind that trained
the shipped file. The test suite checks what holds everywhere (accuracy within the shipped model's
interval, >= 99% agreement: ``tests/zoo/test_zoo.py``); this script records where the bit-exact
reproduction holds. For every zoo model with a recipe it retrains into a temporary file, compares
every tensor bit for bit with the shipped one, and adds the behavioural figures: for classifiers,
test accuracy (exact 95% interval) and agreement with the shipped model; for denoisers, the mean
squared error on the noisy test images and the RMS difference of the two denoisers' outputs.

One entry per machine (CPU model, CPU capability torch uses, torch version, threads) is kept in
``bench/results/reproduce.json``; ``reproduce.md`` tabulates all of them.

    .venv/bin/python bench/reproduce.py [--models digits-cnn digits-denoiser-50]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import mlsafety.monitoring.trojans  # registers the digits-cnn-badnets recipe
import mlsafety.robustness  # noqa: F401  registers the digits-denoiser recipes
from mlsafety import zoo
from mlsafety.core import generator
from mlsafety.metrics import proportion

RESULTS = Path(__file__).parent / "results"
JSON_PATH = RESULTS / "reproduce.json"
MD_PATH = RESULTS / "reproduce.md"
DENOISER_PREFIX = "digits-denoiser-"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (x86 ``model name``, arm64 ``CPU part``), else platform's."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for key in ("model name", "Model", "CPU part"):
        for line in lines:
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "default_threads": torch.get_num_threads(),
    }


def compare(name: str, path: Path) -> dict[str, Any]:
    """Bit-for-bit and behavioural comparison of retrained weights at ``path`` with the shipped ones."""
    ours_sd, shipped_sd = load_file(str(path)), load_file(str(zoo.weights_path(name)))
    same_keys = ours_sd.keys() == shipped_sd.keys()
    bit_identical = same_keys and all(
        ours_sd[k].dtype == shipped_sd[k].dtype
        and ours_sd[k].shape == shipped_sd[k].shape
        and torch.equal(ours_sd[k].view(torch.uint8), shipped_sd[k].view(torch.uint8))
        for k in ours_sd
    )
    max_abs = max((ours_sd[k].double() - shipped_sd[k].double()).abs().max().item() for k in ours_sd)
    row: dict[str, Any] = {"bit_identical": bit_identical, "max_abs_diff": max_abs}
    ours, shipped = zoo.model_info(name).build(), zoo.load_model(name)
    ours.load_state_dict(ours_sd)
    ours.eval()
    test = zoo.load_dataset(zoo.model_info(name).dataset, "test")
    x, y = test.x, test.y
    with torch.inference_mode():
        if name.startswith(DENOISER_PREFIX):
            sigma = int(name.removeprefix(DENOISER_PREFIX)) / 100
            noisy = x + torch.randn(x.shape, generator=generator(0, "noise")) * sigma
            out, out_shipped = ours(noisy), shipped(noisy)
            row["mse"] = ((out - x) ** 2).mean().item()
            row["mse_shipped"] = ((out_shipped - x) ** 2).mean().item()
            row["rms_output_diff"] = ((out - out_shipped) ** 2).mean().sqrt().item()
        else:
            pred, pred_shipped = ours(x).argmax(1), shipped(x).argmax(1)
            row["accuracy"] = list(proportion(pred == y))
            row["accuracy_shipped"] = list(proportion(pred_shipped == y))
            row["agreement"] = (pred == pred_shipped).float().mean().item()
    return row


def run(names: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            start = time.perf_counter()
            path = zoo.train_model(name, out=Path(tmp) / f"{name}.safetensors")
            row = {"threads": zoo.model_info(name).threads, "train_s": round(time.perf_counter() - start, 1)}
            row.update(compare(name, path))
            entry["models"][name] = row
            print(f"{name}: bit-identical {row['bit_identical']}, max |diff| {row['max_abs_diff']:.3g}", flush=True)
    return entry


def machine_key(m: dict[str, Any]) -> tuple[Any, ...]:
    return (m["cpu"], m["arch"], m["cpu_capability"], m["torch"])


def merge(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Previous entries of other machines, this machine's replaced by ``entry`` (models merged)."""
    entries = json.loads(JSON_PATH.read_text())["machines"] if JSON_PATH.exists() else []
    key = machine_key(entry["machine"])
    old = next((e for e in entries if machine_key(e["machine"]) == key), None)
    if old is not None:
        entry["models"] = {**old["models"], **entry["models"]}
    return [e for e in entries if machine_key(e["machine"]) != key] + [entry]


def markdown(entries: list[dict[str, Any]]) -> str:
    lines = [
        "# Zoo recipes: bit-exact reproduction by machine",
        "",
        "`bench/reproduce.py` retrains every zoo model that has a recipe (`mlsafety zoo train NAME`, the",
        "thread count the shipped file was trained with) and compares the weights bit for bit with the",
        "shipped file. Float sums in training depend on the CPU's kernels, so bit-identical weights are",
        "a property of a machine kind; the behavioural columns are what the test suite checks on every",
        "machine (classifiers: test accuracy within the shipped model's exact 95% interval and >= 99%",
        "agreement; denoisers: error within the shipped one's interval, outputs within a tenth of its",
        "RMS error).",
        "",
        "| machine (CPU, kernels, torch) | model | threads | bit-identical | max abs diff | behaviour |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        m = e["machine"]
        where = f"{m['cpu']} ({m['arch']}, {m['cpu_capability']}), torch {m['torch']}, {e['date']}"
        for name, r in sorted(e["models"].items()):
            if "agreement" in r:
                acc, ship = r["accuracy"], r["accuracy_shipped"]
                how = (
                    f"accuracy {acc[0]:.4f} (shipped {ship[0]:.4f} [{ship[1]:.4f}, {ship[2]:.4f}]), "
                    f"agreement {r['agreement']:.4f}"
                )
            else:
                how = f"MSE {r['mse']:.5f} (shipped {r['mse_shipped']:.5f}), RMS output diff {r['rms_output_diff']:.4f}"
            same = "yes" if r["bit_identical"] else "no"
            lines.append(f"| {where} | {name} | {r['threads']} | {same} | {r['max_abs_diff']:.3g} | {how} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    with_recipe = [n for n in zoo.model_names() if zoo.model_info(n).recipe is not None]
    parser.add_argument("--models", nargs="+", default=with_recipe, choices=with_recipe)
    args = parser.parse_args()
    entries = merge(run(args.models))
    RESULTS.mkdir(exist_ok=True)
    JSON_PATH.write_text(json.dumps({"machines": entries}, indent=2) + "\n")
    MD_PATH.write_text(markdown(entries))
    print(f"wrote {JSON_PATH} and {MD_PATH}")


if __name__ == "__main__":
    main()
