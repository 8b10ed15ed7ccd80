"""Compare every stored row of two audit databases (the latest run of each), key by key.

Used to show a restructuring changed no number: run the full audit before and after with the same
seed, then ``python bench/compare_runs.py before.sqlite after.sqlite``. Exit 0 when every row is
identical (value, interval, n, kind, params); otherwise list what differs and exit 1.
"""

from __future__ import annotations

import sqlite3
import sys


def _rows(path: str) -> dict[str, tuple]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    run = con.execute("SELECT run_id FROM runs ORDER BY created DESC LIMIT 1").fetchone()[0]
    out = {}
    for check, hazard, metric, value, lo, hi, n, params, kind in con.execute(
        "SELECT check_name, hazard, metric, value, ci_low, ci_high, n, params_json, kind FROM results WHERE run_id = ?",
        (run,),
    ):
        out[f"{check}/{hazard}/{metric}"] = (value, lo, hi, n, kind, params)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python bench/compare_runs.py BEFORE.sqlite AFTER.sqlite", file=sys.stderr)
        return 2
    before, after = _rows(argv[0]), _rows(argv[1])
    gone = sorted(set(before) - set(after))
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    for k in gone:
        print(f"only before: {k}")
    for k in new:
        print(f"only after:  {k}")
    for k in changed:
        print(f"changed:     {k}\n  before {before[k]}\n  after  {after[k]}")
    same = len(set(before) & set(after)) - len(changed)
    print(f"{same} identical, {len(changed)} changed, {len(gone)} only before, {len(new)} only after")
    return 0 if not (gone or new or changed) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
