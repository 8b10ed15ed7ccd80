"""`mlsafety audit-many` on the local executor (issue 20): one run per model, a bad model is one line
naming it and exit 2 without stopping the others, and each run is an ordinary stored run."""

import json
import sqlite3

from click.testing import CliRunner

from mlsafety.cli import main
from tests.support.many import write_models_and_data


def test_audit_many_stores_one_run_per_model_and_names_a_bad_one(tmp_path):
    write_models_and_data(tmp_path, 40)
    db = tmp_path / "runs.sqlite"
    models = [f"{tmp_path}/m.py:a", f"{tmp_path}/m.py:missing", f"{tmp_path}/m.py:b"]
    args = ["audit-many", *models, "--data", str(tmp_path / "d.npz"), "--check", "clean", "--db", str(db)]
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 2, res.output
    out = json.loads(res.output)
    assert [o["model"] for o in out] == models
    assert out[1]["run_id"] is None and "missing" in out[1]["error"]
    con = sqlite3.connect(db)
    stored = dict(con.execute("SELECT run_id, model FROM runs").fetchall())
    acc = dict(con.execute("SELECT run_id, value FROM results WHERE metric='accuracy' AND check_name='clean'"))
    con.close()
    assert stored == {out[0]["run_id"]: models[0], out[2]["run_id"]: models[2]}
    assert acc[out[0]["run_id"]] != acc[out[2]["run_id"]]  # two models, two measurements
    text = CliRunner().invoke(main, args[:2] + args[3:])  # without the bad model: exit 0, a line per model
    assert text.exit_code == 0 and text.output.count(": run ") == 2, text.output
    twice = CliRunner().invoke(main, ["audit-many", models[0], models[0], "--db", str(db)])
    assert twice.exit_code == 2 and "named twice" in twice.output
