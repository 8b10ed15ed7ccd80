"""The results database: SQLite (WAL), tables ``runs``, ``results``, ``artifacts``, ``tasks``.

Rows are written one task at a time, each task in one transaction together with its completion
mark, so a crash loses at most the task in flight and ``--resume`` skips exactly what is stored.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsafety.audit._check import Artifact, Row, StoredRow
from mlsafety.core import InputError

SCHEMA_VERSION = 2
"""2: results carry a ``kind`` (estimate, decision, count, setting); a version-1 database is refused."""
DEFAULT_DB = "mlsafety-runs.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    data TEXT NOT NULL,
    seed INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    config_json TEXT NOT NULL,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    check_name TEXT NOT NULL,
    task_key TEXT NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (run_id, check_name, task_key)
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    check_name TEXT NOT NULL,
    hazard TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    ci_low REAL,
    ci_high REAL,
    n INTEGER,
    params_json TEXT NOT NULL,
    task_key TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('estimate', 'decision', 'count', 'setting')),
    PRIMARY KEY (run_id, check_name, hazard, metric)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    check_name TEXT NOT NULL,
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    caption TEXT NOT NULL,
    data BLOB NOT NULL,
    task_key TEXT NOT NULL,
    PRIMARY KEY (run_id, check_name, name)
);
"""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    created: float
    finished: float | None
    status: str
    model: str
    data: str
    seed: int
    fingerprint: str
    config: dict[str, Any]
    version: str


def default_db_path() -> Path:
    """``$MLSAFETY_DB`` if set, else ``./mlsafety-runs.sqlite``."""
    return Path(os.environ.get("MLSAFETY_DB", DEFAULT_DB))


class Store:
    """Open (creating if needed) a results database.

    A file that is not SQLite, or an SQLite file that is not an mlsafety store, raises
    :class:`InputError` and is left untouched.
    """

    def __init__(self, path: str | Path | None = None, create: bool = True) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        exists = self.path.exists()
        if not exists and not create:
            raise InputError(f"results database not found: {self.path}; run `mlsafety audit` first or pass --db")
        if exists and self.path.is_dir():
            raise InputError(f"results database path {self.path} is a directory; pass --db FILE")
        if not exists and not self.path.parent.exists():
            raise InputError(f"folder {self.path.parent} does not exist; create it or pass another --db")
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._check_or_create(exists)
        except sqlite3.DatabaseError as exc:
            raise InputError(
                f"{self.path} is not a usable mlsafety results database ({exc}); pass another --db"
            ) from None

    def _check_or_create(self, existed: bool) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if existed and tables and "schema_version" not in tables:
            self.conn.close()
            raise InputError(
                f"{self.path} is an SQLite file of another program (tables: {', '.join(sorted(tables))}); "
                "pass another --db"
            )
        if "schema_version" in tables:
            row = self.conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                self.conn.close()
                raise InputError(
                    f"{self.path} has results schema version {row[0] if row else 'none'}, this mlsafety "
                    f"reads version {SCHEMA_VERSION}; pass another --db"
                )
        else:
            self.conn.execute("PRAGMA journal_mode=WAL")
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        self.conn.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ------------------------------------------------------------------------------------
    def create_run(
        self, model: str, data: str, seed: int, fingerprint: str, config: dict[str, Any], version: str
    ) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        with self.transaction() as c:
            c.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    time.time(),
                    None,
                    "running",
                    model,
                    data,
                    seed,
                    fingerprint,
                    json.dumps(config, sort_keys=True, default=str),
                    version,
                ),
            )
        return run_id

    def finish_run(self, run_id: str, status: str = "complete") -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status=?, finished=? WHERE run_id=?", (status, time.time(), run_id))

    def _run(self, r: Sequence[Any]) -> RunInfo:
        return RunInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9])

    def runs(self) -> list[RunInfo]:
        """All runs, newest first."""
        return [self._run(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY created DESC, run_id DESC")]

    def run(self, run_id: str) -> RunInfo:
        """One run; ``latest`` names the newest. An unknown id raises :class:`InputError`."""
        if run_id == "latest":
            r = self.conn.execute("SELECT * FROM runs ORDER BY created DESC, run_id DESC LIMIT 1").fetchone()
        else:
            r = self.conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if r is None:
                matches = self.conn.execute("SELECT * FROM runs WHERE run_id LIKE ?", (run_id + "%",)).fetchall()
                r = matches[0] if len(matches) == 1 else None
        if r is None:
            raise InputError(f"no run {run_id!r} in {self.path}; `mlsafety runs` lists them")
        return self._run(r)

    def resumable(self, fingerprint: str) -> RunInfo | None:
        """The newest unfinished run with this configuration fingerprint, if any."""
        r = self.conn.execute(
            "SELECT * FROM runs WHERE fingerprint=? AND status!='complete' ORDER BY created DESC LIMIT 1",
            (fingerprint,),
        ).fetchone()
        return self._run(r) if r else None

    # -- tasks -----------------------------------------------------------------------------------
    def done_tasks(self, run_id: str) -> set[tuple[str, str]]:
        return {
            (c, k) for c, k in self.conn.execute("SELECT check_name, task_key FROM tasks WHERE run_id=?", (run_id,))
        }

    def write_task(
        self, run_id: str, check: str, task_key: str, rows: Sequence[Row], artifacts: Sequence[Artifact], seconds: float
    ) -> None:
        """Store a finished task's rows and artifacts and mark it done, atomically."""
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        run_id,
                        check,
                        r.hazard,
                        r.metric,
                        float(r.value),
                        None if r.ci_low is None else float(r.ci_low),
                        None if r.ci_high is None else float(r.ci_high),
                        None if r.n is None else int(r.n),
                        r.params_json(),
                        task_key,
                        r.kind,
                    )
                    for r in rows
                ],
            )
            c.executemany(
                "INSERT OR REPLACE INTO artifacts VALUES (?,?,?,?,?,?,?)",
                [(run_id, check, a.name, a.mime, a.caption, a.data, task_key) for a in artifacts],
            )
            c.execute("INSERT OR REPLACE INTO tasks VALUES (?,?,?,?)", (run_id, check, task_key, seconds))

    # -- results ---------------------------------------------------------------------------------
    def results(self, run_id: str, check: str | None = None) -> list[StoredRow]:
        query = "SELECT check_name, hazard, metric, value, ci_low, ci_high, n, params_json, kind "
        query += "FROM results WHERE run_id=?"
        args: tuple[Any, ...] = (run_id,)
        if check is not None:
            query += " AND check_name=?"
            args += (check,)
        query += " ORDER BY rowid"
        return [
            StoredRow(c, h, m, v, lo, hi, n, json.loads(p), k)
            for c, h, m, v, lo, hi, n, p, k in self.conn.execute(query, args)
        ]

    def artifacts(self, run_id: str, check: str | None = None) -> list[tuple[str, Artifact]]:
        query = "SELECT check_name, name, mime, caption, data FROM artifacts WHERE run_id=?"
        args: tuple[Any, ...] = (run_id,)
        if check is not None:
            query += " AND check_name=?"
            args += (check,)
        query += " ORDER BY rowid"
        return [(c, Artifact(n, bytes(d), m, cap)) for c, n, m, cap, d in self.conn.execute(query, args)]

    def task_seconds(self, run_id: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for check, secs in self.conn.execute("SELECT check_name, seconds FROM tasks WHERE run_id=?", (run_id,)):
            out[check] = out.get(check, 0.0) + secs
        return out
