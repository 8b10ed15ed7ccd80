"""Seeded generators derived from the run seed and a task's name.

A result must not depend on the order in which tasks run or on the machine that runs them, so no
code draws from PyTorch's global generator: every random choice takes a generator from
:func:`generator`, whose seed is a hash of the run seed and the task's names.

One form everywhere: functions that draw random numbers take ``generator: torch.Generator``; the
audit derives it from (run seed, check, task) with :func:`generator` (``AuditContext.generator``).
An integer ``seed`` remains only as a registered algorithm's constructor hyper-parameter (attacks,
scanners, SmoothGrad, MC dropout: the default generator of a call that is given none) and as a
training recipe's seed (the provenance of shipped weights); never are both passed for one draw.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator

import torch


def derive_seed(seed: int, *names: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``names`` (stable across processes)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(seed)).encode())
    for name in names:
        h.update(b"\x1f")
        h.update(str(name).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def generator(seed: int, *names: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded from ``seed`` and ``names``.

    Args:
        seed: the run seed.
        *names: the task's name parts, e.g. ``generator(0, "pgd", 0.1)``.
        device: where the generator lives. Keep the default (CPU) and move samples to the target
            device with :func:`rand_like`/:func:`randn_like` for results that are identical on
            every device.
    """
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *names))
    return g


def draw_seed(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from ``generator``, for code that can only be seeded with an integer.

    PyTorch's dropout and weight initialisers draw from the global generators; run them under
    :func:`seeded_global` so the caller's generator decides them and the global state is left as it was.
    """
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


@contextlib.contextmanager
def seeded_global(generator: torch.Generator, devices: Iterable[torch.device | str] = ()) -> Iterator[None]:
    """The CPU's global generator and those of the GPUs among ``devices`` seeded from ``generator`` for the
    block (one :func:`draw_seed`), and put back as they were after it.

    Not ``torch.manual_seed``: it reseeds every GPU's generator, while ``torch.random.fork_rng`` restores only
    the devices it is given, so the caller's CUDA random stream was reset by a CPU computation.

    Example:
        >>> with seeded_global(generator(0, "init"), [p.device for p in model.parameters()]):
        ...     model.reset_parameters()
    """
    gpus = list(dict.fromkeys(d for d in map(torch.device, devices) if d.type == "cuda"))
    seed = draw_seed(generator)
    with torch.random.fork_rng(devices=gpus):
        torch.random.default_generator.manual_seed(seed)
        for d in gpus:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield


def _sample(fn, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    gen_device = gen.device if gen is not None else x.device
    out = fn(x.shape, generator=gen, device=gen_device, dtype=x.dtype if x.is_floating_point() else None)
    return out.to(x.device)


def rand_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform [0, 1) noise shaped like ``x`` on ``x``'s device, drawn from ``generator``."""
    return _sample(torch.rand, x, generator)


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` on ``x``'s device, drawn from ``generator``."""
    return _sample(torch.randn, x, generator)
