#!/usr/bin/env bash
# The CUDA checks, run on a lent GPU machine by the session's `device` tool (CI has no GPU):
#   1. the tests marked `cuda` (detectors, calibration, trojan scanners, corruptions, text attacks, language
#      models, the guard), each comparing the GPU's answers with the CPU's;
#   2. the full digits-cnn audit with --device cuda and --device cpu on the same machine, row by row;
#   3. the whole suite on that machine's CPU (another CPU kind), for CPU-dependent assertions.
# Usage there: bash tools/device_check.sh (wheels of missing packages under .whl/: tools/device_wheels.sh fetches
# them here; results under $OUT).
# tests/test_install.py is left out there: it reads the installed distribution's metadata, and mlsafety is not installed.
set -u
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src:$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, platform; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0), platform.processor())"
grep -m1 "model name" /proc/cpuinfo; grep -o -m1 "avx512[a-z]*" /proc/cpuinfo | head -1
PYTEST=(python3 -m pytest -q -p no:cacheprovider -o "filterwarnings=ignore::DeprecationWarning")
echo "== 1. cuda tests"
timeout 240 "${PYTEST[@]}" -k cuda tests/monitoring/ood/test_ood_cuda.py tests/monitoring/trojans/test_trojans_scanners.py \
  tests/robustness/corruptions/test_corruptions_registry.py tests/cli/test_cli_edges.py \
  tests/robustness/text/test_text_cuda.py tests/alignment/test_alignment_cuda.py tests/guard/test_guard_cuda.py \
  tests/monitoring/transparency/test_transparency_cuda.py tests/audit/test_audit_cuda.py \
  tests/robustness/attacks/test_attacks_generators.py \
  2>&1 | tee "$OUT/cuda_tests.log" | tail -25
echo "== 2. digits-cnn audit, cuda against cpu"
for d in cuda cpu; do
  /usr/bin/time -f "$d audit: %e s" timeout 200 python3 -m mlsafety.cli audit --model digits-cnn --device $d --seed 0 \
    --db "$OUT/audit_$d.sqlite" > "$OUT/audit_$d.log" 2>&1; echo "rc $?"; tail -3 "$OUT/audit_$d.log"
done
python3 - "$OUT/audit_cpu.sqlite" "$OUT/audit_cuda.sqlite" <<'PY' 2>&1 | tee "$OUT/audit_compare.txt"
import sqlite3, sys, json
def rows(p):
    con = sqlite3.connect(p); run = con.execute("SELECT run_id FROM runs ORDER BY created DESC LIMIT 1").fetchone()[0]
    return {f"{c}/{h}/{m}": (v, lo, hi, n) for c, h, m, v, lo, hi, n in con.execute(
        "SELECT check_name, hazard, metric, value, ci_low, ci_high, n FROM results WHERE run_id=?", (run,))}
a, b = rows(sys.argv[1]), rows(sys.argv[2])
both = sorted(set(a) & set(b)); same = [k for k in both if a[k] == b[k]]
def inside(k):
    (v, lo, hi, n), (w, *_ ) = a[k], b[k]
    return v is None or w is None or lo is None or hi is None or lo - 1e-9 <= w <= hi + 1e-9
print(f"rows cpu {len(a)} cuda {len(b)} shared {len(both)} identical {len(same)} "
      f"cuda value inside the cpu interval {sum(inside(k) for k in both)}")
for k in sorted(set(a) ^ set(b))[:20]: print("only one side:", k)
for k in [k for k in both if not inside(k)][:40]: print("outside:", k, a[k], b[k])
PY
echo "== 3. whole suite on this CPU"
timeout "${SUITE_S:-300}" "${PYTEST[@]}" --maxfail=40 -n 12 --timeout 240 -m "not cuda" --ignore tests/test_install.py tests 2>&1 | tee "$OUT/suite.log" | tail -40
