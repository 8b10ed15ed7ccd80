"""TeBN: test-time batch-norm statistics (Nado et al. 2020, "Evaluating Prediction-Time Batch
Normalization for Robustness under Covariate Shift"; Schneider et al. 2020, "Improving robustness
against common corruptions by covariate shift adaptation")."""

from __future__ import annotations

from mlsafety.robustness.tta.base import TTAMethod, register_tta


@register_tta("tebn", tags=("image", "statistics"))
class TeBN(TTAMethod):
    """Normalise every batch-norm layer with the test batch's own mean and biased variance.

    Nothing is learned: the affine parameters stay the model's. In a :class:`Stream` every batch is
    normalised with its own statistics (no running average across batches), as prediction-time batch
    norm and TENT do. Departs from Schneider et al., who mix in the training statistics with a prior
    strength N; that mixture is the defence :class:`~mlsafety.robustness.tta.AlphaBN`.

    Example:
        >>> logits = TeBN().adapt(model, x_test_batch)
    """
