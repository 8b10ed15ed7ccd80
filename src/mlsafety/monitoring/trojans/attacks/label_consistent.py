"""Label-consistent poisoning (Turner, Tsipras & Madry, "Label-Consistent Backdoor Attacks", 2019)."""

from __future__ import annotations

import torch

from mlsafety.core import ArrayDataset, Param
from mlsafety.monitoring.trojans.attacks.badnets import CORNERS, BadNets
from mlsafety.monitoring.trojans.attacks.base import TROJAN_ATTACKS, TriggerAttack, _draw


@TROJAN_ATTACKS.register("label-consistent")
class LabelConsistent(TriggerAttack):
    """Label-consistent poisoning: only target-class images carry the trigger, and keep their labels.

    The poison passes a human label check. To make the model lean on the trigger, each poisoned
    image is first made harder to classify by its content, here with the paper's interpolation
    variant done in pixel space: it is mixed with a random image of another class at ratio
    ``hardness`` (still mostly the target digit), then the checkerboard patch trigger of
    :class:`~mlsafety.monitoring.trojans.attacks.BadNets` is stamped on. ``rate`` is the share of
    the whole training set, capped by the size of the target class.
    """

    clean_label = True

    hardness = Param(
        0.3, float, low=0, high=0.5, high_open=True, doc="mixing ratio with another class's image (keeps the label)"
    )
    size = Param(3, int, low=1, doc="side of the checkerboard patch trigger")
    corner = Param("top-left", str, choices=tuple(CORNERS), doc="where the patch sits")

    def __post_init__(self) -> None:
        self._patch = BadNets(size=self.size, corner=self.corner)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._patch._apply(x)

    def _select(self, dataset: ArrayDataset, rate: float, target: int, g: torch.Generator) -> torch.Tensor:
        """The samples to poison: ``rate`` of the dataset drawn from the target class."""
        return _draw(dataset.y == target, rate, len(dataset), g)

    def _poison_x(self, dataset: ArrayDataset, index: torch.Tensor, target: int, g: torch.Generator) -> torch.Tensor:
        others = (dataset.y != target).nonzero().flatten()
        partner = others[torch.randint(0, len(others), (len(index),), generator=g)]
        mixed = (1 - self.hardness) * dataset.x[index] + self.hardness * dataset.x[partner]
        return self.apply_trigger(mixed)
