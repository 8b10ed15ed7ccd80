"""The results database: SQLite (WAL), tables ``runs``, ``results``, ``artifacts``, ``tasks``.

Rows are written one task at a time, each task in one transaction together with its completion
mark, so a crash loses at most the task in flight and ``--resume`` skips exactly what is stored.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
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


class StorageError(InputError):
    """The results database cannot be opened, read or written (read-only, full, damaged, locked)."""


def storage_error(path: Path, exc: sqlite3.Error) -> StorageError:
    """One line naming what went wrong with the results database at ``path`` and what to do."""
    text = str(exc)
    low = text.lower()
    if "full" in low:
        fix = f"the disk holding {path} is full ({text}); free some space, or pass another --db"
    elif "readonly" in low or "read-only" in low:
        fix = f"results database {path} is read-only ({text}); make it writable, or pass another --db"
    elif "unable to open" in low:
        fix = f"cannot open results database {path} ({text}); check the permissions of it and its folder"
    elif "malformed" in low or "not a database" in low or "corrupt" in low:
        fix = f"results database {path} is damaged ({text}); restore it from a backup, or pass another --db"
    elif "locked" in low or "busy" in low:
        fix = f"results database {path} is locked by another process ({text}); retry when that process ends"
    elif "disk i/o" in low:
        fix = f"results database {path} cannot be read or written ({text}); check the disk, or pass another --db"
    else:
        fix = f"results database {path} failed ({text}); pass another --db"
    return StorageError(fix)


def _storage_errors(cls: type[Store]) -> type[Store]:
    """Turn any :class:`sqlite3.Error` of a public method into an :class:`InputError` (one line)."""

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise storage_error(self.path, exc) from None

        return wrapper

    for name, fn in list(vars(cls).items()):
        if callable(fn) and not name.startswith("_") and name not in ("transaction", "close"):
            setattr(cls, name, guard(fn))
    return cls


def default_db_path() -> Path:
    """``$MLSAFETY_DB`` if set, else ``./mlsafety-runs.sqlite``."""
    return Path(os.environ.get("MLSAFETY_DB", DEFAULT_DB))


def refuse_db_as_output(out: str | Path, db: str | Path | None, flag: str, example: str) -> None:
    """Raise :class:`InputError` when the output path ``out`` (given as ``flag``) is the results database ``db``
    (None: :func:`default_db_path`), the same file or the same resolved path: written there, a report would
    replace the database and every run stored in it. ``example``: a path to suggest instead."""
    db_path = Path(db) if db is not None else default_db_path()
    out_path = Path(out)
    same = (
        os.path.samefile(out_path, db_path)
        if out_path.exists() and db_path.exists()
        else out_path.resolve() == db_path.resolve()
    )
    if same:
        raise InputError(f"{flag} {out} is the results database; writing there would destroy its runs: pass {flag} "
                         f"{example}")  # fmt: skip


@_storage_errors
class Store:
    """Open (creating if needed) a results database.

    A file that is not SQLite, or an SQLite file that is not an mlsafety store, raises
    :class:`InputError` and is left untouched. Every SQLite error of a public method (a read-only
    file, a full disk, damaged pages) becomes an :class:`InputError` of one line.

    Args:
        path: the database file (default ``$MLSAFETY_DB`` or ``./mlsafety-runs.sqlite``).
        create: create the file when it does not exist (else :class:`InputError`).
        readonly: for commands that only read: the connection can never write (``PRAGMA
            query_only``). Where the file or its folder is not writable it is opened with SQLite's
            ``mode=ro``, so a read-only file works, and in a folder this process cannot write also
            ``immutable=1`` (SQLite can then create no ``-wal`` / ``-shm`` files), unless both
            already exist.
    """

    def __init__(self, path: str | Path | None = None, create: bool = True, readonly: bool = False) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.readonly = readonly
        exists = self.path.exists()
        if not exists and (not create or readonly):
            raise InputError(f"results database not found: {self.path}; run `mlsafety audit` first or pass --db")
        if exists and self.path.is_dir():
            raise InputError(f"results database path {self.path} is a directory; pass --db FILE")
        if not exists and not self.path.parent.exists():
            raise InputError(f"folder {self.path.parent} does not exist; create it or pass another --db")
        try:
            if readonly and not self._writable():
                self.conn = sqlite3.connect(self._readonly_uri(), uri=True, timeout=30, isolation_level=None)
            else:
                self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                if readonly:  # a normal connection (it tidies the -wal / -shm files) that cannot write
                    self.conn.execute("PRAGMA query_only=1")
            self._check_or_create(exists)
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise InputError(
                    f"{self.path} is not a usable mlsafety results database ({exc}); pass another --db"
                ) from None
            raise storage_error(self.path, exc) from None

    def _writable(self) -> bool:
        return os.access(self.path, os.W_OK) and os.access(self.path.resolve().parent, os.W_OK)

    def _readonly_uri(self) -> str:
        path = self.path.resolve()
        uri = "file:" + urllib.parse.quote(str(path), safe="/") + "?mode=ro"
        folder_writable = os.access(path.parent, os.W_OK)
        wal_present = all(path.with_name(path.name + s).exists() for s in ("-wal", "-shm"))
        if not folder_writable and not wal_present:
            uri += "&immutable=1"
        return uri

    def _check_or_create(self, existed: bool) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if self.readonly and "schema_version" not in tables:
            self.conn.close()
            what = f"an SQLite file of another program (tables: {', '.join(sorted(tables))})" if tables else "empty"
            raise InputError(f"{self.path} is {what}, not an mlsafety results database; pass another --db")
        if existed and tables and "schema_version" not in tables:
            self.conn.close()
            raise InputError(
                f"{self.path} is an SQLite file of another program (tables: {', '.join(sorted(tables))}); "
                "pass another --db"
            )
        if "schema_version" not in tables:  # a new database, which another process may be creating right now
            self._use_wal()
            with self.transaction():  # BEGIN IMMEDIATE: one creator at a time; the others find its tables
                made = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
                if self.conn.execute(made).fetchone() is None:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self.conn.execute(statement)
                    self.conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        row = self.conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            self.conn.close()
            raise InputError(
                f"{self.path} has results schema version {row[0] if row else 'none'}, this mlsafety "
                f"reads version {SCHEMA_VERSION} (rows now carry a kind); keep that file for the mlsafety "
                "that wrote it and pass another --db, or move it aside to start a new one"
            )
        self.conn.execute("PRAGMA foreign_keys=ON")

    def _use_wal(self, timeout: float = 30.0) -> None:
        """Switch a new database to WAL. The switch needs the file to itself, and SQLite answers "locked" at once
        (no busy wait) while another process opening the same new file holds it: retried for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            # SQLite rolls a transaction back itself after some errors (a full disk, an I/O error); a ROLLBACK
            # then fails with "no transaction is active" and would hide the error that matters.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

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

    def update_config(self, run_id: str, changes: dict[str, Any]) -> None:
        """Replace top-level entries of a run's configuration record (``--resume`` records the gates of the
        command that continues the run: they change no stored number, and the report states them)."""
        with self.transaction() as c:
            row = c.execute("SELECT config_json FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                raise InputError(f"no run {run_id!r} in {self.path}")
            config = {**json.loads(row[0]), **changes}
            c.execute(
                "UPDATE runs SET config_json=? WHERE run_id=?",
                (json.dumps(config, sort_keys=True, default=str), run_id),
            )

    def _run(self, r: Sequence[Any]) -> RunInfo:
        return RunInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9])

    def runs(self) -> list[RunInfo]:
        """All runs, newest first."""
        return [self._run(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY created DESC, run_id DESC")]

    def run(self, run_id: str) -> RunInfo:
        """One run by its id or a unique prefix of it (taken literally); ``latest`` names the newest,
        ``previous`` the one before it.

        An empty, unknown or ambiguous id raises :class:`InputError` (an ambiguous one lists the
        runs it matches).
        """
        if not run_id.strip():
            raise InputError("the run id is empty; give a run id, a unique prefix of one, or `latest`")
        if run_id in ("latest", "previous"):
            skip = 0 if run_id == "latest" else 1
            r = self.conn.execute(
                "SELECT * FROM runs ORDER BY created DESC, run_id DESC LIMIT 1 OFFSET ?", (skip,)
            ).fetchone()
            if r is None:
                have = "no run" if skip == 0 else "fewer than two runs"
                raise InputError(f"{have} in {self.path} yet; run `mlsafety audit` first")
            return self._run(r)
        r = self.conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if r is not None:
            return self._run(r)
        matches = self.conn.execute(
            "SELECT * FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY created DESC, run_id DESC",
            (len(run_id), run_id),
        ).fetchall()
        if len(matches) == 1:
            return self._run(matches[0])
        if not matches:
            raise InputError(f"no run {run_id!r} in {self.path}; `mlsafety runs` lists them")
        shown = ", ".join(m[0] for m in matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
        raise InputError(f"run id {run_id!r} is ambiguous: it starts {len(matches)} runs ({shown}); give more of it")

    def unfinished(self) -> list[RunInfo]:
        """Runs not marked complete (running, interrupted or failed), newest first."""
        return [
            self._run(r)
            for r in self.conn.execute("SELECT * FROM runs WHERE status!='complete' ORDER BY created DESC, run_id DESC")
        ]

    def check_writable(self) -> None:
        """Raise :class:`InputError` now if the database cannot be written (a write that is rolled back)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("UPDATE schema_version SET version=version")
        finally:
            if self.conn.in_transaction:  # SQLite may have rolled back itself (see transaction)
                self.conn.execute("ROLLBACK")

    def task_counts(self) -> dict[str, int]:
        """Stored tasks per run id."""
        return dict(self.conn.execute("SELECT run_id, COUNT(*) FROM tasks GROUP BY run_id").fetchall())

    def result_counts(self) -> dict[str, int]:
        """Stored numbers per run id."""
        return dict(self.conn.execute("SELECT run_id, COUNT(*) FROM results GROUP BY run_id").fetchall())

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

    def task_rows(self, run_id: str, check: str, task_key: str) -> list[Row]:
        """The rows one stored task wrote, in its order, as the task returned them (what a later task that
        ``needs`` it reads on ``--resume``)."""
        query = "SELECT hazard, metric, value, ci_low, ci_high, n, params_json, kind FROM results "
        query += "WHERE run_id=? AND check_name=? AND task_key=? ORDER BY rowid"
        return [
            Row(h, m, v, lo, hi, n, json.loads(p), k)
            for h, m, v, lo, hi, n, p, k in self.conn.execute(query, (run_id, check, task_key))
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
