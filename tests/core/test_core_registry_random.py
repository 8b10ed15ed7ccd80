import pytest
import torch

from mlsafety.core import (
    InputError,
    Registry,
    UnknownNameError,
    derive_seed,
    draw_seed,
    generator,
    randn_like,
    seeded_global,
)
from tests.support.devices import refuse_global_reseeding


def test_registry():
    reg: Registry[object] = Registry("widget")

    @reg.register("a-b")
    class AB:
        def __init__(self, k: int = 1) -> None:
            self.k = k

    assert reg.available() == ["a-b"] and reg.create("a-b", k=3).k == 3 and AB.name == "a-b"
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a-b")(AB)
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("A_b")
    with pytest.raises(UnknownNameError, match="Did you mean 'a-b'"):
        reg.create("a-c")
    for bad in (5, ["a-b"], None):  # not a text: one line (a TypeError from the name suggestion before)
        with pytest.raises(UnknownNameError, match=r"a widget is named by a text, got .*Available: a-b$"):
            reg.get(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"'a-b' has no parameter 'nope'\. Valid parameters: k$"):
        reg.create("a-b", nope=1)


def test_registry_names_valid_parameters_of_a_bad_call():
    reg: Registry[object] = Registry("widget")

    @reg.register("w")
    class W:
        def __init__(self, eps: float, steps: int = 3) -> None:
            self.eps, self.steps = eps, steps

    assert reg.parameters("w") == ["eps", "steps"]
    with pytest.raises(InputError, match=r"no parameter 'step'\. Did you mean 'steps'\? Valid parameters: eps, steps"):
        reg.create("w", eps=0.1, step=2)
    with pytest.raises(InputError, match=r"missing a required argument: 'eps'\. Valid parameters: eps, steps"):
        reg.create("w", steps=2)
    with pytest.raises(UnknownNameError, match="Available: w"):
        reg.create("nope")


def test_generators_depend_only_on_seed_and_names():
    a = torch.rand(3, generator=generator(1, "pgd", 0.1))
    torch.rand(100)  # global state must not matter
    b = torch.rand(3, generator=generator(1, "pgd", 0.1))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(3, generator=generator(1, "pgd", 0.2)))
    assert derive_seed(0, "x") != derive_seed(1, "x")
    x = torch.zeros(2, 3)
    assert torch.equal(randn_like(x, generator(0, "n")), randn_like(x, generator(0, "n")))


def test_draw_seed_comes_from_the_generator_only():
    a = draw_seed(generator(3, "task"))
    torch.manual_seed(123)  # global state must not matter
    assert a == draw_seed(generator(3, "task")) and 0 <= a < 2**62
    assert a != draw_seed(generator(3, "other-task"))


def test_core_public_api_has_the_foundation_names():
    import mlsafety.core as core  # order and resolvability: tests/test_public_api.py

    assert {"DataLike", "as_array_dataset", "iter_batches", "draw_seed", "generator"} <= set(core.__all__)


def test_seeded_global_seeds_the_cpu_from_the_generator_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    want = torch.rand(5, generator=torch.Generator().manual_seed(draw_seed(generator(4, "global"))))
    refuse_global_reseeding(monkeypatch)
    before = torch.get_rng_state()
    with seeded_global(generator(4, "global"), ["cpu"]):
        got = torch.rand(5)
    assert torch.equal(got, want)
    assert torch.equal(torch.get_rng_state(), before)
