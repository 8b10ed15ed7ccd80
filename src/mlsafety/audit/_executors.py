"""Where an audit's tasks run: in the driver process, one after another (:class:`LocalExecutor`), or as
Ray tasks on a local or remote Ray cluster (:class:`RayExecutor`, the ``ray`` extra).

The engine (``_engine.py:run_audit``) plans the tasks, hands the ones not yet stored to an executor and
writes what comes back: only the driver writes the SQLite store, so ``--resume``, the report and gates
work the same with either executor. An executor yields results in the tasks' order (a Ray task that
finishes early waits in the driver's memory until those before it are stored), so the store's rows are
in the same order as a local run's.

What travels (Ray): the audit context once per run (``ray.put``: the model, the data, the seed and the
checks' parameters, plus anything computed while the audit was planned, such as the trojan scan that
names the trojan hazards); each Ray task names its check and task key and returns the task's rows and
artifacts. A check's tasks travel together as one streaming Ray task when the cluster has fewer CPUs than
the run has checks (they share what they compute), each on its own otherwise; the runs of ``audit-many``
travel a unit per check, the attacks one by one, or whole when a check reads other checks' hazards
(:meth:`RayExecutor._units`). A task that reads another's rows (``Task.needs``: the robustness curve)
gets them as that Ray task's result, never by recomputing it. A worker keeps the context of the runs it
last worked on, so tasks of one run that land on the same worker share forward passes and hazard inputs as
they do in one process; a task on another worker recomputes what it needs, which gives the same numbers
because every random choice is seeded by the task's names (``core/_random.py:derive_seed``), not by the
order tasks run in.

Deviation from a local run: with a budget (``--budget``, or the one ``--quick`` presets) a local run
re-plans the sample sizes of checks not yet started from the measured times of those done; on Ray all
tasks are sent at once, so the first plan's sizes are kept (and stored as such).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.machinery
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mlsafety.audit._check import Check, Task, TaskResult
from mlsafety.audit._context import AuditContext
from mlsafety.core import InputError

EXECUTORS = ("local", "ray")
"""The names ``--executor`` takes."""

INSTALL_RAY = "pip install 'mlsafety[ray]'"

CONNECT_TIMEOUT_S = 5.0
"""How long joining a Ray cluster waits for its address to answer before the audit is refused."""

Pending = Sequence[tuple[int, Check, Task]]
"""Tasks to run: (index in the run's task list, check, task), in the run's order."""


class Executor(Protocol):
    """Runs an audit's tasks and streams back what each produced, in the order given."""

    name: str
    replans: bool
    """Whether a check's ``before`` comes after the tasks before it have run, so the engine may re-plan its
    sample sizes from their measured times (False: every task is sent at once and the first plan holds)."""

    def start(self) -> None:
        """Acquire what running needs (a Ray session); called once inputs are checked, before a run is
        stored. Raises :class:`InputError` in one line when it cannot (an address that does not answer)."""

    def run(
        self, ctx: AuditContext, pending: Pending, before: Callable[[Check], None]
    ) -> Iterator[tuple[int, Check, Task, TaskResult, float]]:
        """Yield (index, check, task, result, seconds) for every pending task, in ``pending``'s order.

        ``before(check)`` is called once per check, before its first result is yielded (the engine writes
        the check's chosen sample sizes there); with :attr:`replans`, also before its first task starts."""
        ...


class LocalExecutor:
    """The tasks one after another in this process (the default)."""

    name = "local"
    replans = True

    def start(self) -> None:
        return None

    def run(
        self, ctx: AuditContext, pending: Pending, before: Callable[[Check], None]
    ) -> Iterator[tuple[int, Check, Task, TaskResult, float]]:
        started: set[str] = set()
        for i, check, task in pending:
            if check.name not in started:
                before(check)
                started.add(check.name)
            t0 = time.perf_counter()
            result = task.run()
            yield i, check, task, result, time.perf_counter() - t0


@dataclass
class _Job:
    """What a Ray worker needs to rebuild a run's tasks: the context (model and data included) and the
    run's checks. Put into the object store once per run."""

    token: str
    ctx: AuditContext
    checks: dict[str, Check]


_WORKER_JOBS: dict[str, tuple[_Job, dict[str, dict[str, Task]]]] = {}
"""On a Ray worker: the jobs it has run tasks of (at most :data:`_KEEP_JOBS`, newest last), with the tasks
each check planned there, so the tasks of one run that land on one worker share the context's caches."""

_KEEP_JOBS = 2


def _held(job: _Job) -> tuple[_Job, dict[str, dict[str, Task]]]:
    """The worker's cached copy of ``job`` (the first one it received, whose context holds the run's caches)."""
    cached = _WORKER_JOBS.pop(job.token, None)
    if cached is None:
        cached = (job, {})
    _WORKER_JOBS[job.token] = cached  # newest last
    while len(_WORKER_JOBS) > _KEEP_JOBS:
        _WORKER_JOBS.pop(next(iter(_WORKER_JOBS)))
    return cached


def _hand_over(held: _Job, needs: Sequence[tuple[str, str]], deps: Sequence[tuple[TaskResult, float]]) -> None:
    """Put the results of other Ray tasks (``deps``, resolved by Ray, in ``needs``' order) where a task that
    needs them reads them (``ctx.rows_of``)."""
    for (check_name, key), (result, _seconds) in zip(needs, deps, strict=True):
        held.ctx.earlier[(check_name, key)] = list(result.rows)


def _run_held(held: _Job, tasks: dict[str, dict[str, Task]], check_name: str, key: str) -> tuple[TaskResult, float]:
    if check_name not in tasks:
        check = held.checks[check_name]
        tasks[check_name] = {t.key: t for t in check.tasks(held.ctx)}
    t0 = time.perf_counter()
    result = tasks[check_name][key].run()
    return result, time.perf_counter() - t0


def _worker_task(
    job: _Job, check_name: str, key: str, needs: Sequence[tuple[str, str]] = (), *deps: tuple[TaskResult, float]
) -> tuple[TaskResult, float]:
    """Run one task of ``job`` on a Ray worker (the remote function's body); ``deps`` are the results of the
    Ray tasks named in ``needs`` (check, key) that this task reads."""
    held, tasks = _held(job)
    _hand_over(held, needs, deps)
    return _run_held(held, tasks, check_name, key)


def _worker_run(
    job: _Job, items: list[tuple[int, str, str]], needs: Sequence[tuple[str, str]] = (), *deps: tuple[TaskResult, float]
) -> Iterator[tuple[int, TaskResult, float]]:
    """Several tasks of a run on one Ray worker, in order, each result streamed back as it ends (a Ray
    generator task): (index, result, seconds). A task's rows stay at hand for the later ones that need them."""
    held, tasks = _held(job)
    _hand_over(held, needs, deps)
    for i, check_name, key in items:
        result, seconds = _run_held(held, tasks, check_name, key)
        held.ctx.earlier[(check_name, key)] = list(result.rows)  # rows are small; a later task may need them
        yield i, result, seconds


def import_ray() -> Any:
    """The ``ray`` module, or :class:`InputError` saying how to install it.

    Ray's C++ failure signal handler is turned off unless the environment says otherwise
    (``RAY_DISABLE_FAILURE_SIGNAL_HANDLER``, read when Ray is first imported, and by the Ray processes started
    from here): it printed "*** SIGTERM received at ..." lines, and ``ray.shutdown`` uninstalls it by setting
    SIGTERM to the default action, so a SIGTERM while Ray shut down, or after, killed the audit with no message
    and left a Ray process running. Deviation: a crashing Ray worker then prints no C++ stack trace (its
    Python error is reported as before)."""
    os.environ.setdefault(NO_FAILURE_HANDLER, "1")
    try:
        import ray
    except ImportError:
        raise InputError(f"--executor ray needs Ray, which is not installed: {INSTALL_RAY}") from None
    return ray


def _check_address(address: str, timeout: float) -> None:
    """Refuse (one line) a ``host:port`` or ``ray://host:port`` address that does not accept a connection, or
    accepts one but does not answer gRPC's HTTP/2 preface as Ray's GCS and client server do (:func:`_first_frame`).

    Deviation: with Ray's TLS on (``RAY_USE_TLS``) its servers answer a TLS handshake alone, so only the
    connection is checked there."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            if _ray_uses_tls():  # a cleartext preface gets no SETTINGS frame from a TLS server
                return
            first = _first_frame(sock, timeout)
    except OSError as exc:
        raise InputError(
            f"Ray address {address} does not answer ({exc.strerror or type(exc).__name__} within {timeout:g} s); "
            "start the cluster (`ray start --head`) or fix --ray-address / RAY_ADDRESS"
        ) from None
    if len(first) < 9 or first[3] != HTTP2_SETTINGS:
        raise InputError(
            f"Ray address {address} does not answer as a Ray cluster (no gRPC reply; the dashboard's port?); "
            "give the head's GCS port (`ray start --head` prints it, default 6379) "
            "or ray://HOST:10001"
        )


def _ray_uses_tls() -> bool:
    """Whether Ray's gRPC channels use TLS here: ``RAY_USE_TLS`` read as Ray reads it (``ray._private.grpc_utils``)."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04" + bytes(5)
"""The HTTP/2 client connection preface and an empty SETTINGS frame (RFC 9113, section 3.4)."""

HTTP2_SETTINGS = 0x04
"""The type of the frame an HTTP/2 server sends first (its preface): a SETTINGS frame."""


def _first_frame(sock: socket.socket, timeout: float) -> bytes:
    """The first 9 bytes (a frame header) a server sends after the HTTP/2 client preface, or fewer.

    Ray's GCS and its client server are gRPC services, so they answer with a SETTINGS frame; a service of
    another protocol (the dashboard's HTTP/1.1, a database) answers otherwise or not at all. Without this check
    ``ray.init`` retried such an address for more than ten minutes, printing a warning every few seconds."""
    sock.settimeout(timeout)
    sock.sendall(HTTP2_PREFACE)
    got = b""
    deadline = time.monotonic() + timeout
    try:
        while len(got) < 9 and time.monotonic() < deadline:
            chunk = sock.recv(9 - len(got))
            if not chunk:
                break
            got += chunk
    except (TimeoutError, ConnectionError):
        pass
    return got


def _pickle_user_modules(ctx: AuditContext) -> None:
    """Send the classes of a model loaded from a user's file (``--model FILE.py:factory``) by value, since
    Ray workers cannot import that file by name."""
    from ray import cloudpickle  # Ray's own copy, the one that serialises task arguments

    module = getattr(ctx.model, "module", ctx.model)
    names = {type(m).__module__ for m in module.modules()} if hasattr(module, "modules") else set()
    for name in names:
        mod = sys.modules.get(name)
        if mod is None or name == "__main__":
            continue
        try:  # the path finder, not find_spec: that one answers from sys.modules
            spec = importlib.machinery.PathFinder.find_spec(name.partition(".")[0])
        except (ImportError, ValueError):
            spec = None
        if spec is None:  # loaded from a path, not importable by name
            cloudpickle.register_pickle_by_value(mod)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop an audit (the CLI turns both into :class:`KeyboardInterrupt`)."""

NO_FAILURE_HANDLER = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


@contextlib.contextmanager
def _caller_signal_handlers() -> Iterator[None]:
    """Put back, after the block, the SIGINT / SIGTERM handlers the caller set (a Python function or SIG_IGN).

    ``ray.init`` replaces them: it installs a SIGTERM handler that calls ``sys.exit`` (and, starting a node, one
    that stops Ray's processes and exits 1), and its C++ core a failure handler that prints "*** SIGTERM
    received at ..." lines. With those, SIGTERM stopped a CLI audit as a failure: no --resume line, the run
    stored ``failed``, exit 15 or 1. A caller that left the default keeps Ray's handlers. Main thread only
    (elsewhere no handler can be set). The C++ failure handler is kept out by :func:`import_ray`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            if callable(handler) or handler == signal.SIG_IGN:
                signal.signal(s, handler)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT / SIGTERM while the block runs (Ray shutting down: stopped half-way it leaves its processes
    running) and deliver them after it, to the handlers in force before it. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    held = [s for s, h in before.items() if h is not None]  # None: a handler not set from Python, left alone
    for s in held:
        signal.signal(s, lambda signum, _frame: got.append(signum))
    try:
        yield
    finally:
        for s in held:
            signal.signal(s, before[s])
        for signum in dict.fromkeys(got):
            signal.raise_signal(signum)


@contextlib.contextmanager
def _handlers_own_errors() -> Iterator[None]:
    """Around a blocking Ray call: what a SIGINT / SIGTERM handler raised, not Ray's bare KeyboardInterrupt.

    ``ray.get``, ``ray.wait`` and a stream's ``next`` run the Python signal handlers while they wait, but turn
    the exception a handler raised into a new, bare :class:`KeyboardInterrupt`: the CLI's, which names the
    signal (exit 143 for SIGTERM, 130 for SIGINT), was lost, and SIGTERM read as SIGINT. The handlers are
    wrapped for the call so that what they raise is re-raised instead. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[BaseException] = []

    def keeping(handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
        def wrapper(signum: int, frame: Any) -> Any:
            try:
                return handler(signum, frame)
            except BaseException as exc:
                raised.append(exc)
                raise

        return wrapper

    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    wrapped = {s: h for s, h in before.items() if callable(h)}
    for s, h in wrapped.items():
        signal.signal(s, keeping(h))
    try:
        yield
    except KeyboardInterrupt as exc:
        if raised and exc is not raised[-1]:
            raise raised[-1] from None
        raise
    finally:
        for s, h in wrapped.items():
            signal.signal(s, h)


class RayExecutor:
    """The audit's tasks as Ray tasks, each asking for one CPU (and one GPU when the model is on one).

    Args:
        address: a cluster to join (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``); None: ``$RAY_ADDRESS``,
            else a local Ray is started (no dashboard, no usage statistics). A Ray session this process
            already holds (``ray.init`` called by the caller) is used as it is.
        num_cpus: CPUs of a local Ray (None: the machine's); ignored when joining a cluster.
        connect_timeout: seconds an address may take to accept a connection.

    An executor that started or joined Ray shuts its session down in :meth:`close` (for a cluster: the
    driver disconnects); a session the caller started is left running. Starting Ray keeps the caller's SIGINT
    and SIGTERM handlers (``ray.init`` replaces them with its own); a signal that arrives while Ray shuts down
    is delivered once it is down.

    Deviation: Ray 2.60 cannot be bound to 127.0.0.1 from ``ray.init``: it replaces a loopback node address
    with the machine's reachable one (``ray._private.services.resolve_ip_for_localhost``) and its gRPC
    servers listen on every interface. The dashboard (the HTTP service) is off; on a shared network,
    firewall the machine or run ``ray start --head --node-ip-address=127.0.0.1`` yourself and join it.
    """

    name = "ray"
    replans = False

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, connect_timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.ray = import_ray()  # refused before anything else happens when Ray is missing
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if self.address is not None:
            _check_address(self.address, connect_timeout)
        if num_cpus is not None and num_cpus < 1:
            raise InputError(f"a local Ray needs at least 1 CPU (got {num_cpus})")
        self.num_cpus = num_cpus
        self.connect_timeout = connect_timeout
        self.startup_seconds: float | None = None
        self._owned = False
        self._remote: Any = None
        self._remote_run: Any = None
        self.per_run = False

    def start(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            self._remote = self._remote or ray.remote(_worker_task)
            self._remote_run = self._remote_run or ray.remote(_worker_run)
            return
        t0 = time.perf_counter()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
        common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        try:
            with _caller_signal_handlers():
                if self.address is None:
                    ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, **common)
                    self._owned = True
                else:
                    common.pop("include_dashboard")
                    ray.init(address=self.address, **common)
                    self._owned = True
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot start or join Ray ({self.address or 'local'}): {first}") from None
        self.startup_seconds = time.perf_counter() - t0
        self._remote = ray.remote(_worker_task)
        self._remote_run = ray.remote(_worker_run)

    def per_run_view(self) -> RayExecutor:
        """This executor (same session) grouping each run's tasks for ``audit-many``, which uses it when there
        are at least as many models as CPUs: a unit per check (per task for the attacks), or the whole run on
        one worker when a check reads other checks' hazards (:meth:`_units`)."""
        view = copy.copy(self)
        view.per_run = True
        return view

    def slots(self) -> int:
        """CPUs of the Ray cluster (started or joined on first use)."""
        if self._remote is None:
            self.start()
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def close(self) -> None:
        if self._owned and self.ray.is_initialized():
            with _signals_held():
                self.ray.shutdown()
        self._owned = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self, ctx: AuditContext, pending: Pending, before: Callable[[Check], None]
    ) -> Iterator[tuple[int, Check, Task, TaskResult, float]]:
        if self._remote is None:
            self.start()
        ray = self.ray
        remote = [(i, c, t) for i, c, t in pending if c.not_applicable(ctx.modality) is None]
        inline = {i for i, c, t in pending if c.not_applicable(ctx.modality) is not None}
        shipped = copy.copy(ctx)
        shipped.progress = None  # a progress display belongs to the driver's terminal
        _pickle_user_modules(ctx)
        job = _Job(uuid.uuid4().hex, shipped, {c.name: c for _, c, _ in remote})
        gpus = 1 if ctx.device.type == "cuda" else 0
        fn = self._remote.options(num_cpus=1, num_gpus=gpus, max_retries=0)
        run_fn = self._remote_run.options(num_cpus=1, num_gpus=gpus, max_retries=0)
        job_ref = ray.put(job) if remote else None
        streams: dict[int, Any] = {}  # a unit's number -> its streaming Ray task (a unit of several tasks)
        unit_of: dict[int, int] = {}  # a task's index -> the number of its stream
        refs: dict[Any, int] = {}  # a Ray task of one task -> that task's index
        ref_of: dict[tuple[str, str], Any] = {}
        for u, unit in enumerate(self._units(remote)):
            inside = {(c.name, t.key) for _, c, t in unit}
            needs = [
                (c.name, k) for _, c, t in unit for k in t.needs if (c.name, k) not in inside and (c.name, k) in ref_of
            ]
            deps = [ref_of[n] for n in needs]
            lost = [(c.name, k) for _, c, t in unit for k in t.needs if (c.name, k) not in inside | set(ref_of)]
            assert all(n in ctx.earlier for n in lost), f"rows needed from another stream: {lost}"  # _units' rule
            if len(unit) == 1:
                i, c, t = unit[0]
                ref = fn.remote(job_ref, c.name, t.key, needs, *deps)
                refs[ref] = i
                ref_of[(c.name, t.key)] = ref
            else:
                streams[u] = run_fn.remote(job_ref, [(i, c.name, t.key) for i, c, t in unit], needs, *deps)
                unit_of.update({i: u for i, _c, _t in unit})
        ready: dict[int, tuple[TaskResult, float]] = {}
        waiting = list(refs)
        started: set[str] = set()
        try:
            for i, check, task in pending:
                if check.name not in started:  # the check's size rows before its results, as in a local run
                    before(check)
                    started.add(check.name)
                if i in inline:
                    t0 = time.perf_counter()
                    result = task.run()
                    yield i, check, task, result, time.perf_counter() - t0
                    continue
                if i in unit_of:  # each stream yields its tasks in the run's order
                    with _handlers_own_errors():
                        j, result, seconds = _get(ray, next(streams[unit_of[i]]))
                    assert j == i, (j, i)
                    yield i, check, task, result, seconds
                    continue
                while i not in ready:
                    with _handlers_own_errors():
                        done, waiting = ray.wait(waiting, num_returns=1)
                        for ref in done:
                            ready[refs[ref]] = _get(ray, ref)
                result, seconds = ready.pop(i)
                yield i, check, task, result, seconds
            for key in list(streams):
                with _handlers_own_errors():
                    for _ in streams[key]:  # the generator's end: Ray finishes the task before it is forgotten
                        pass
                del streams[key]
        finally:
            for ref in waiting:  # an interruption or a failed task: stop what is still queued
                ray.cancel(ref, force=True)
            for stream in streams.values():  # stopped early (cancelling a finished generator task crashes Ray 2.60)
                ray.cancel(stream)

    def _units(self, remote: Pending) -> list[list[tuple[int, Check, Task]]]:
        """How the run's tasks travel, in the run's order: each unit goes to one worker (a unit of several tasks
        as one streaming Ray task, a single task as a plain one).

        - ``audit-many`` (:meth:`per_run_view`): a unit per check, and a unit per task of a check whose tasks
          are independent (:attr:`~mlsafety.audit._check.Check.independent_tasks`: the attacks), so the runs'
          dear tasks spread over the workers and the last runs' tasks do not wait on one worker; a run with a
          check that reads other checks' hazards (defence in depth) stays whole, so no worker rebuilds another's
          attacks.
        - One audit on a cluster with fewer CPUs than the run has checks: a unit per check, and the attacks one
          by one unless a check reads other checks' hazards (the default audit on 2 CPUs took 1.14x longer
          with the attacks split, range 0.96-1.32, as defence in depth then rebuilds those its worker lacks;
          ``bench/results/ray_one_audit.md``); with more CPUs, every task on its own.

        A check's tasks share what they compute (a trojan scan feeds its hazards), so on one worker they compute
        it once; sent one by one, each worker that got one would recompute it. A task that reads another's
        rows (:attr:`~mlsafety.audit._check.Task.needs`: the robustness curve from the attacks' rows) gets
        them from that task's Ray result, without recomputing. Checks still share the clean forward pass,
        which a check on another worker recomputes (cheap)."""
        if not remote:
            return []
        by_check: dict[str, list[tuple[int, Check, Task]]] = {}
        for item in remote:
            by_check.setdefault(item[1].name, []).append(item)
        reads = any(items[0][1].reads_other_checks for items in by_check.values())
        if self.per_run and reads:
            return [list(remote)]
        if not self.per_run and self.slots() >= len(by_check):
            return [[item] for item in remote]
        units: list[list[tuple[int, Check, Task]]] = []
        for items in by_check.values():  # split a check's independent tasks unless another check reads them
            units += [[item] for item in items] if items[0][1].independent_tasks and not reads else [items]
        return sorted(units, key=lambda unit: unit[0][0])


def _get(ray: Any, ref: Any) -> Any:
    """A task's result; a task that raised re-raises its own exception here, as in a local run (an
    :class:`InputError` stays one line), not Ray's wrapper with the worker's traceback in its message."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None) -> Executor:
    """The executor ``--executor NAME`` names; a Ray address only goes with ``ray``.

    Raises:
        InputError: an unknown name, an address given to the local executor, Ray not installed, or
            an address that does not answer.
    """
    if name not in EXECUTORS:
        raise InputError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    if name == "local":
        if address:
            raise InputError("--ray-address goes with --executor ray")
        return LocalExecutor()
    return RayExecutor(address=address, num_cpus=num_cpus)


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "import_ray", "make_executor"]
