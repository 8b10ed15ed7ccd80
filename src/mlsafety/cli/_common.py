"""What every command shares: the two consoles, one-line errors, exit codes, paths and tables.

Exit codes: 0 ok, 1 a gate failed (or a compared metric got worse), 2 bad usage or bad input,
128 + the signal's number when stopped by one (130 SIGINT / Ctrl-C, 143 SIGTERM).

User text (paths, names, messages) is printed literally: both consoles have Rich markup off, and
styles are applied with :class:`rich.text.Text` spans only.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlsafety.core import MlsafetyError

if TYPE_CHECKING:
    from mlsafety.audit import Store

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
"""A gate failed, or ``compare --fail-on-change`` found a metric that got worse."""
EXIT_BAD_INPUT = 2
"""Bad usage or bad input (one red line on stderr)."""

err_console = Console(stderr=True, markup=False, highlight=False)
out_console = Console(markup=False, highlight=False)


class Finite(click.FloatRange):
    """A float option in a range that also refuses nan and inf (``click.FloatRange`` lets both through, nan
    passing every bound): a usage error naming the flag, exit 2, before the command runs."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        number = click.FLOAT.convert(value, param, ctx)  # finiteness first: inf is not "out of range" of [0, 10]
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class NonEmptyPath(click.Path):
    """A path option that refuses the empty string (an unset shell variable, ``--out "$DIR"``): click's
    ``Path`` takes it as ``.``, so a guard was written into the current folder and ``--db ""`` named it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("the path is empty; give a file or folder name", param, ctx)
        return super().convert(value, param, ctx)


class Seed(click.IntRange):
    """A seed option: an integer in [0, 2**63 - 1], as ``mlsafety audit`` takes it (a negative seed ran on some
    commands, named its outputs ``seed-1`` beside seed 1's, and failed inside NumPy on others)."""

    name = "seed"

    def __init__(self) -> None:
        super().__init__(0, 2**63 - 1)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"{value} is not a seed: give an integer in [0, 2**63 - 1], e.g. 0", param, ctx)


def exit_code_for(signum: int) -> int:
    """The exit status of a run stopped by signal ``signum`` (the shell's 128 + N)."""
    return 128 + signum


def line(label: str, message: str, style: str = "bold red") -> None:
    """One styled label and a literal message on stderr, never wrapped into several lines."""
    text = Text.assemble((label, style), " ", " ".join(message.splitlines()))
    err_console.print(text, soft_wrap=True)


def friendly(fn: F) -> F:
    """Turn a user-caused :class:`MlsafetyError` into one red line and exit code 2.

    Only :class:`MlsafetyError` (bad input, an unusable database or output path, a refused resume)
    is caught; any other exception is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlsafetyError as exc:
            ctx = click.get_current_context(silent=True)
            line("error:", own_advice(str(exc), command_options(ctx.command)) if ctx is not None else str(exc))
            sys.exit(EXIT_BAD_INPUT)

    return wrapper  # type: ignore[return-value]


FOREIGN_ADVICE: tuple[tuple[str, str, str], ...] = (
    ("--val", ", or pass --val", ""),  # without a zoo split, --data gives up 30% as the held-out fit data
    ("--channels", "(see --image-size, --channels)", "(see --image-size)"),
    ("--image-size", " (see --image-size)", ""),
    (
        "--classes",
        "give --classes with one name per output",
        "give a class list (classes.txt) with one name per output",
    ),
    ("--classes", "give both the same order (--classes a,b,c)", "give both the same order"),
    ("--classes", "no --classes or classes.txt given", "no classes.txt given"),
)
"""Advice in the audit's input messages (shared by every command that reads a model and data) that names an option
some commands lack: ``(option, phrase, what the phrase becomes on a command without the option)``, applied in order."""


def command_options(command: click.Command) -> set[str]:
    """Every option name (``--val``, ``-d``, ...) ``command`` takes."""
    return {name for p in command.params for name in (*p.opts, *p.secondary_opts)}


def own_advice(message: str, options: set[str]) -> str:
    """``message`` with advice naming options the command lacks rewritten to fixes it has (:data:`FOREIGN_ADVICE`):
    `ood eval` was told to "pass --val", an option only `audit` takes."""
    for option, phrase, ours in FOREIGN_ADVICE:
        if option not in options:
            message = message.replace(phrase, ours)
    return message


class _Stop(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program is, so it can stop cleanly."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _is_help(exc: click.UsageError) -> bool:
    """A group run without its command (`mlsafety zoo`): click (8.2 on) raises this usage error to show the
    group's help, which is no one-line error."""
    return type(exc).__name__ == "NoArgsIsHelpError"


class MainGroup(click.Group):
    """The root group: keeps the raw arguments (for the `--resume` hint) and handles SIGINT / SIGTERM."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["mlsafety.argv"] = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # an option before the command (`mlsafety --db x audit`): one line too
            if _is_help(exc):
                raise
            line("error:", f"{exc.format_message()} (see `{ctx.command_path} --help`)")
            ctx.exit(EXIT_BAD_INPUT)

    def _command_path(self, ctx: click.Context) -> str:
        """The subcommand the raw arguments name (``mlsafety ood eval``): click raises some usage errors (an
        option missing its value) without a context, and the root's help does not describe the option."""
        cmd: click.Command = self
        path = [ctx.command_path]
        for arg in ctx.meta.get("mlsafety.argv", []):
            sub = cmd.get_command(ctx, arg) if isinstance(cmd, click.Group) and not arg.startswith("-") else None
            if sub is None:
                break
            path.append(arg)
            cmd = sub
        return " ".join(path)

    def invoke(self, ctx: click.Context) -> Any:
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, _raise_stop)
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option value of a subcommand: one line, like bad input
            if _is_help(exc):
                raise
            where = exc.ctx.command_path if exc.ctx is not None else self._command_path(ctx)
            line("error:", f"{exc.format_message()} (see `{where} --help`)")
            ctx.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            line("interrupted:", f"stopped by {signal.Signals(signum).name}")
            ctx.exit(exit_code_for(signum))
        finally:
            for signum_, handler in old.items():
                signal.signal(signum_, handler)


def resume_command(ctx: click.Context) -> str:
    """The command line that was run, with ``--resume`` added (literal, shell-quoted)."""
    root = ctx.find_root()
    argv = list(root.meta.get("mlsafety.argv", sys.argv[1:]))
    if "--resume" not in argv:
        argv.append("--resume")
    return " ".join([root.info_name or "mlsafety", *(shlex.quote(a) for a in argv)])


def print_wide(table: Table) -> None:
    """Print a table at its natural width even past the terminal's: ids and keys are never cut."""
    width = table.__rich_measure__(out_console, out_console.options.update(width=100_000)).maximum
    if width <= out_console.width:
        out_console.print(table)
    else:
        Console(width=width, markup=False, highlight=False, file=out_console.file).print(table)


def print_path(label: str, path: Path) -> None:
    """``label`` and the absolute path in bold, on one line however wide (so it copies whole)."""
    out_console.print(Text.assemble(label, (str(path.resolve()), "bold")), soft_wrap=True)


def print_wrote(message: str) -> None:
    """A ``wrote ...`` line naming written files, never wrapped."""
    out_console.print(message, soft_wrap=True)


DB_OPTION = click.option(
    "--db",
    type=NonEmptyPath(dir_okay=False),
    help="Results database.  [default: $MLSAFETY_DB or ./mlsafety-runs.sqlite]",
)


MAX_BOOT = 1_000_000
"""The most bootstrap resamples a command takes (--n-boot): far past any interval's precision; 10**9 failed
allocating 40 GB with a traceback."""

IMAGE_SIZE_OPTION = click.option(
    "--image-size", nargs=2, type=int, help="H W to resize image folders to (needed when --data is an image folder)."
)


def open_store(db: str | None) -> Store:
    """The results database, opened read-only (SQLite ``mode=ro``): commands that only read it
    work on a read-only file or folder, and can never change it."""
    from mlsafety.audit import Store

    return Store(db, create=False, readonly=True)


def warn_unfinished(store: Store, run: Any) -> None:
    """One warning line on stderr (so --json output keeps its shape) when ``run`` is not complete."""
    if run.status != "complete":
        tasks = len(store.done_tasks(run.run_id))
        line(
            "warning:",
            f"run {run.run_id} is not complete (status: {run.status}): {tasks} tasks are stored; "
            "continue it with the same `mlsafety audit` command and --resume",
            style="bold yellow",
        )


THREADS_ENV = ("MLSAFETY_THREADS", "OMP_NUM_THREADS")
"""Environment variables that fix the number of torch threads (the first set wins); unset, it is chosen
from the free cores (:func:`choose_threads`)."""


def free_cores() -> int:
    """Cores this process may use (its CPU affinity) minus the load other processes put on them (the
    one-minute load average), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def choose_threads() -> int:
    """Set torch's intra-op threads from the free cores (or ``$MLSAFETY_THREADS`` / ``$OMP_NUM_THREADS``)
    and return the number: oversubscribed threads on a loaded machine wait on each other and collapse."""
    import torch

    for var in THREADS_ENV:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            torch.set_num_threads(int(value))
            return int(value)
    n = free_cores()
    torch.set_num_threads(n)
    return n
