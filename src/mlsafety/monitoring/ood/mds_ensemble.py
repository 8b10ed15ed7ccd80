"""Multi-layer Mahalanobis with a feature ensemble (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018, section 2.2)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, LayerReduce, ModelLike, Outputs, Param, as_classifier, pool_map
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, Detector, layers_problem, register, resolve_layers
from mlsafety.monitoring.ood.mahalanobis import mahalanobis_sq, shared_class_gaussians


@register("mds-ensemble", tags=(IMAGE, OPT_IN))
class MDSEnsemble(Detector):
    """Anomaly score ``sum_l w_l d_l(x)``, where ``d_l = min_k (f_l - mu_{l,k})^T Sigma_l^+ (f_l - mu_{l,k}) / r_l``
    is the squared Mahalanobis distance of layer ``l``'s globally average-pooled output ``f_l`` to the closest
    class Gaussian (class means, one tied covariance per layer, fitted on in-distribution data with labels,
    the model's predictions where there are none), divided by its expected value ``r_l`` for an input of the
    fitted Gaussian (the rank of ``Sigma_l``: a chi-square mean), so layers of different widths count alike.

    The combination weights ``w_l``: Lee et al. fit them by logistic regression on validation data; in their
    setting without OOD data (the one this library allows), on in-distribution inputs against adversarial
    (FGSM) ones. Here the default is equal weights ``1 / L`` on the normalised distances, fitted on nothing;
    ``weights`` gives your own (one per layer), and :meth:`fit_weights` fits them by logistic regression on
    in-distribution inputs against the same inputs with seeded Gaussian noise added (or perturbed inputs you
    give, e.g. adversarial ones), after :meth:`fit`. No OOD data is ever used. Input pre-processing (the
    paper's other component) is :class:`~mlsafety.monitoring.ood.mahalanobis_pre.MahalanobisPre`; it is not
    applied here.

    Args:
        layers: module names of the layers; None: :func:`~mlsafety.core.block_layers` (the paper takes the
            end of every ResNet / DenseNet block, with the penultimate features).
        weights: one weight per layer; None: equal weights.
    """

    needs = frozenset({"logits", "layers"})
    requires_fit = True

    layers: Param[tuple[str, ...] | None] = Param(None, tuple, doc="layer module names; None: block outputs")
    weights: Param[tuple[float, ...] | None] = Param(None, tuple, doc="one weight per layer; None: equal")

    def unusable(self, model: ModelLike, probe: torch.Tensor) -> str | None:
        return layers_problem(as_classifier(model), self.layers, self.name)

    def _names(self, clf: Classifier) -> list[str]:
        return getattr(self, "layers_", None) or resolve_layers(clf, self.layers, self.name)

    def layer_taps(self, clf: Classifier) -> dict[str, tuple[str, LayerReduce]]:
        return {n: (n, pool_map) for n in self._names(clf)}

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        names = self._names(clf)
        if self.weights is not None and len(self.weights) != len(names):
            raise InputError(
                f"mds-ensemble weights has {len(self.weights)} values for {len(names)} layers {names}; "
                "give one per layer"
            )
        assert outputs.layers is not None
        k = outputs.logits.shape[1]
        self.gaussians_ = [shared_class_gaussians(outputs.layers[n], labels, k) for n in names]
        self.ranks_ = [float(max(1, white[0].shape[1])) for _, _, white in self.gaussians_]
        w = self.weights if self.weights is not None else [1.0 / len(names)] * len(names)
        self.weights_ = [float(v) for v in w]
        self.layers_ = names

    def layer_scores(self, outputs: Outputs) -> torch.Tensor:
        """The normalised per-layer distances ``d_l`` (N, L) of a fitted detector."""
        assert outputs.layers is not None
        cols = []
        for name, (means, precision, white), r in zip(self.layers_, self.gaussians_, self.ranks_, strict=True):
            cols.append(mahalanobis_sq(outputs.layers[name], means, precision, white).amin(dim=1) / r)
        return torch.stack(cols, dim=1)

    def fit_weights(
        self,
        model: ModelLike,
        x: torch.Tensor,
        perturbed: torch.Tensor | None = None,
        noise: float = 0.1,
        seed: int = 0,
        l2: float = 1e-3,
    ) -> MDSEnsemble:
        """Fit the combination weights by L2-regularised logistic regression (Newton steps, float64) of
        ``perturbed`` (label 1) against in-distribution ``x`` (label 0) on the per-layer distances; returns self.

        Args:
            model: the classifier the detector was fitted on.
            x: in-distribution inputs (held out from :meth:`fit`'s data, ideally).
            perturbed: the positives; None: ``clip(x + noise * N(0, 1), 0, 1)`` with a generator seeded by ``seed``.
            noise: standard deviation of the Gaussian noise (pixel units).
            seed: seed of the noise.
            l2: the penalty on the weights (not on the intercept).
        """
        from mlsafety.core import check_is_fitted, generator
        from mlsafety.monitoring.ood.engine import collect_outputs

        check_is_fitted(self, hint="call .fit(model, in_distribution_data) before fit_weights")
        if perturbed is None:
            g = generator(seed, "mds-ensemble", "noise")
            perturbed = (x + noise * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)).clamp(0, 1)
        clf = as_classifier(model)
        taps = self.layer_taps(clf)
        d_in = self.layer_scores(collect_outputs(clf, x, layers=taps)[0])
        d_out = self.layer_scores(collect_outputs(clf, perturbed, layers=taps)[0])
        feats = torch.cat([d_in, d_out]).double()
        mean, std = feats.mean(dim=0), feats.std(dim=0).clamp_min(1e-12)
        z = torch.cat([torch.ones(feats.shape[0], 1, dtype=feats.dtype, device=feats.device), (feats - mean) / std], 1)
        t = torch.cat([torch.zeros(d_in.shape[0]), torch.ones(d_out.shape[0])]).to(z)
        beta = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device)
        penalty = torch.full_like(beta, l2)
        penalty[0] = 0.0
        for _ in range(50):
            p = torch.sigmoid(z @ beta)
            grad = z.T @ (p - t) + penalty * beta
            hess = (z * (p * (1 - p))[:, None]).T @ z + torch.diag(penalty) + 1e-9 * torch.eye(z.shape[1]).to(z)
            step = torch.linalg.solve(hess, grad)
            beta = beta - step
            if float(step.abs().max()) < 1e-10:
                break
        self.weights_ = [float(v) for v in beta[1:] / std]  # on the unstandardised distances (order unchanged)
        return self

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        d = self.layer_scores(outputs)
        return d @ torch.tensor(self.weights_, dtype=d.dtype, device=d.device)
