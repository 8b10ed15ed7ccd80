"""Reconstruction error of a denoiser at several noise levels: the small-scale form of the
diffusion-reconstruction detectors (Graham, Pinaya, Tudosiu, Nachev, Ourselin & Cardoso, "Denoising
diffusion models for out-of-distribution detection", CVPR Workshops 2023).

A denoiser trained on in-distribution images restores them from noise; an input unlike its training
data is restored towards the in-distribution manifold, far from where it started. For each noise level
``sigma`` in a grid and each of ``draws`` seeded noise draws, the input is noised, ``x + sigma * eps``,
denoised, and compared with the clean input:

``e_sigma(x) = mean_draws ||D(x + sigma eps) - x||^2 / d``  (input space, per pixel)

plus, with ``feature_weight > 0``, the squared distance between the classifier's penultimate features
of the reconstruction and of ``x`` (per feature). With ``standardize`` (default), each level's error is
z-scored by its mean and spread on the in-distribution fit data, as Graham et al. normalise each
level's similarity before combining; the score is the mean over levels.

Deviations, stated: Graham et al. noise to diffusion steps of a DDPM and measure MSE and LPIPS; here the
denoiser is any image-to-image module (e.g. the zoo's ``digits-denoiser-25`` / ``-50``, one network for
all levels), the perceptual term is the classifier's own feature space, and the noise is added without
clipping.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, ModelLike, Param, check_images, frozen, generator
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, Detector, register

AUTO = "auto"
"""The ``denoiser`` value that picks an embedded denoiser trained on images of the model's input shape."""


@cache
def _zoo_denoisers() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, (C, H, W) of its training images) of every embedded denoiser."""
    from mlsafety import zoo

    out = []
    for name in zoo.model_names():
        info = zoo.model_info(name)
        if info.role == "denoiser":
            out.append((name, tuple(zoo.load_dataset(info.dataset, "test").x.shape[1:])))
    return tuple(out)


def denoiser_for(spec: str | nn.Module, shape: Sequence[int]) -> nn.Module:
    """The denoiser ``spec`` names (a module, a zoo name or ``"auto"``) for images of ``shape`` (C, H, W);
    an :class:`~mlsafety.core.InputError` naming the embedded denoisers when none fits."""
    if isinstance(spec, nn.Module):
        return spec
    from mlsafety import zoo

    shape = tuple(int(s) for s in shape)
    known = _zoo_denoisers()
    fitting = [name for name, s in known if s == shape]
    listing = ", ".join(f"{n} ({'x'.join(map(str, s))})" for n, s in known) or "none"
    if spec == AUTO:
        if not fitting:
            raise InputError(
                f"reconstruction: no embedded denoiser fits inputs of shape {'x'.join(map(str, shape))} "
                f"(embedded: {listing}); pass denoiser=<an nn.Module trained on your in-distribution images>"
            )
        return zoo.load_model(fitting[0])
    if spec not in dict(known):
        raise InputError(f"reconstruction: {spec!r} is not an embedded denoiser; embedded: {listing}")
    if spec not in fitting:
        raise InputError(
            f"reconstruction: denoiser {spec!r} was trained on {'x'.join(map(str, dict(known)[spec]))} images, "
            f"not {'x'.join(map(str, shape))}; pass one that fits (embedded: {listing})"
        )
    return zoo.load_model(spec)


@register("reconstruction", tags=(IMAGE, OPT_IN))
class Reconstruction(Detector):
    """Anomaly score = denoising reconstruction error over a grid of noise levels (mean over seeded draws),
    each level z-scored on the fit data when ``standardize``; higher = more anomalous.

    Args:
        denoiser: an image-to-image ``nn.Module`` (same shape in and out, inputs in [0, 1]), a zoo
            denoiser's name, or ``"auto"`` (an embedded denoiser trained on images of the inputs' shape).
        sigma_min: the lowest noise level (standard deviation in [0, 1] pixel units).
        sigma_max: the highest noise level.
        levels: noise levels evenly spaced from ``sigma_min`` to ``sigma_max`` (one level: ``sigma_min``).
        draws: noise draws per level and input.
        feature_weight: weight of the classifier-feature-space error (0: input space only).
        standardize: z-score each level's error by its mean and spread on the fit data.
        fit_samples: fit inputs used for the standardisation (a seeded subset; 0: all).
        seed: seed of the noise.
    """

    needs = frozenset({"multi-pass"})
    requires_fit = True

    denoiser: Param[str | nn.Module] = Param(AUTO, doc="module, zoo denoiser name or 'auto'")
    sigma_min = Param(0.1, float, low=0, high=1, doc="lowest noise level (pixel units)")
    sigma_max = Param(0.5, float, low=0, high=1, doc="highest noise level (pixel units)")
    levels = Param(3, int, low=1, doc="noise levels, evenly spaced from sigma_min to sigma_max")
    draws = Param(2, int, low=1, doc="noise draws per level")
    feature_weight = Param(0.0, float, low=0, doc="weight of the feature-space error")
    standardize = Param(True, bool, doc="z-score each level on the fit data")
    fit_samples = Param(2048, int, low=0, doc="fit inputs the levels are standardised on (seeded subset; 0: all)")
    seed = Param(0, int, doc="seed of the noise")

    def sigmas(self) -> list[float]:
        """The noise levels, evenly spaced from ``sigma_min`` to ``sigma_max``."""
        if self.sigma_max < self.sigma_min:
            raise InputError(f"reconstruction: sigma_max {self.sigma_max} is below sigma_min {self.sigma_min}")
        return torch.linspace(self.sigma_min, self.sigma_max, self.levels).double().tolist()

    def stored_params(self) -> dict[str, Any]:
        """The stored hyper-parameters, a denoiser module recorded by its class name."""
        params = super().stored_params()
        if isinstance(params["denoiser"], nn.Module):
            params["denoiser"] = f"module:{type(params['denoiser']).__name__}"
        return params

    def _errors(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Reconstruction error per level (L, N)."""
        check_images(x)
        sigmas = self.sigmas()
        den = denoiser_for(self.denoiser, x.shape[1:])
        device = clf.device
        g = generator(self.seed, "reconstruction", "noise")
        out = []
        with frozen(clf.module), frozen(den), torch.inference_mode():
            den_device = next((p.device for p in den.parameters()), device)
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device)
                per_level = []
                ref = clf.features_and_logits(xb)[0] if self.feature_weight else None
                for s in sigmas:
                    err = torch.zeros(xb.shape[0], dtype=torch.float64, device=device)
                    for _ in range(self.draws):
                        noisy = xb + s * torch.randn(xb.shape, generator=g, dtype=xb.dtype).to(device)
                        rec = den(noisy.to(den_device))
                        if rec.shape != xb.shape:
                            raise InputError(
                                f"reconstruction: the denoiser returned shape {tuple(rec.shape)} for inputs "
                                f"{tuple(xb.shape)}; it must return images of the input's shape"
                            )
                        rec = rec.to(device)
                        err += (rec - xb).pow(2).flatten(1).mean(dim=1).double()
                        if ref is not None:
                            f = clf.features_and_logits(rec.clamp(0, 1))[0]
                            err += self.feature_weight * (f - ref).pow(2).mean(dim=1).double()
                    per_level.append(err / self.draws)
                out.append(torch.stack(per_level))
        return torch.cat(out, dim=1)

    def unusable(self, model: ModelLike, probe: torch.Tensor) -> str | None:
        """Why no denoiser fits the model's inputs (one line), so the audit skips the detector with that reason."""
        if probe.dim() != 4:
            return f"reconstruction needs image inputs (N, C, H, W), got {tuple(probe.shape)}"
        try:
            denoiser_for(self.denoiser, tuple(probe.shape[1:]))
        except InputError as exc:
            return str(exc)
        return None

    def _fit_model(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if self.standardize:
            if 0 < self.fit_samples < x.shape[0]:
                pick = torch.randperm(x.shape[0], generator=generator(self.seed, "reconstruction", "fit-subset"))
                x = x[pick[: self.fit_samples].sort().values]
            e = self._errors(clf, x, 256)
            self.mean_ = e.mean(dim=1, keepdim=True)
            self.std_ = e.std(dim=1, keepdim=True).clamp_min(1e-12) if e.shape[1] > 1 else torch.ones_like(self.mean_)
        else:
            denoiser_for(self.denoiser, x.shape[1:])  # refuse a denoiser that does not fit, at fit time

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        e = self._errors(clf, x, batch_size)
        if self.standardize:
            e = (e - self.mean_.to(e.device)) / self.std_.to(e.device)
        return e.mean(dim=0)
