"""Sanity checks for attribution maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

An explanation that does not change when the model's weights are destroyed, or when the model is
trained on random labels, cannot be explaining the model. Three tests:

* **cascading randomisation**: re-initialise layers from the output towards the input, one more at
  each stage, and compare each stage's maps with the original ones;
* **independent randomisation**: re-initialise one layer at a time;
* **label randomisation**: compare with the maps of a model trained (by a recipe the caller gives)
  on the same data with permuted labels.

Similarity is the Spearman rank correlation and the SSIM of the absolute maps, per input, averaged;
the rank correlation of the signed maps (no absolute value), the paper's second rank measure, is kept
beside it (it tells whether a map's sign survives) but the verdict uses the absolute one. SSIM is
computed for images (N, C, H, W) only. On text the maps are token scores and the rank correlation
runs over each text's real tokens (special tokens and padding left out); SSIM, a measure of image
structure, is not computed.
Layers inside one block of a ``nn.ModuleList`` (a transformer layer) are randomised together, so a
cascading test on a transformer walks from the head down through the encoder layers to the embeddings.
The target stays the original model's class. A method *passes* a test when the mean rank correlation
falls below ``threshold`` (at the last cascading stage; averaged over layers for the independent
test): its maps depend on the parameters. The model given is never changed: randomisation works on
a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from mlsafety.core import (
    ArrayDataset,
    Classifier,
    DataLike,
    InputError,
    ModelLike,
    TextBatch,
    TextDataset,
    Texts,
    as_array_dataset,
    as_classifier,
    draw_seed,
    forward,
    seeded_global,
)
from mlsafety.core import generator as _generator
from mlsafety.monitoring.transparency.base import Attribution, Target, TextLike, is_text
from mlsafety.monitoring.transparency.words import special_mask

MODES = ("cascading", "independent", "label")


@dataclass(frozen=True)
class SanityResult:
    """Similarities between original and randomised-model maps for one method and one test.

    Attributes:
        method: the attribution method's name.
        mode: ``cascading``, ``independent`` or ``label``.
        stages: what was randomised at each stage (layer or block names; ``labels`` for the label test).
        spearman: (S, N) Spearman rank correlation of absolute maps, per stage and input.
        ssim: (S, N) SSIM of absolute maps scaled to [0, 1], per stage and input (None on text and on
            inputs that are not images (N, C, H, W)).
        threshold: rank correlation below which maps count as changed.
        spearman_signed: (S, N) Spearman rank correlation of the maps as they are, signs kept (equal to
            ``spearman`` for methods whose maps are non-negative); not used by the verdict.
    """

    method: str
    mode: str
    stages: list[str]
    spearman: torch.Tensor
    ssim: torch.Tensor | None
    threshold: float
    spearman_signed: torch.Tensor | None = None

    @property
    def score(self) -> float:
        """The similarity the verdict is based on (lower = more sensitive to the model)."""
        per_stage = self.spearman.mean(dim=1)
        return float(per_stage.mean() if self.mode == "independent" else per_stage[-1])

    @property
    def passed(self) -> bool:
        """True when the maps change under randomisation."""
        return self.score < self.threshold


def spearman(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman rank correlation (average ranks for ties) of each pair of rows of (N, ...) tensors,
    over the entries where ``mask`` (N, ...) is True when given (e.g. a text's real tokens)."""
    if mask is not None:
        keep = mask.detach().flatten(1).bool().cpu()
        rows = [spearman(a[i].flatten()[keep[i]][None], b[i].flatten()[keep[i]][None]) for i in range(keep.shape[0])]
        return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.float64)
    ra = stats.rankdata(a.detach().flatten(1).double().cpu().numpy(), axis=1)
    rb = stats.rankdata(b.detach().flatten(1).double().cpu().numpy(), axis=1)
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denom > 0, (ra * rb).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)
    return torch.from_numpy(rho)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of maps (N, C, H, W) averaged over channels, each
    scaled to [0, 1] by its maximum; a uniform window of ``window`` pixels (at most the image size)."""
    if a.ndim != 4:
        raise InputError(f"SSIM needs maps of shape (N, C, H, W), got {tuple(a.shape)}")

    def prep(m: torch.Tensor) -> torch.Tensor:
        m = m.detach().double().mean(dim=1, keepdim=True)
        return m / m.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)

    x, y = prep(a), prep(b)
    k = max(1, min(window, x.shape[-1], x.shape[-2]))
    mu_x, mu_y = F.avg_pool2d(x, k, 1), F.avg_pool2d(y, k, 1)
    var_x = F.avg_pool2d(x * x, k, 1) - mu_x**2
    var_y = F.avg_pool2d(y * y, k, 1) - mu_y**2
    cov = F.avg_pool2d(x * y, k, 1) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1).cpu()


def randomizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with their own parameters and a ``reset_parameters`` method, input to output order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))
    ]


def randomization_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The randomisation stages, input to output: ``(stage name, layer names)``.

    In a model built of blocks (a ``nn.ModuleList``, as every transformer is), a layer inside a block
    (``bert.encoder.layer.3``) belongs to that block's stage, and a layer outside the blocks to the
    stage of its parent module (``bert.embeddings`` with the word, position and type embeddings and
    their LayerNorm; ``bert.pooler``; the head): the cascade walks from the head down through the
    blocks to the embeddings. In a model without blocks (a CNN) every layer is a stage of its own.
    """
    blocks = [
        f"{name}.{i}" if name else str(i)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList)
        for i in range(len(m))
    ]
    stages: dict[str, list[str]] = {}
    for name, _ in randomizable_layers(model):
        owner = max((b for b in blocks if name.startswith(b + ".")), key=len, default=None)
        if owner is None:
            owner = name.rsplit(".", 1)[0] if blocks and "." in name else name
        stages.setdefault(owner, []).append(name)
    return list(stages.items())


def _default_generator() -> torch.Generator:
    return _generator(0, "sanity")


def _reinit(module: nn.Module, seed: int, name: str) -> None:
    g = _generator(seed, "sanity", name)
    with seeded_global(g), torch.no_grad():
        on_cpu = all(t.device.type == "cpu" for t in module.state_dict().values())
        # Drawn on the CPU whatever the model's device: a GPU's generator gives other weights for the same seed,
        # and the audit's rows must not depend on where the model runs.
        fresh = module if on_cpu else copy.deepcopy(module).cpu()
        fresh.reset_parameters()  # type: ignore[operator]
        if not on_cpu:
            module.load_state_dict(fresh.state_dict())


def _compare(
    method: Attribution,
    model: ModelLike,
    x: torch.Tensor | TextBatch,
    target: torch.Tensor,
    ref: torch.Tensor,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Spearman of absolute maps, SSIM (images only, else None) and Spearman of signed maps against ``ref``
    (the original model's signed maps)."""
    signed = method.attribute(model, x, target)
    maps, ref_abs = signed.abs(), ref.abs()
    if mask is not None:
        return spearman(ref_abs, maps, mask), None, spearman(ref, signed, mask)
    ss = ssim(ref_abs.reshape(maps.shape), maps) if maps.ndim == 4 else None
    return spearman(ref_abs, maps), ss, spearman(ref, signed)


def _target(clf: Classifier, x: torch.Tensor | Texts, target: Target | None) -> torch.Tensor:
    if target is not None:
        return torch.as_tensor(target).long().expand(len(x)).clone()
    return forward(clf, x, features=False).pred.cpu().clone()


def _like(clf: Classifier, module: nn.Module) -> Classifier:
    """A classifier over ``module`` (a copy of ``clf.module``) read the way ``clf`` reads its module."""
    tokenizer = getattr(clf, "tokenizer", None)
    if tokenizer is None:
        return Classifier(module, clf.head_name)
    return Classifier(module, clf.head_name, tokenizer=tokenizer, max_length=getattr(clf, "max_length", None))


def _stack(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(p is None for p in parts) else torch.stack([p for p in parts if p is not None])


def sanity_check(
    method: Attribution,
    model: ModelLike,
    x: torch.Tensor | TextLike,
    target: Target | None = None,
    mode: str = "cascading",
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
    train: Callable[[ArrayDataset | TextDataset], nn.Module] | None = None,
    data: DataLike | TextDataset | None = None,
) -> SanityResult:
    """Run one sanity test of ``method`` on ``model`` for inputs ``x``.

    Args:
        method: the attribution method.
        model: the model whose explanations are tested (left unchanged).
        x: inputs (N, ...), or texts (then ``model`` needs a tokenizer).
        target: classes to explain (default: the model's predictions).
        mode: ``cascading``, ``independent`` or ``label``.
        threshold: rank correlation below which maps count as changed.
        generator: source of the re-initialisation and of the label permutation (default: one
            seeded from 0). One draw from it seeds every layer's re-initialisation by the layer's
            name, so two calls with equal generators re-initialise each layer alike, whatever the
            mode or the method.
        train: for ``label``: a recipe that trains a fresh model on the data it is given.
        data: for ``label``: the training data whose labels are permuted (any form of
            :data:`mlsafety.core.DataLike`, or a :class:`~mlsafety.core.TextDataset`).
    """
    if mode not in MODES:
        raise InputError(f"unknown sanity test {mode!r}; choose one of {', '.join(MODES)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
        raise InputError(f"the sanity threshold is a rank correlation in [-1, 1], got {threshold!r}")
    seed = draw_seed(generator if generator is not None else _default_generator())
    clf = as_classifier(model)
    mask: torch.Tensor | None = None
    inputs: torch.Tensor | TextBatch
    if is_text(x):
        texts = x if isinstance(x, Texts | TextBatch) else Texts(x)  # type: ignore[arg-type]
        if isinstance(texts, TextBatch):
            raise InputError("the sanity check takes the texts themselves (Texts or a list of str), not a TextBatch")
        tgt = _target(clf, texts, target)
        inputs = clf.encode(texts)  # type: ignore[attr-defined]
        mask = inputs.attention_mask.bool() & ~special_mask(clf.tokenizer, inputs.input_ids)  # type: ignore[attr-defined]
    else:
        inputs = x  # type: ignore[assignment]
        tgt = _target(clf, inputs, target)  # type: ignore[arg-type]
    ref = method.attribute(clf, inputs, tgt)
    rhos: list[torch.Tensor] = []
    signed: list[torch.Tensor] = []
    ssims: list[torch.Tensor | None] = []
    stages: list[str] = []
    if mode == "label":
        if train is None or data is None:
            raise InputError("the label-randomisation test needs a training recipe (train=) and its data (data=)")
        shuffled: ArrayDataset | TextDataset
        if isinstance(data, TextDataset):
            perm = torch.randperm(len(data), generator=_generator(seed, "sanity", "labels"))
            shuffled = TextDataset(data.x, data.y[perm], name=f"{data.name}-random-labels", kind=data.kind)
        else:
            arrays = as_array_dataset(data, "data")
            perm = torch.randperm(len(arrays), generator=_generator(seed, "sanity", "labels"))
            shuffled = ArrayDataset(arrays.x, arrays.y[perm], name=f"{arrays.name}-random-labels", kind=arrays.kind)
        rand_model = train(shuffled).to(clf.device).eval()
        rho, ss, rho_signed = _compare(method, _like(clf, rand_model), inputs, tgt, ref, mask)
        return SanityResult(
            method.name, mode, ["labels"], rho[None], None if ss is None else ss[None], threshold, rho_signed[None]
        )
    plan = randomization_stages(clf.module)
    if not plan:
        raise InputError("the model has no layers with parameters to randomise")
    work = copy.deepcopy(clf.module)
    named = dict(work.named_modules())
    for stage, layers in reversed(plan):  # output to input
        if mode == "independent":
            work = copy.deepcopy(clf.module)
            named = dict(work.named_modules())
        for name in layers:
            _reinit(named[name], seed, name)
        rho, ss, rho_signed = _compare(method, _like(clf, work), inputs, tgt, ref, mask)
        rhos.append(rho)
        ssims.append(ss)
        signed.append(rho_signed)
        stages.append(stage)
    return SanityResult(method.name, mode, stages, torch.stack(rhos), _stack(ssims), threshold, torch.stack(signed))
