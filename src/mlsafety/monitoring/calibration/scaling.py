"""Post-hoc recalibration of logits fitted on validation data: temperature and vector scaling
(Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from mlsafety.core import InputError, NotFittedError, Registry

C = TypeVar("C", bound="Calibrator")


class Calibrator:
    """Base class: ``fit(logits, labels)`` on validation data, then ``transform(logits)``.

    Subclasses write :meth:`_fit` (returning nothing, setting state that ends in ``_``) and
    :meth:`_transform`. Fitting runs in float64 with L-BFGS.
    """

    name: str

    def fit(self: C, logits: torch.Tensor, labels: torch.Tensor) -> C:
        """Fit on validation logits (N, K) and labels (N,) by minimising the NLL; returns self."""
        z, y = _check(logits, labels)
        with torch.enable_grad():
            self._fit(z, y)
        self.fitted_ = True
        return self

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """Recalibrated logits (N, K), same dtype and device as ``logits``."""
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call .fit(val_logits, val_labels) first")
        return self._transform(logits.detach().double()).to(logits.dtype)

    def predict_proba(self, logits: torch.Tensor) -> torch.Tensor:
        """Recalibrated probabilities (N, K)."""
        return self.transform(logits).softmax(dim=1)

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        raise NotImplementedError

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _check(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise InputError(f"logits must have shape (N, K) with N > 0, got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise InputError("logits contain NaN or infinite values")
    y = labels.to(logits.device).long()
    if y.shape != (logits.shape[0],) or int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
        raise InputError(f"labels must have shape ({logits.shape[0]},) with values in [0, {logits.shape[1]})")
    return logits.detach().double().clone(), y


def _minimise(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], max_iter: int) -> None:
    """Minimise ``loss_fn`` over ``params`` in place with L-BFGS (SciPy's L-BFGS-B, torch gradients).

    SciPy's optimiser is used rather than ``torch.optim.LBFGS`` because constructing any
    ``torch.optim`` optimiser imports TorchDynamo, which costs seconds once per process; the
    parameters here are a handful of numbers, so nothing is lost.
    """
    from scipy.optimize import minimize

    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def assign(flat: np.ndarray) -> None:
        chunks = torch.from_numpy(flat).split(sizes)
        with torch.no_grad():
            for p, c, shape in zip(params, chunks, shapes):
                p.copy_(c.reshape(shape).to(p))

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        assign(flat)
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in params])
        return float(loss.detach()), grad.detach().cpu().double().numpy()

    x0 = torch.cat([p.detach().reshape(-1) for p in params]).cpu().double().numpy()
    result = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    assign(result.x)


CALIBRATORS: Registry[Calibrator] = Registry("calibrator")


@CALIBRATORS.register("temperature")
class TemperatureScaler(Calibrator):
    """Divide logits by one temperature ``T > 0`` (``temperature_``), fitted by NLL.

    The optimiser works on ``log T`` so ``T`` stays positive without constraints.

    Args:
        max_iter: L-BFGS iterations.
    """

    def __init__(self, max_iter: int = 100) -> None:
        self.max_iter = max_iter

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        log_t = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
        _minimise([log_t], lambda: F.cross_entropy(logits / log_t.exp(), labels), self.max_iter)
        self.temperature_ = float(log_t.detach().exp())

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature_


@CALIBRATORS.register("vector")
class VectorScaler(Calibrator):
    """Per-class scale and shift ``z * w + b`` (``weight_``, ``bias_`` (K,)), fitted by NLL.

    Args:
        max_iter: L-BFGS iterations.
    """

    def __init__(self, max_iter: int = 100) -> None:
        self.max_iter = max_iter

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        k = logits.shape[1]
        w = torch.ones(k, dtype=torch.float64, device=logits.device, requires_grad=True)
        b = torch.zeros(k, dtype=torch.float64, device=logits.device, requires_grad=True)
        _minimise([w, b], lambda: F.cross_entropy(logits * w + b, labels), self.max_iter)
        self.weight_ = w.detach()
        self.bias_ = b.detach()

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.weight_.to(logits.device) + self.bias_.to(logits.device)
