"""TransformerLens comparison on smollm2-135m (issue 16, "Anchors"): logits with hooks, patching sweep, load memory.

Loads the same SmolLM2 weights (the fp32 safetensors cache of ``make assets``) through mlsafety's
``LanguageModel`` and through TransformerLens 4.3's ``TransformerBridge.boot_transformers`` (offline, from the
local cache folder; no hub), each in its own subprocess so that memory figures do not mix, and compares:

(a) max |logits with an identity hook at every hook point - the Hugging Face model's logits|;
(b) the wall time of a full layers x positions ``resid_pre`` activation-patching sweep (clean into corrupted,
    IOI prompt pairs of one token length): ours is ``mlsafety.monitoring.interp.activation_patching``
    (prompt-site rows stacked ``batch_size`` at a time), theirs a plain loop over (layer, position) with
    ``run_with_hooks`` on the batch of prompts (TransformerLens' ``patching`` utilities are tried too and
    timed when they accept the bridge); both sweeps' patched logit differences are compared;
(c) memory after loading AND one forward pass (so memory-mapped weights have been read), above the memory
    before loading, as anonymous (RssAnon: copies, activations) and file-backed (RssFile: mmapped weight
    files) resident memory from /proc/self/status, against the weights' size; and for TransformerLens
    whether the bridge's parameters share storage with the Hugging Face module inside it (no second copy).

TransformerLens is a peer of the `bench` extra: `make install` installs it with --no-deps plus the
libraries its bridge imports (pinned in constraints.txt; see the Makefile). Run::

    .venv/bin/python bench/interp_tl.py [--prompts 4] [--layers 0]

Writes bench/results/interp_tl.json and .md. Timings need an idle machine (rerun there for the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 0.8
"""Issue 16's goal: our sweep takes at most 0.8x TransformerLens' time."""


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mib() -> dict[str, float]:
    """RssAnon and RssFile of this process (MiB), from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) / 1024  # kB
    return out


def _memory(before: dict[str, float]) -> dict[str, float]:
    """Resident memory now (after a forward pass) above ``before``, anonymous and file-backed."""
    now = _status_mib()
    return {
        "rss_anon_extra_mib": now["RssAnon"] - before["RssAnon"],
        "rss_file_extra_mib": now["RssFile"] - before["RssFile"],
    }


def _prompts(n: int) -> tuple[list[str], list[str], Any, Any]:
    """``n`` IOI prompt pairs (and IO / S answer ids) of the most common token length (no padding)."""
    import torch
    from transformers import AutoTokenizer

    from mlsafety.monitoring.interp import ioi_dataset

    tokenizer = AutoTokenizer.from_pretrained(str(_cache()), local_files_only=True)
    data = ioi_dataset(tokenizer, n=8 * n, seed=0)
    length = int(torch.mode(data.lengths).values)
    keep = [i for i in range(len(data)) if int(data.lengths[i]) == length][:n]
    return ([data.prompts[i] for i in keep], [data.corrupted[i] for i in keep], data.io_ids[keep], data.s_ids[keep])


def _cache() -> Path:
    from mlsafety.zoo import smollm2_cache_dir

    return smollm2_cache_dir()


def _ids(tokenizer: Any, texts: list[str]) -> Any:
    import torch

    rows = [tokenizer(t)["input_ids"] for t in texts]
    return torch.tensor(rows)


def part_ours(n: int, layers: int | None) -> dict[str, Any]:
    import torch

    from mlsafety import zoo
    from mlsafety.monitoring.interp import activation_patching

    clean, corrupted, io, s = _prompts(n)
    torch.set_grad_enabled(False)
    before = _rss_mib()
    status = _status_mib()
    t0 = time.perf_counter()
    lm = zoo.load_language_model("smollm2-135m")
    load_s = time.perf_counter() - t0
    weights_mib = sum(p.numel() * p.element_size() for p in lm.module.parameters()) / 2**20
    ids = _ids(lm.tokenizer, clean)
    plain = lm.module(input_ids=ids).logits
    memory = _memory(status)  # after one forward pass: every weight page has been touched
    peak = _peak_mib()
    with lm.hooks({name: (lambda act, name: act) for name in lm.hook_points()}):
        hooked = lm.module(input_ids=ids).logits
    sweep_layers = list(range(layers)) if layers else None
    t0 = time.perf_counter()
    result = activation_patching(lm, clean, corrupted, io, s, point="resid_pre", positions="all", layers=sweep_layers)
    sweep_s = time.perf_counter() - t0
    return {
        "load_s": load_s,
        "rss_before_mib": before,
        "peak_mib": peak,
        "load_peak_extra_mib": peak - before,
        **memory,
        "weights_mib": weights_mib,
        "hooks_max_abs_logit_diff": float((hooked - plain).abs().max()),
        "hook_points": len(lm.hook_points()),
        "sweep_s": sweep_s,
        "sweep_sites": int(result.raw[0].numel()),
        "prompts": len(clean),
        "tokens": int(ids.shape[1]),
        "raw": result.raw.tolist(),
    }


def part_theirs(n: int, layers: int | None) -> dict[str, Any]:
    import torch

    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformer_lens
    from transformer_lens.model_bridge import TransformerBridge

    clean, corrupted, io, s = _prompts(n)
    torch.set_grad_enabled(False)
    before = _rss_mib()
    status = _status_mib()
    t0 = time.perf_counter()
    bridge = TransformerBridge.boot_transformers(str(_cache()), device="cpu", dtype=torch.float32)
    load_s = time.perf_counter() - t0
    hf = bridge.original_model
    weights_mib = sum(p.numel() * p.element_size() for p in hf.parameters()) / 2**20
    hf_ptrs = {p.data_ptr() for p in hf.parameters()}
    bridge_params = list(bridge.parameters())
    shared = sum(p.data_ptr() in hf_ptrs for p in bridge_params)
    from transformers import AutoTokenizer

    # the tokenizer mlsafety uses (the bridge's own prepends a BOS token SmolLM2's does not): equal inputs
    tokenizer = AutoTokenizer.from_pretrained(str(_cache()), local_files_only=True)
    clean_ids, corrupted_ids = _ids(tokenizer, clean), _ids(tokenizer, corrupted)
    plain = hf(input_ids=clean_ids).logits  # the HF model inside the bridge (eager attention, as they force it)
    bridge(clean_ids)  # one forward pass through the bridge too, before memory is read
    memory = _memory(status)
    peak = _peak_mib()
    names = list(bridge.hook_dict)
    # a filter attaches the identity to every hook point the bridge enables by default (gated ones, such as
    # hook_mlp_in, need set_use_...(True), which changes the computation path; they are skipped)
    hooked = bridge.run_with_hooks(clean_ids, fwd_hooks=[(lambda name: True, lambda act, hook: act)])
    n_layers = int(bridge.cfg.n_layers)
    sweep_layers = list(range(layers or n_layers))
    length = int(clean_ids.shape[1])
    rows = torch.arange(len(clean))

    def diff(logits: Any) -> Any:
        last = logits[:, -1]
        return last[rows, io] - last[rows, s]

    t0 = time.perf_counter()
    _, clean_cache = bridge.run_with_cache(clean_ids, names_filter=lambda name: name.endswith("hook_resid_pre"))
    raw = torch.empty(len(clean), len(sweep_layers), length)
    for li, layer in enumerate(sweep_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        for pos in range(length):

            def patch(act: Any, hook: Any, pos: int = pos, name: str = name) -> Any:
                act[:, pos] = clean_cache[name][:, pos]
                return act

            raw[:, li, pos] = diff(bridge.run_with_hooks(corrupted_ids, fwd_hooks=[(name, patch)]))
    sweep_s = time.perf_counter() - t0
    util: dict[str, Any] = {"patching_util_error": "not timed: --layers restricts the sweep, theirs sweeps all"}
    if not layers:  # their utility always sweeps every layer: timed only beside a full sweep
        try:
            from transformer_lens import patching

            t0 = time.perf_counter()
            patching.get_act_patch_resid_pre(bridge, corrupted_ids, clean_cache, lambda logits: diff(logits).mean())
            util = {"patching_util_s": time.perf_counter() - t0}
        except Exception as exc:  # their utility may not accept the bridge; say why
            util = {"patching_util_error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    return {
        "version": transformer_lens.__version__ if hasattr(transformer_lens, "__version__") else "4.3.0",
        "load_s": load_s,
        "rss_before_mib": before,
        "peak_mib": peak,
        "load_peak_extra_mib": peak - before,
        **memory,
        "bridge_params_sharing_hf_storage": f"{shared} of {len(bridge_params)}",
        "weights_mib": weights_mib,
        "hooks_max_abs_logit_diff": float((hooked - plain).abs().max()),
        "hook_points": len(names),  # all named points, gated ones included
        "sweep_s": sweep_s,
        "prompts": len(clean),
        "tokens": length,
        "raw": raw.tolist(),
        **util,
    }


def _run_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--part", part, "--prompts", str(args.prompts)]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"exit {proc.returncode}: {tail[-600:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _md(out: dict[str, Any]) -> str:
    ours, theirs = out["ours"], out["theirs"]
    lines = ["# TransformerLens comparison on smollm2-135m (bench/interp_tl.py)", ""]
    lines += [f"Machine: {out['machine']}; torch {out['torch']}; prompts {out['prompts']}.", ""]
    if "error" in theirs:
        lines += [f"TransformerLens did not run: {theirs['error']}", ""]
    if "error" in ours:
        lines += [f"mlsafety did not run: {ours['error']}", ""]
    if "error" not in ours and "error" not in theirs:
        lines += [
            "| | mlsafety | TransformerLens 4.3 (bridge) |",
            "|---|---|---|",
            f"| (a) max abs(logits with identity hooks - HF logits) | {ours['hooks_max_abs_logit_diff']:.3g} "
            f"({ours['hook_points']} hook points) | {theirs['hooks_max_abs_logit_diff']:.3g} "
            f"({theirs['hook_points']} hook points) |",
            f"| (b) resid_pre sweep, {ours['sweep_sites']} sites x {ours['prompts']} prompts ({ours['tokens']} tokens) "
            f"| {ours['sweep_s']:.1f} s | {theirs['sweep_s']:.1f} s (plain run_with_hooks loop) |",
            f"| (c) RssAnon after load + one forward, above before | {ours['rss_anon_extra_mib']:.0f} MiB "
            f"| {theirs['rss_anon_extra_mib']:.0f} MiB |",
            f"| (c) RssFile (mmapped files) after load + one forward, above before | "
            f"{ours['rss_file_extra_mib']:.0f} MiB | {theirs['rss_file_extra_mib']:.0f} MiB |",
            f"| peak RSS (ru_maxrss) above the RSS before | {ours['load_peak_extra_mib']:.0f} MiB "
            f"| {theirs['load_peak_extra_mib']:.0f} MiB |",
            f"| bridge parameters sharing the HF module's storage | - | {theirs['bridge_params_sharing_hf_storage']} |",
            f"| weights (fp32) | {ours['weights_mib']:.0f} MiB | {theirs['weights_mib']:.0f} MiB |",
            f"| load time | {ours['load_s']:.1f} s | {theirs['load_s']:.1f} s |",
            "",
            f"Sweep time ratio ours / theirs: **{out['sweep_ratio']:.2f}** (goal <= {GOAL_RATIO}); patched logit "
            f"differences agree to max abs {out['raw_max_abs_diff']:.3g} (shapes {out['raw_shapes']}, "
            f"NaN sites ours/theirs {out['raw_nan']}).",
        ]
        if "patching_util_s" in theirs:
            lines.append(
                f"TransformerLens' patching.get_act_patch_resid_pre on the bridge: {theirs['patching_util_s']:.1f} s."
            )
        elif "patching_util_error" in theirs:
            lines.append(
                "TransformerLens' patching.get_act_patch_resid_pre on the bridge failed: "
                + str(theirs["patching_util_error"])
            )
    lines += [
        "",
        "Rerun on an idle machine for timings: `.venv/bin/python bench/interp_tl.py`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4, help="IOI prompt pairs in the sweep")
    parser.add_argument("--layers", type=int, default=0, help="sweep only the first N layers (0: all)")
    parser.add_argument("--part", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "ours":
        print(json.dumps(part_ours(args.prompts, args.layers or None)))
        return
    if args.part == "theirs":
        print(json.dumps(part_theirs(args.prompts, args.layers or None)))
        return
    import torch

    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "torch": torch.__version__,
        "prompts": args.prompts,
        "layers": args.layers or "all",
        "ours": _run_part("ours", args),
        "theirs": _run_part("theirs", args),
    }
    ours, theirs = out["ours"], out["theirs"]
    if "error" not in ours and "error" not in theirs:
        out["sweep_ratio"] = ours["sweep_s"] / theirs["sweep_s"]
        a, b = torch.tensor(ours["raw"]), torch.tensor(theirs["raw"])
        out["raw_shapes"] = [list(a.shape), list(b.shape)]
        out["raw_nan"] = [int(a.isnan().sum()), int(b.isnan().sum())]
        gap = (a - b).abs() if a.shape == b.shape else torch.tensor([float("nan")])
        out["raw_max_abs_diff"] = float(gap[gap.isfinite()].max()) if bool(gap.isfinite().any()) else float("nan")
    for part in (ours, theirs):
        part.pop("raw", None)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "interp_tl.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "interp_tl.md").write_text(_md(out))
    print(_md(out))


if __name__ == "__main__":
    main()
