"""DIA: the Distribution Invading Attack on test-time adaptation (Wu et al. 2023, "Uncovering
Adversarial Risks of Test-Time Adaptation", ICML)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from mlsafety.core import (
    Classifier,
    HyperParams,
    InputError,
    ModelLike,
    Param,
    as_classifier,
    check_images,
    frozen,
    generator,
    rand_like,
)
from mlsafety.robustness.tta.base import TTAMethod, adaptation_mode

OBJECTIVES = ("targeted", "indiscriminate", "stealthy")


@dataclass
class DIAResult:
    """What :meth:`DIA.run` returns for ``G`` attacked batches of ``nb`` benign and ``nm`` malicious inputs.

    Attributes:
        x_malicious: the malicious inputs ``(G * nm, C, H, W)`` in [0, 1] (inside the eps-ball around
            the real inputs they started from, when ``eps`` is set).
        logits: adapted logits of the benign inputs with the malicious ones in the batch ``(G, nb, K)``.
        clean_logits: adapted logits of the benign inputs adapted on their own ``(G, nb, K)``.
        labels: the reference labels of the benign inputs ``(G, nb)`` (``y`` when given, else the
            clean adapted predictions).
        target_index: the attacked benign input of each batch ``(G,)`` (targeted objectives; else None).
        target: the target class of each batch ``(G,)`` (targeted objectives; else None).
    """

    x_malicious: torch.Tensor
    logits: torch.Tensor
    clean_logits: torch.Tensor
    labels: torch.Tensor
    target_index: torch.Tensor | None
    target: torch.Tensor | None

    @property
    def success(self) -> torch.Tensor:
        """Per batch ``(G,)``: the targeted input predicted as its target (targeted objectives), or
        at least one benign input wrong that was right without the attack (indiscriminate)."""
        pred = self.logits.argmax(-1)
        if self.target_index is not None and self.target is not None:
            return pred.gather(1, self.target_index[:, None])[:, 0] == self.target
        return (self.benign_error & ~self.clean_error).any(dim=1)

    @property
    def benign_error(self) -> torch.Tensor:
        """Per benign input ``(G, nb)``: its adapted prediction under attack differs from its label."""
        return self.logits.argmax(-1) != self.labels

    @property
    def clean_error(self) -> torch.Tensor:
        """Per benign input ``(G, nb)``: its adapted prediction without attack differs from its label."""
        return self.clean_logits.argmax(-1) != self.labels

    @property
    def others_kept(self) -> torch.Tensor:
        """Per benign input ``(G, nb)``: prediction unchanged by the attack (the targeted one excluded
        as False when there is one); what the stealthy objective preserves."""
        kept = self.logits.argmax(-1) == self.clean_logits.argmax(-1)
        if self.target_index is not None:
            kept = kept.scatter(1, self.target_index[:, None], False)
        return kept


class DIA(HyperParams):
    """Projected gradient ascent on malicious test inputs, through the adaptation step, against the
    adapted predictions of the benign inputs in the same batch.

    Threat model (Wu et al. 2023): the attacker controls ``nm`` of the ``nb + nm`` inputs of a test
    batch, knows the model and the adaptation method, and wants the adapted model to misclassify
    *other users'* benign inputs. Each step differentiates the benign logits after adaptation on the
    whole batch with respect to the malicious inputs: through the batch statistics (TeBN, alpha-BN,
    MedBN) and through the unrolled update steps (TENT, pseudo-labels; ``create_graph``). Objectives:

    * ``targeted``: minimise the cross-entropy of one benign input (``target_index``) to ``target``;
    * ``indiscriminate``: maximise the mean cross-entropy of the benign inputs to their labels;
    * ``stealthy``: the targeted loss plus ``stealth_weight`` times the cross-entropy of the other
      benign inputs to their clean adapted predictions (the paper's regulariser, kept low).

    Each batch keeps its best iterate (first by the objective's count: target hit, benign errors,
    hit then kept predictions; then by loss). The malicious inputs stay inside the L-inf ``eps``-ball
    around the real inputs they start from (``eps=None``: anywhere in [0, 1], the paper's
    unconstrained setting). Departs from the paper in using signed gradient steps (PGD) instead of
    Adam on the malicious inputs.

    How much the unrolling matters: at TENT's learning rate (1e-3) differentiating through the
    update, rather than holding the updated parameters as constants (``unroll=False``, first
    order), changes the attack's gradient by about 1e-5 relative with Adam and 1e-4 with SGD on
    ``digits-cnn-bn`` (reviewer: 1.3e-5 / 1.3e-4; rechecked on one batch of 64: 6.2e-6 / 3.8e-4),
    with every sign equal, so the signed steps are the same. The updated parameters themselves do
    matter (Adam's first step moves each by about ``lr``: the gradient differs from TeBN's by 4e-2).
    The unrolled gradient is exact (tested against finite differences, soft pseudo-labels'
    input-dependent target included) and matters at larger learning rates or with more steps.
    """

    objective = Param("targeted", str, choices=OBJECTIVES, doc="what the attacker wants of the benign inputs")
    eps = Param(None, float, low=0, high=1, doc="L-inf radius around the real inputs; None: unconstrained in [0, 1]")
    steps = Param(40, int, low=0, doc="gradient steps (0: the starting point only)")
    step_size = Param(None, float, low=0, low_open=True, doc="step length; None: 2.5 * eps / steps (eps None: 1)")
    random_start = Param(
        False, bool, doc="start uniformly in the eps-ball, or in [0, 1] when unconstrained (else at the real inputs)"
    )
    stealth_weight = Param(1.0, float, low=0, doc="weight of keeping the other benign predictions (stealthy)")
    seed = Param(0, int, doc="seed of the attack's generator (targets, random start)")
    unroll = Param(True, bool, doc="differentiate through the adaptation's update steps (False: first order, cheaper)")

    name: ClassVar[str] = "dia"

    def run(
        self,
        model: ModelLike,
        method: TTAMethod,
        benign: torch.Tensor,
        malicious: torch.Tensor,
        y: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        target_index: torch.Tensor | None = None,
        groups: int = 1,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> DIAResult:
        """Attack ``groups`` test batches at once.

        Args:
            model: a classifier with batch-norm layers (left unchanged).
            method: the adaptation under attack (a fresh state per batch).
            benign: ``(groups * nb, C, H, W)`` in [0, 1], batch ``g`` holding rows ``g*nb:(g+1)*nb``.
            malicious: ``(groups * nm, C, H, W)`` real inputs the malicious ones start from; ``nm``
                may be 0 (then nothing changes: the logits are the clean adapted ones).
            y: labels of the benign inputs ``(groups * nb,)`` (default: their clean adapted predictions).
            target: target class per batch ``(groups,)`` (targeted objectives; default: a random class
                other than the clean adapted prediction and other than the label (``y``), from
                ``generator``; with two classes and a wrong clean prediction none is left, and the
                target is the label: a hit then only means the attack made the input right).
            target_index: the attacked benign input of each batch ``(groups,)`` (default: the first).
            groups: number of independent batches stacked in ``benign`` and ``malicious``.
            generator: overrides the attack's own seeded generator; a sequence of ``groups``
                generators gives each batch its own (its target, then its random start, are drawn
                from it), so a batch's draws do not depend on which batches it is attacked with.
        """
        clf = as_classifier(model)
        check_images(benign, "benign inputs")
        if malicious.ndim != 4 or malicious.shape[1:] != benign.shape[1:]:
            raise InputError(
                f"malicious inputs must have shape (N, {', '.join(map(str, benign.shape[1:]))}), got "
                f"{tuple(malicious.shape)}"
            )
        if malicious.shape[0]:
            check_images(malicious, "malicious inputs")
        if groups < 1 or benign.shape[0] % groups or malicious.shape[0] % groups:
            raise InputError(f"benign and malicious inputs must split into {groups} equal batches")
        nb = benign.shape[0] // groups
        if nb < 2:
            raise InputError(
                f"each batch needs at least 2 benign inputs (the no-attack reference adapts on them alone), got {nb}"
            )
        if generator is None:
            g: torch.Generator | list[torch.Generator] = self.generator()
        elif isinstance(generator, torch.Generator):
            g = generator
        else:
            g = list(generator)
            if len(g) != groups:
                raise InputError(f"give one generator per batch ({groups}), got {len(g)}")
        device = clf.device
        with frozen(clf.module), adaptation_mode():
            xb = benign.detach().to(device).clone()
            xm0 = malicious.detach().to(device).clone()
            clean, _ = method.step(clf, xb, method.init_state(clf, groups), groups)
            clean = clean.detach().reshape(groups, nb, -1)
            k = clean.shape[-1]
            labels = clean.argmax(-1) if y is None else self._labels(y, groups, nb, k, device)
            tindex, tgt = self._targets(clean, labels, target, target_index, groups, nb, k, g)
            result = self._attack(clf, method, xb, xm0, labels, clean, tindex, tgt, groups, g)
        x_mal, logits = result
        return DIAResult(x_mal.to(malicious.device), logits, clean, labels, tindex, tgt)

    def generator(self) -> torch.Generator:
        """The attack's own generator, derived from ``seed``."""
        return generator(self.seed, "tta-attack", self.name)

    # -- the algorithm -------------------------------------------------------------------------
    def _attack(
        self,
        clf: Classifier,
        method: TTAMethod,
        xb: torch.Tensor,
        xm0: torch.Tensor,
        labels: torch.Tensor,
        clean: torch.Tensor,
        tindex: torch.Tensor | None,
        tgt: torch.Tensor | None,
        groups: int,
        g: torch.Generator | list[torch.Generator],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nb, nm = xb.shape[0] // groups, xm0.shape[0] // groups
        shape = xb.shape[1:]
        eps = 1.0 if self.eps is None else self.eps
        step_size = (2.5 * eps / max(self.steps, 1)) if self.step_size is None else self.step_size
        xm = xm0.clone()
        if self.random_start and nm:  # uniform in the ball (clipped to the box), or in the box when unconstrained
            noise = rand_like(xm0, g) if isinstance(g, torch.Generator) else _per_group(xm0, g, rand_like)
            xm = noise if self.eps is None else (xm0 + (2 * noise - 1) * eps).clamp(0, 1)
        clean_pred = clean.argmax(-1)
        best_x, best_logits = xm.clone(), clean
        best_score = torch.full((groups,), -1.0, device=xb.device)
        best_loss = torch.full((groups,), float("-inf"), device=xb.device)
        view = (groups, -1, *shape)
        for step in range(self.steps + 1):
            last = step == self.steps
            xm.requires_grad_(not last and nm > 0)
            batch = torch.cat([xb.reshape(view), xm.reshape(view)], dim=1).reshape(-1, *shape)
            graph = not last and self.unroll
            logits, _ = method.step(clf, batch, method.init_state(clf, groups), groups, create_graph=graph)
            lb = logits.reshape(groups, nb + nm, -1)[:, :nb]
            loss = self._loss(lb, labels, clean_pred, tindex, tgt)
            grad = None if last or nm == 0 else torch.autograd.grad(loss.sum(), xm)[0]
            with torch.no_grad():
                lb, loss, xm = lb.detach(), loss.detach(), xm.detach()
                score = self._score(lb, labels, clean_pred, tindex, tgt)
                better = (score > best_score) | ((score == best_score) & (loss > best_loss))
                best_score = torch.where(better, score, best_score)
                best_loss = torch.where(better, loss, best_loss)
                best_logits = torch.where(better[:, None, None], lb, best_logits)
                keep = better.repeat_interleave(nm).reshape(-1, *([1] * len(shape)))
                best_x = torch.where(keep, xm, best_x)
                if grad is None:
                    break
                xm = xm + step_size * grad.sign()
                xm = torch.minimum(torch.maximum(xm, xm0 - eps), xm0 + eps).clamp(0, 1)
        return best_x, best_logits

    def _loss(
        self,
        lb: torch.Tensor,
        labels: torch.Tensor,
        clean_pred: torch.Tensor,
        tindex: torch.Tensor | None,
        tgt: torch.Tensor | None,
    ) -> torch.Tensor:
        """The loss to maximise per batch ``(G,)`` from benign logits ``(G, nb, K)``."""
        if tindex is None or tgt is None:
            return F.cross_entropy(lb.transpose(1, 2), labels, reduction="none").mean(dim=1)
        hit = lb.gather(1, tindex[:, None, None].expand(-1, 1, lb.shape[-1]))[:, 0]
        loss = -F.cross_entropy(hit, tgt, reduction="none")
        if self.objective == "stealthy" and lb.shape[1] > 1:
            ce = F.cross_entropy(lb.transpose(1, 2), clean_pred, reduction="none")
            others = torch.ones_like(ce).scatter(1, tindex[:, None], 0.0)
            loss = loss - self.stealth_weight * (ce * others).sum(dim=1) / others.sum(dim=1)
        return loss

    def _score(
        self,
        lb: torch.Tensor,
        labels: torch.Tensor,
        clean_pred: torch.Tensor,
        tindex: torch.Tensor | None,
        tgt: torch.Tensor | None,
    ) -> torch.Tensor:
        pred = lb.argmax(-1)
        if tindex is None or tgt is None:
            return (pred != labels).sum(dim=1).to(lb.dtype)
        hit = (pred.gather(1, tindex[:, None])[:, 0] == tgt).to(lb.dtype)
        if self.objective == "targeted":
            return hit
        kept = (pred == clean_pred).scatter(1, tindex[:, None], False).sum(dim=1)
        return hit * (lb.shape[1] + 1) + kept.to(lb.dtype)

    # -- inputs --------------------------------------------------------------------------------
    @staticmethod
    def _labels(y: torch.Tensor, groups: int, nb: int, k: int, device: torch.device) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.shape != (groups * nb,):
            raise InputError(f"y must be a tensor of shape ({groups * nb},), one label per benign input")
        y = y.to(device).long()
        if bool(((y < 0) | (y >= k)).any()):
            raise InputError(f"labels must lie in 0..{k - 1} for a model with {k} classes")
        return y.reshape(groups, nb)

    def _targets(
        self,
        clean: torch.Tensor,
        labels: torch.Tensor,
        target: torch.Tensor | None,
        target_index: torch.Tensor | None,
        groups: int,
        nb: int,
        k: int,
        g: torch.Generator | list[torch.Generator],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        device = clean.device
        if self.objective == "indiscriminate":
            if target is not None or target_index is not None:
                raise InputError("target= and target_index= are for the targeted objectives, not 'indiscriminate'")
            return None, None
        if k < 2:
            raise InputError("a targeted attack needs a model with at least two classes")
        if target_index is None:
            tindex = torch.zeros(groups, dtype=torch.long, device=device)
        else:
            tindex = target_index.to(device).long()
            if tindex.shape != (groups,) or bool(((tindex < 0) | (tindex >= nb)).any()):
                raise InputError(f"target_index must hold one index in 0..{nb - 1} per batch ({groups} batches)")
        if target is None:
            pred = clean.argmax(-1).gather(1, tindex[:, None])[:, 0].cpu()
            label = labels.gather(1, tindex[:, None])[:, 0].cpu()
            gens = [g] * groups if isinstance(g, torch.Generator) else g
            if isinstance(g, torch.Generator):
                shift = torch.randint(1, k, (groups,), generator=g, device=g.device).cpu()
            else:
                shift = torch.cat([torch.randint(1, k, (1,), generator=gi, device=gi.device).cpu() for gi in g])
            # uniform over the classes that are neither the clean prediction nor the label, by
            # redrawing (in batch order) the targets that hit a label the clean prediction misses
            redraw = ((pred + shift) % k == label) & (pred != label) if k > 2 else torch.zeros(groups, dtype=torch.bool)
            for i in redraw.nonzero()[:, 0].tolist():
                while int((pred[i] + shift[i]) % k) == int(label[i]):
                    shift[i] = int(torch.randint(1, k, (1,), generator=gens[i]))
            return tindex, ((pred + shift) % k).to(device)
        tgt = target.to(device).long()
        if tgt.shape != (groups,) or bool(((tgt < 0) | (tgt >= k)).any()):
            raise InputError(f"target must hold one class in 0..{k - 1} per batch ({groups} batches)")
        return tindex, tgt


def _per_group(
    x: torch.Tensor, gens: list[torch.Generator], draw: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
) -> torch.Tensor:
    """``draw`` for each of ``len(gens)`` equal row blocks of ``x`` from its own generator."""
    return torch.cat([draw(part, gi) for part, gi in zip(x.chunk(len(gens)), gens, strict=True)])
