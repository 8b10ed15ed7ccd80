"""The one training loop (``mlsafety.core.train``): its configuration, hooks and documented order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import (
    ArrayDataset,
    InputError,
    TrainConfig,
    UnknownNameError,
    generator,
    random_shift,
    register_recipe,
    seeded_init,
    train,
    training_recipe,
)
from tests.support.devices import refuse_global_reseeding


def _data(n: int = 40) -> ArrayDataset:
    g = generator(0, "test-train-data")
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    return ArrayDataset(x, y, name="toy")


def _net(seed: int = 0) -> nn.Module:
    return seeded_init(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2)), seed)


def _mean_loss(model: nn.Module, data: ArrayDataset) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(data.x), data.y))


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_train_lowers_the_loss_is_seeded_and_returns_eval_mode(optimizer: str) -> None:
    data = _data()
    before = _mean_loss(_net(), data)
    a = train(_net(), data, TrainConfig(epochs=30, lr=0.05, batch_size=8, optimizer=optimizer))
    assert not a.training and _mean_loss(a, data) < before
    assert _same(a, train(_net(), data, TrainConfig(epochs=30, lr=0.05, batch_size=8, optimizer=optimizer)))
    assert not _same(a, train(_net(), data, TrainConfig(epochs=30, lr=0.05, batch_size=8, optimizer=optimizer, seed=1)))


def test_settings_as_keywords_override_the_config() -> None:
    data = _data()
    config = TrainConfig(epochs=3, lr=0.01)
    assert _same(train(_net(), data, config, seed=4), train(_net(), data, config.replace(seed=4)))
    assert config.seed == 0  # replace gives a copy


def test_the_global_generator_is_left_as_it_was() -> None:
    net, data = _net(), _data()
    state = torch.get_rng_state()
    train(net, data, epochs=2)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("seed_dropout", [True, False])
def test_batch_order_follows_the_documented_draw_order(seed_dropout: bool) -> None:
    """One ``randperm`` per epoch from ``generator(seed, *stream)``, after the dropout seed draw if any."""
    n = 10
    data = ArrayDataset(torch.rand(n, 1, 2, 2), torch.arange(n), name="order")
    seen: list[torch.Tensor] = []

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        seen.append(y.clone())
        return model(x).sum() * 0

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, n))
    train(net, data, epochs=1, batch_size=n, seed=3, stream=("s", 1), seed_dropout=seed_dropout, loss=loss)
    g = generator(3, "s", 1)
    if seed_dropout:
        torch.randint(0, 2**62, (1,), generator=g)
    assert torch.equal(seen[0], torch.randperm(n, generator=g))


def test_hooks_see_every_batch_and_the_batch_hook_runs_on_the_cpu() -> None:
    data, calls = _data(25), {"augment": 0, "loss": 0}

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        assert x.device.type == "cpu" and isinstance(g, torch.Generator)
        calls["augment"] += 1
        return x

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        calls["loss"] += 1
        return F.cross_entropy(model(x), y)

    train(_net(), data, TrainConfig(epochs=3, batch_size=10, augment=augment), loss=loss)
    assert calls == {"augment": 3 * math.ceil(25 / 10), "loss": 3 * math.ceil(25 / 10)}


def test_the_schedule_changes_the_learning_rate_after_the_first_epoch() -> None:
    """Cosine annealing starts at ``lr`` and steps once per epoch; ``constant`` keeps ``lr``."""
    data = _data()

    def run(epochs: int, schedule: str) -> nn.Module:
        return train(_net(), data, epochs=epochs, schedule=schedule, lr=0.05)

    assert _same(run(1, "constant"), run(1, "cosine"))
    assert not _same(run(2, "constant"), run(2, "cosine"))


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(InputError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(InputError, match="optimizer must be one of"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(InputError, match="augment must be a function"):
        TrainConfig(augment=3)
    with pytest.raises(InputError, match="empty dataset"):
        train(_net(), ArrayDataset(torch.rand(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(InputError, match="no parameters"):
        train(nn.Flatten(), _data())
    with pytest.raises(InputError, match="unexpected keyword argument 'epoch'"):
        train(_net(), _data(), epoch=3)


def test_random_shift_moves_images_by_at_most_the_shift() -> None:
    x = torch.zeros(50, 1, 5, 5)
    x[:, :, 2, 2] = 1.0
    out = random_shift(x, generator(0, "shift"))
    where = out[:, 0].flatten(1).argmax(dim=1)
    rows, cols = where // 5, where % 5
    assert out.shape == x.shape and torch.equal(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    assert ((rows - 2).abs() <= 1).all() and ((cols - 2).abs() <= 1).all() and len(set(where.tolist())) > 1
    assert torch.equal(random_shift(x, generator(0, "shift"), max_shift=0), x)


def test_seeded_init_depends_only_on_seed_and_names() -> None:
    a, b, c = _net(0), _net(0), _net(1)
    assert _same(a, b) and not _same(a, c)


def test_seeded_init_seeds_a_bare_layer_too() -> None:
    # a single Linear has no children: it must still be re-drawn from the seed, not keep the
    # global generator's draw (minilm-mr's head was not reproducible before this)
    torch.manual_seed(1)
    a = seeded_init(nn.Linear(4, 3), 0, "head")
    torch.manual_seed(2)
    b = seeded_init(nn.Linear(4, 3), 0, "head")
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_recipes_are_found_by_name() -> None:
    def recipe(seed: int = 0, progress: object = None) -> nn.Module:
        return _net(seed)

    assert register_recipe("test-core-train-recipe", recipe) is recipe
    assert training_recipe("test-core-train-recipe") is recipe
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("test-core-train-recipe", lambda **kw: _net())
    with pytest.raises(UnknownNameError, match=r"import some\.module first"):
        training_recipe("no-such-recipe", home="some.module")


def _linear() -> nn.Module:
    return seeded_init(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), 0, "by-hand")


def _by_hand(optimizer: str, epochs: int, lr: float, wd: float, batch: int, data: ArrayDataset) -> list[torch.Tensor]:
    """The documented loop written out: one randperm per epoch from generator(seed, "train"), the step size
    lr (1 + cos(pi e / E)) / 2 in epoch e (the cosine schedule stepped once per epoch, so the last epoch runs
    at lr (1 + cos(pi (E - 1) / E)) / 2, not 0), the L2 penalty wd w added to the gradient (Adam's coupled
    weight decay, not AdamW's), SGD momentum 0.9 / Adam (0.9, 0.999, eps 1e-8)."""
    net = _linear()
    w = [p.detach().clone() for p in net.parameters()]
    m = [torch.zeros_like(p) for p in w]
    v = [torch.zeros_like(p) for p in w]
    g, t = generator(0, "train"), 0
    for e in range(epochs):
        step_lr = lr * (1 + math.cos(math.pi * e / epochs)) / 2
        perm = torch.randperm(len(data), generator=g)
        for start in range(0, len(data), batch):
            idx = perm[start : start + batch]
            with torch.no_grad():
                for p, q in zip(net.parameters(), w, strict=True):
                    p.copy_(q)
            grads = torch.autograd.grad(F.cross_entropy(net(data.x[idx]), data.y[idx]), list(net.parameters()))
            t += 1
            for i, gr in enumerate(grads):
                d = gr + wd * w[i]
                if optimizer == "sgd":
                    m[i] = 0.9 * m[i] + d
                    w[i] = w[i] - step_lr * m[i]
                else:
                    m[i] = 0.9 * m[i] + 0.1 * d
                    v[i] = 0.999 * v[i] + 0.001 * d * d
                    m_hat, v_hat = m[i] / (1 - 0.9**t), v[i] / (1 - 0.999**t)
                    w[i] = w[i] - step_lr * m_hat / (v_hat.sqrt() + 1e-8)
    return w


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_loop_matches_the_documented_optimiser_and_per_epoch_cosine_schedule_by_hand(optimizer: str) -> None:
    data = _data(20)
    config = TrainConfig(epochs=3, lr=0.1, weight_decay=0.05, batch_size=8, optimizer=optimizer, seed_dropout=False)
    trained = train(_linear(), data, config)
    want = _by_hand(optimizer, 3, 0.1, 0.05, 8, data)
    for p, q in zip(trained.parameters(), want, strict=True):
        torch.testing.assert_close(p.detach(), q, atol=1e-6, rtol=1e-5)
    # a per-step schedule, or no weight decay, is another run (the comparison can fail)
    assert not torch.allclose(next(iter(trained.parameters())), _by_hand(optimizer, 3, 0.1, 0.0, 8, data)[0], atol=1e-4)


def test_hooks_run_in_train_mode_and_batch_norm_statistics_come_from_the_training_batches() -> None:
    """The loss hook sees the model in train mode (dropout on, batch-norm updating its running statistics
    from the batches it is given); the model comes back in eval mode with those statistics."""
    data = _data(16)
    net = seeded_init(nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(16, 2)), 0)
    modes: list[bool] = []

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        modes.append(model.training)
        return F.cross_entropy(model(x + 10.0), y)  # the statistics must follow what the model saw

    trained = train(net, data, epochs=3, batch_size=16, loss=loss)
    bn = trained[0]
    assert modes == [True] * 3 and not trained.training and not bn.training
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
    mean, var = float(data.x.mean()) + 10, float(data.x.var())  # the batch is the whole data: one value each step
    assert float(bn.running_mean) == pytest.approx(mean * (1 - 0.9**3), rel=1e-5)
    assert float(bn.running_var) == pytest.approx(0.9**3 + var * (1 - 0.9**3), rel=1e-5)


def test_seeding_reseeds_no_generator_it_does_not_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    """seeded_init and train's dropout seeding called torch.manual_seed, which also reseeds every GPU's generator,
    while fork_rng restored none (seeded_init) or the model's device alone: the caller's CUDA stream was reset."""
    data = _data()
    want_init, want_trained = _net(0), train(_net(0), data, epochs=2, seed_dropout=True)
    refuse_global_reseeding(monkeypatch)
    assert _same(_net(0), want_init)
    assert _same(train(_net(0), data, epochs=2, seed_dropout=True), want_trained)
