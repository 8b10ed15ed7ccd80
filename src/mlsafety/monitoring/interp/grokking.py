"""Grokking on modular addition and the Fourier progress measures of its mechanism.

Power et al. 2022, "Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets":
a small transformer trained on ``a + b mod p`` with strong weight decay first memorises the
training pairs, and only much later does its test accuracy jump. Nanda et al. 2023, "Progress
measures for grokking via mechanistic interpretability", show that the network computes the sum
with a few key Fourier frequencies and that measures of that circuit (the *restricted loss*, the
*excluded loss*) and the total weight norm move well before the test accuracy does.

:func:`grokking_recipe` trains Nanda's one-layer, layer-norm-free transformer full-batch with
AdamW (weight decay 1.0) and keeps a checkpoint every ``every`` steps; :func:`progress_measures`
computes, per checkpoint, train and test loss and accuracy, the weight norm, and the restricted and
excluded losses, with the key frequencies read from the final checkpoint's embedding.

Departures from Nanda et al.: the key frequencies are found from the Fourier spectrum of the token
embedding (the frequencies holding ``key_share`` of its norm), not from the neuron-logit map; the
restricted and excluded losses project each answer's *logit* column (a function of ``(a, b)`` over
all ``p^2`` pairs) onto ``cos/sin(w_k (a + b))``, where the paper projects the MLP neurons and maps
them through the unembedding (the same subspace: the map is linear). The restricted loss is measured
on all ``p^2`` pairs and the excluded loss on the training pairs, as in the paper. Added:
:func:`restricted_contrast`, the restricted loss minus that of random non-key frequency sets of the
same size, because the restricted loss alone also falls for a pure memoriser as its margin grows.
The model is trained with its own full-batch loop: :func:`mlsafety.core.train` is a
mini-batch classifier loop over a dataset and has no place for a full-batch, every-step
checkpointing run of a few thousand steps on a fixed tensor; the step here is four lines.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from mlsafety.core import InputError, generator


class OneLayerTransformer(nn.Module):
    """Nanda et al.'s model: token and position embeddings, one attention block, a ReLU MLP, unembed.

    No layer norm and no biases in attention, as in the paper. Inputs are token ids ``(N, 3)``
    (``a``, ``b`` and the ``=`` token ``p``); the output is the logits ``(N, p)`` read at the last
    position.

    Args:
        p: the modulus (answers are ``0..p-1``; the vocabulary has ``p + 1`` tokens).
        d_model: width of the residual stream.
        n_heads: attention heads (``d_model`` must be a multiple of it).
        d_mlp: hidden width of the MLP.
        seed: seed of the initialisation.
    """

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512, seed: int = 0) -> None:
        super().__init__()
        if p < 3:
            raise InputError(f"the modulus p must be at least 3, got {p}")
        if d_model % n_heads:
            raise InputError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        self.p, self.n_heads = p, n_heads
        g = generator(seed, "grokking", "init")

        def param(*shape: int, scale: float) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g) * scale)

        self.embed = param(p + 1, d_model, scale=1 / math.sqrt(d_model))
        self.pos = param(3, d_model, scale=1 / math.sqrt(d_model))
        self.qkv = param(3, d_model, d_model, scale=1 / math.sqrt(d_model))
        self.out = param(d_model, d_model, scale=1 / math.sqrt(d_model))
        self.mlp_in = param(d_model, d_mlp, scale=1 / math.sqrt(d_model))
        self.mlp_in_b = nn.Parameter(torch.zeros(d_mlp))
        self.mlp_out = param(d_mlp, d_model, scale=1 / math.sqrt(d_mlp))
        self.mlp_out_b = nn.Parameter(torch.zeros(d_model))
        self.unembed = param(d_model, p, scale=1 / math.sqrt(d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed[tokens] + self.pos  # (N, 3, d)
        n, t, d = x.shape
        dh = d // self.n_heads
        # one layer: only the last position reaches the logits, so only its query, attention and MLP
        # are computed (the same function as the full causal pass, a third of the cost)
        q = (x[:, -1] @ self.qkv[0]).view(n, self.n_heads, 1, dh)
        k, v = ((x @ w).view(n, t, self.n_heads, dh).transpose(1, 2) for w in self.qkv[1:])
        attn = (q @ k.transpose(-1, -2) / math.sqrt(dh)).softmax(-1)  # (N, H, 1, 3)
        z = (attn @ v).reshape(n, d)
        r = x[:, -1] + z @ self.out
        r = r + torch.relu(r @ self.mlp_in + self.mlp_in_b) @ self.mlp_out + self.mlp_out_b
        return r @ self.unembed


def all_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every input ``[a, b, =]`` (``(p^2, 3)``, row ``a * p + b``) and its answer ``(a + b) mod p``."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p)], 1), (a + b) % p


def fourier_basis(p: int) -> torch.Tensor:
    """The real Fourier basis of functions on ``Z_p`` (rows, ``(p, p)`` float64, orthonormal for odd p).

    Row 0 is the constant; rows ``2k - 1`` and ``2k`` are ``cos`` and ``sin`` of ``2 pi k x / p``
    for ``k = 1 .. (p - 1) / 2``.
    """
    if p < 3 or p % 2 == 0:
        raise InputError(f"the Fourier basis here needs an odd modulus p >= 3, got {p}")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def frequency_norms(embedding: torch.Tensor) -> torch.Tensor:
    """Squared norm of a ``(p, d)`` embedding in each frequency ``1 .. (p - 1) / 2`` (cos + sin)."""
    p = embedding.shape[0]
    coef = fourier_basis(p) @ embedding.detach().double().cpu()  # (p, d)
    energy = coef.pow(2).sum(1)
    return energy[1::2] + energy[2::2]


def key_frequencies(embedding: torch.Tensor, key_share: float = 0.8) -> list[int]:
    """The fewest frequencies (largest first) that hold ``key_share`` of the embedding's non-constant norm.

    Args:
        embedding: ``(p, d)`` token embedding of ``0 .. p - 1`` (without the ``=`` token).
        key_share: share of the squared norm, in (0, 1].

    Returns:
        The key frequencies ``k`` (1-based), sorted.
    """
    if not 0 < key_share <= 1:
        raise InputError(f"key_share must lie in (0, 1], got {key_share}")
    norms = frequency_norms(embedding)
    order = norms.argsort(descending=True)
    cum = norms[order].cumsum(0) / norms.sum()
    n_key = int((cum < key_share).sum()) + 1
    return sorted(int(k) + 1 for k in order[:n_key])


def _key_directions(p: int, freqs: list[int]) -> torch.Tensor:
    """Orthonormal functions of the input pair over all ``p^2`` pairs: ``cos/sin(w_k (a + b))`` (``(2K, p^2)``)."""
    if not freqs or any(not 1 <= int(k) <= (p - 1) // 2 for k in freqs) or len(set(freqs)) != len(freqs):
        raise InputError(f"freqs must be distinct frequencies in 1..{(p - 1) // 2}, got {list(freqs)}")
    ab, _ = all_pairs(p)
    s = (ab[:, 0] + ab[:, 1]).double()
    rows = []
    for k in freqs:
        rows += [torch.cos(2 * math.pi * int(k) * s / p), torch.sin(2 * math.pi * int(k) * s / p)]
    v = torch.stack(rows)
    return v / v.norm(dim=1, keepdim=True)


def _key_component(logits: torch.Tensor, freqs: list[int]) -> torch.Tensor:
    """Each answer's logit column, as a function of ``(a, b)`` over all ``p^2`` pairs, projected onto
    ``cos/sin(w_k (a + b))`` for the key ``freqs`` (Nanda et al.'s restriction, applied to the logits)."""
    v = _key_directions(logits.shape[1], freqs)
    lg = logits.double()
    return v.T @ (v @ lg)


def restricted_loss(logits: torch.Tensor, freqs: list[int]) -> float:
    """Cross-entropy on all pairs when the logits keep only their mean and the key frequencies' components.

    As Nanda et al. 2023 (section 5.1): per answer ``c``, the logit as a function of the pair ``(a, b)``
    keeps its mean over all ``p^2`` pairs and its components along ``cos(w_k (a + b))`` and
    ``sin(w_k (a + b))``. The restriction is linear, so a lookup-table memoriser (a large logit on the
    right answer for the training pairs only) also keeps a share of its margin in *any* frequency set
    and its restricted loss falls below ``log p`` as its margin grows; :func:`restricted_contrast`
    subtracts that share.

    Args:
        logits: ``(p^2, p)`` logits on :func:`all_pairs`, row ``a * p + b``.
        freqs: the key frequencies.
    """
    p = _check_logits(logits)
    _, y = all_pairs(p)
    kept = logits.double().mean(0, keepdim=True) + _key_component(logits, freqs)
    return float(nn.functional.cross_entropy(kept, y))


def restricted_contrast(logits: torch.Tensor, freqs: list[int], n_sets: int = 8, seed: int = 0) -> float:
    """Restricted loss with the key frequencies minus its mean over random equal-sized sets of non-key ones.

    Near 0 for a model with no Fourier circuit at the key frequencies (a memoriser spreads its logits over
    all frequencies alike); clearly negative once the key frequencies carry the answer.

    Args:
        logits: ``(p^2, p)`` logits on :func:`all_pairs`.
        freqs: the key frequencies.
        n_sets: random control sets drawn from the other frequencies.
        seed: seed of the control sets.
    """
    p = _check_logits(logits)
    others = [k for k in range(1, (p - 1) // 2 + 1) if k not in set(freqs)]
    if len(others) < len(freqs) or n_sets < 1:
        raise InputError(
            f"restricted_contrast needs n_sets >= 1 and at least {len(freqs)} non-key frequencies, "
            f"got n_sets={n_sets} and {len(others)}: use fewer key frequencies or a larger p"
        )
    g = generator(seed, "grokking", "control", p, len(freqs))
    control = [
        restricted_loss(logits, [others[int(i)] for i in torch.randperm(len(others), generator=g)[: len(freqs)]])
        for _ in range(n_sets)
    ]
    return restricted_loss(logits, freqs) - sum(control) / n_sets


def excluded_loss(logits: torch.Tensor, freqs: list[int], train: torch.Tensor) -> float:
    """Cross-entropy on the training pairs after the key frequencies' components are removed.

    Args:
        logits: ``(p^2, p)`` logits on :func:`all_pairs`.
        freqs: the key frequencies.
        train: indices (into :func:`all_pairs`) of the training pairs.
    """
    p = _check_logits(logits)
    _, y = all_pairs(p)
    rest = logits.double() - _key_component(logits, freqs)
    return float(nn.functional.cross_entropy(rest[train], y[train]))


def _check_logits(logits: torch.Tensor) -> int:
    p = logits.shape[-1]
    if logits.ndim != 2 or logits.shape[0] != p * p:
        raise InputError(f"logits must be (p^2, p) over all pairs, got {tuple(logits.shape)}")
    return p


@dataclass
class GrokkingRun:
    """A recipe's result: the model at its last step, the split, and the checkpoints.

    Attributes:
        model: the trained model (eval mode).
        train: indices of the training pairs in :func:`all_pairs`; ``test`` the rest.
        steps: the checkpoint steps.
        states: the model's parameters at each checkpoint (CPU copies).
        seconds: training wall time.
    """

    model: OneLayerTransformer
    train: torch.Tensor
    test: torch.Tensor
    steps: list[int] = field(default_factory=list)
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)
    seconds: float = 0.0


def grokking_recipe(
    p: int = 53,
    steps: int = 6000,
    seed: int = 0,
    every: int = 100,
    train_fraction: float = 0.3,
    lr: float = 3e-3,
    weight_decay: float = 1.0,
    d_model: int = 128,
    n_heads: int = 4,
    d_mlp: int = 512,
) -> GrokkingRun:
    """Train :class:`OneLayerTransformer` full-batch on ``a + b mod p`` and keep checkpoints.

    AdamW with betas (0.9, 0.98) and a 10-step linear warm-up, as in Nanda et al.; the defaults
    were sized so that the test-accuracy jump happens within 10 minutes on a 2-core CPU (p=53 and a
    learning rate three times Nanda's, where the paper uses p=113 and tens of thousands of steps).
    At this learning rate the training loss spikes every ~1,300 steps (the "slingshot" of Thilak
    et al. 2022), so the weight norm oscillates instead of falling steadily as in the paper.

    Args:
        p: the modulus (odd, for the Fourier basis).
        steps: full-batch optimisation steps.
        seed: seed of the split and the initialisation.
        every: checkpoint interval (step 0 and the last step are always kept).
        train_fraction: share of the ``p^2`` pairs used for training.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        d_model: residual width.
        n_heads: attention heads.
        d_mlp: MLP width.
    """
    if not 0 < train_fraction < 1:
        raise InputError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    if steps < 1 or every < 1:
        raise InputError(f"steps and every must be at least 1, got steps={steps}, every={every}")
    x, y = all_pairs(p)
    perm = torch.randperm(p * p, generator=generator(seed, "grokking", "split"))
    n_train = round(train_fraction * p * p)
    train, test = perm[:n_train].sort().values, perm[n_train:].sort().values
    model = OneLayerTransformer(p, d_model, n_heads, d_mlp, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    run = GrokkingRun(model, train, test)
    xt, yt = x[train], y[train]
    start = time.perf_counter()
    model.train()
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            run.steps.append(step)
            run.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if step == steps:
            break
        loss = nn.functional.cross_entropy(model(xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    run.seconds = time.perf_counter() - start
    model.eval()
    return run


@dataclass(frozen=True)
class ProgressMeasures:
    """Per-checkpoint measures of a :class:`GrokkingRun` (lists aligned with ``steps``).

    ``test_correct`` holds each checkpoint's per-example test outcomes (``(T, N_test)`` bool), the
    input of :func:`mlsafety.monitoring.interp.emergence.detect_emergence`. ``restricted_contrast`` is
    None when the modulus has fewer non-key than key frequencies (no control set can be drawn).
    """

    steps: list[int]
    key_freqs: list[int]
    train_loss: list[float]
    test_loss: list[float]
    train_acc: list[float]
    test_acc: list[float]
    weight_norm: list[float]
    restricted_loss: list[float]
    restricted_contrast: list[float] | None
    excluded_loss: list[float]
    test_correct: torch.Tensor

    def as_dict(self) -> dict[str, object]:
        """The measures as JSON-ready lists (without the per-example outcomes)."""
        return {
            k: getattr(self, k)
            for k in (
                "steps",
                "key_freqs",
                "train_loss",
                "test_loss",
                "train_acc",
                "test_acc",
                "weight_norm",
                "restricted_loss",
                "restricted_contrast",
                "excluded_loss",
            )
        }


@torch.no_grad()
def progress_measures(run: GrokkingRun, key_share: float = 0.8) -> ProgressMeasures:
    """Compute Nanda et al.'s progress measures at every checkpoint of ``run``.

    The key frequencies come from the final checkpoint (as in the paper, the circuit is identified
    in the trained model and then tracked back through training). The run's model is left with its
    final weights and in eval mode.

    Args:
        run: the output of :func:`grokking_recipe`.
        key_share: passed to :func:`key_frequencies`.
    """
    model = run.model
    p = model.p
    x, y = all_pairs(p)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    freqs = key_frequencies(run.states[-1]["embed"][:p], key_share)
    names = ("train_loss", "test_loss", "train_acc", "test_acc", "weight_norm", "restricted_loss", "excluded_loss")
    cols: dict[str, list[float]] = {k: [] for k in names}
    contrast: list[float] | None = [] if (p - 1) // 2 - len(freqs) >= len(freqs) else None
    correct = []
    was_training = model.training
    model.eval()
    try:
        for state in run.states:
            model.load_state_dict(state)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, reduction="none")
            hit = logits.argmax(1) == y
            cols["train_loss"].append(float(loss[run.train].mean()))
            cols["test_loss"].append(float(loss[run.test].mean()))
            cols["train_acc"].append(float(hit[run.train].float().mean()))
            cols["test_acc"].append(float(hit[run.test].float().mean()))
            cols["weight_norm"].append(float(sum(v.double().pow(2).sum() for v in state.values())))
            cols["restricted_loss"].append(restricted_loss(logits, freqs))
            if contrast is not None:
                contrast.append(restricted_contrast(logits, freqs))
            cols["excluded_loss"].append(excluded_loss(logits, freqs, run.train))
            correct.append(hit[run.test])
    finally:
        model.load_state_dict(final)
        model.train(was_training)
    return ProgressMeasures(
        list(run.steps),
        freqs,
        restricted_contrast=contrast,
        test_correct=torch.stack(correct),
        **cols,  # type: ignore[arg-type]
    )
