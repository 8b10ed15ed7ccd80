import pytest
import torch

from mlsafety.core import InputError, Registry, UnknownNameError, derive_seed, generator, randn_like


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
    with pytest.raises(InputError, match="bad parameters"):
        reg.create("a-b", nope=1)


def test_generators_depend_only_on_seed_and_names():
    a = torch.rand(3, generator=generator(1, "pgd", 0.1))
    torch.rand(100)  # global state must not matter
    b = torch.rand(3, generator=generator(1, "pgd", 0.1))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(3, generator=generator(1, "pgd", 0.2)))
    assert derive_seed(0, "x") != derive_seed(1, "x")
    x = torch.zeros(2, 3)
    assert torch.equal(randn_like(x, generator(0, "n")), randn_like(x, generator(0, "n")))
