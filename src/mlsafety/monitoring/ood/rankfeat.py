"""RankFeat (Song, Sebe & Wang, "RankFeat: Rank-1 Feature Removal for Out-of-distribution Detection",
NeurIPS 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlsafety.core import (
    Classifier,
    InputError,
    ModelLike,
    Param,
    as_classifier,
    check_images,
    check_layer_names,
    frozen,
    tap_layers,
)
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, Detector, energy_of, register

METHODS = ("svd", "power")


def remove_rank1(x: torch.Tensor, method: str = "svd", iterations: int = 20) -> torch.Tensor:
    """A map ``(N, C, *spatial)`` with each input's rank-1 component removed: with ``X = U S V^T`` the
    ``C x HW`` matrix of one input, ``X - s_1 u_1 v_1^T``. ``"svd"``: exact; ``"power"``: the paper's fast
    variant, ``iterations`` power iterations from a fixed start (the all-ones vector), in float64."""
    n, c = x.shape[:2]
    m = x.reshape(n, c, -1).double()
    if method == "svd":
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        top = s[:, :1, None] * u[:, :, :1] @ vh[:, :1, :]
    else:
        v = torch.ones(n, m.shape[2], 1, dtype=m.dtype, device=m.device)
        for _ in range(iterations):
            v = m.transpose(1, 2) @ (m @ v)
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        top = (m @ v) @ v.transpose(1, 2)  # s_1 u_1 v_1^T = X v v^T
    return (m - top).to(x.dtype).reshape(x.shape)


@register("rankfeat", tags=(IMAGE, OPT_IN))
class RankFeat(Detector):
    """Anomaly score ``-logsumexp(f(x; X - s_1 u_1 v_1^T))``: the energy of the logits recomputed after the
    rank-1 component (the top singular value's) of a convolutional feature map ``X`` (``C x HW`` per input)
    is removed. OOD inputs' maps are dominated by that component more than in-distribution ones', so
    removing it lowers their logits more.

    The map's layer is ``layer``, else the layer giving the last feature map the model computes (more than
    one spatial position; :meth:`map_layer`): the paper's choice, the output of ResNet's last block before
    global pooling. The remainder of the model runs from the changed map by a forward hook on that
    layer: one pass of its own per batch (the logits of the plain pass are not used). Works on any model
    with such a layer (a ResNet or a zoo CNN, whatever follows the map: pooling or flattening); a model
    whose layers give only vectors is refused with one line.

    Deviations: the block-3 variant and the block-3 + block-4 average of the paper are not built (choose
    ``layer`` for block 3); the exact SVD is the default (the paper's power iteration is ``method="power"``).

    Args:
        layer: module name of the map's layer; None: the last block output that is a map.
        method: ``"svd"`` (exact) or ``"power"`` (power iteration).
        iterations: power iterations.
    """

    needs = frozenset({"logits", "layers", "intervention"})

    layer: Param[str | None] = Param(None, str, doc="module name of the feature map's layer; None: the last map")
    method = Param("svd", str, choices=METHODS, doc="svd (exact) or power (iteration)")
    iterations = Param(20, int, low=1, doc="power iterations (method power)")

    def map_layer(self, clf: Classifier, probe: torch.Tensor) -> str:
        """The layer whose map is changed: ``layer``, else the layer whose output is the last feature map the
        model computes on ``probe`` (the last module to finish, in call order, returning ``(N, C, *spatial)``
        with more than one position, outside the head); checked to give such a map. Of a module called
        several times in one pass (a reused ReLU), only the last call's map is changed."""
        return self._map_call(clf, probe)[0]

    def _map_call(self, clf: Classifier, probe: torch.Tensor) -> tuple[str, int]:
        """:meth:`map_layer` and how many times that module runs in one forward pass (its last call is changed)."""
        if clf.head_info is None:
            clf.trace(probe)
        head = clf.head_name
        names = [self.layer] if self.layer is not None else [
            n for n, _ in clf.module.named_modules() if n and not (head and (n == head or n.startswith(head + ".")))
        ]  # fmt: skip
        check_layer_names(clf.module, names)
        order: list[str] = []

        def shape_of(name: str) -> Any:
            def reduce(t: torch.Tensor) -> torch.Tensor:
                order.append(name)
                return torch.tensor([t.ndim, t[0, 0].numel() if t.ndim > 2 else 1]).expand(t.shape[0], 2)

            return reduce

        with frozen(clf.module), torch.inference_mode():
            with tap_layers(clf.module, {n: (n, shape_of(n)) for n in names}, strict=False) as tap:
                clf.logits(probe)
                try:
                    seen = tap.take(probe.shape[0])
                except InputError:  # a module that is not called (or returns no tensor) is no candidate
                    seen = dict(tap.latest)
        maps = [n for n in order if n in seen and int(seen[n][0, 0]) > 2 and int(seen[n][0, 1]) > 1]
        if not maps:
            what = f"layer {self.layer!r} gives none" if self.layer is not None else "no layer of this model gives one"
            raise InputError(
                f"rankfeat needs a convolutional feature map (N, C, H, W) with more than one position, but {what}; "
                "name a convolutional layer with layer=, or use another detector"
            )
        return maps[-1], order.count(maps[-1])

    def unusable(self, model: ModelLike, probe: torch.Tensor) -> str | None:
        clf = as_classifier(model)
        try:
            self.map_layer(clf, probe[:1].to(clf.device))
        except InputError as e:
            return str(e)
        return None

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        check_images(x)
        if x.shape[0] == 0:
            return torch.empty(0)
        device = clf.device
        name, last = self._map_call(clf, x[:1].to(device))
        module: nn.Module = dict(clf.module.named_modules())[name]
        calls = 0  # of the module in the current pass: only its last call gives the map

        def replace(_m: nn.Module, _args: Any, output: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls != last:
                return None  # an earlier call of a reused module: its output is left as it is
            if not isinstance(output, torch.Tensor):
                raise InputError(f"rankfeat: layer {name!r} returns no single tensor; choose another layer")
            return remove_rank1(output, self.method, self.iterations)

        out = []
        handle = module.register_forward_hook(replace)
        try:
            with frozen(clf.module), torch.inference_mode():
                for start in range(0, x.shape[0], batch_size):
                    calls = 0
                    out.append(energy_of(clf.logits(x[start : start + batch_size].to(device)).double()))
        finally:
            handle.remove()
        self.layer_ = name
        return torch.cat(out)
