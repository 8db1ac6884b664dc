"""The prediction layer y = F(W^y h + b^y), eq. (7), with its backward, eqs. (12), (21), (22)."""

from typing import Any, Optional

import numpy as np

from . import _checks as ck
from .backend import get_backend

ACTIVATIONS = ("identity", "sigmoid", "tanh", "softmax")


class Dense:
    """Affine layer plus activation, applied to the last axis of any input.

    Parameters
    ----------
    in_features, out_features : int
    activation : {'identity', 'sigmoid', 'tanh', 'softmax'}
    dtype : {'float32', 'float64', 'bfloat16', 'float16'}
    device : {'auto', 'cpu', 'gpu'}
    seed : int or None
        Seeds the initialisation.
    backend : optional
        Share another layer's backend (and device) instead of ``device``: the ``_be`` of a
        :class:`gpu_lstm.LSTM` of the same dtype.

    Notes
    -----

    ``h`` of shape (..., in_features) is flattened to (N, in_features) so all T*B rows go through one
    GEMM. ``params``: ``"W"`` (out_features, in_features), ``"b"`` (out_features,); ``grads`` the same,
    accumulated by :meth:`backward`. Initialised uniform in +-1/sqrt(in_features) like torch.nn.Linear.
    For classification prefer ``activation="identity"`` with
    :func:`gpu_lstm.losses.softmax_cross_entropy`, which applies the softmax stably itself.
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "identity", *,
                 dtype: str = "float32", device: str = "auto", seed: Optional[int] = None,
                 backend: Any = None) -> None:
        self.in_features = ck.positive_int("in_features", in_features)
        self.out_features = ck.positive_int("out_features", out_features)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.dtype = ck.float_dtype(dtype)
        if backend is not None:
            # The backend computes in its own dtype: a float64 layer on a float32 backend would have
            # float64 parameters but float32 gradients and outputs.
            if not (hasattr(backend, "dtype") and hasattr(backend, "gemm")):
                raise TypeError(f"backend: expected another layer's backend (an LSTM's _be), got "
                                f"{type(backend).__name__}")
            if backend.dtype != self.dtype:
                raise ValueError(f"backend: expected one of dtype {self.dtype.name} (the layer's), got one of "
                                 f"{backend.dtype.name}")
        self._be = backend if backend is not None else get_backend(device, self.dtype)
        self.device = self._be.name
        rng = np.random.default_rng(ck.seed("seed", seed))
        bound = 1.0 / np.sqrt(self.in_features)
        self.params = {
            "W": self._be.asarray("W", rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(self.dtype)),
            "b": self._be.asarray("b", rng.uniform(-bound, bound, self.out_features).astype(self.dtype)),
        }
        self.grads = {k: self._be.zeros(v.shape, self._be.wide) for k, v in self.params.items()}   # float32 for 16-bit
        self._saved = None

    def zero_grad(self) -> None:
        """Set the gradients to zero (backward accumulates)."""
        for g in self.grads.values():
            g[...] = 0

    def forward(self, h: Any) -> Any:
        """Apply the layer.

        Parameters
        ----------
        h : array
            (..., in_features), the layer's dtype.

        Returns
        -------
        array
            (..., out_features).
        """
        return self._forward(h, owned=False)

    __call__ = forward

    def _forward(self, h: Any, owned: bool) -> Any:
        """``owned``: h is the caller's own temporary (SequenceModel's LSTM output), which nobody can
        change before backward, so it is saved without a copy."""
        be = self._be
        with be.activate():
            h = be.asarray("h", h)
            ck.check_dtype("h", h, self.dtype, be)
            if h.ndim < 1 or h.shape[-1] != self.in_features:
                raise ValueError(f"h: expected last axis of size in_features = {self.in_features}, "
                                 f"got shape {ck.shape_str(h.shape)}")
            lead = h.shape[:-1]
            h2 = h.reshape(-1, self.in_features)                              # (N, in)
            # Saved for backward (dW, eq. 21): a copy of a user's h, so changing it afterwards cannot
            # change dW.
            h2 = be.xp.ascontiguousarray(h2) if owned else h2.copy()
            z = be.empty((h2.shape[0], self.out_features))                    # (N, out)
            z[...] = self.params["b"]
            be.gemm(h2, self.params["W"], z, trans_b=True, beta=1.0)          # eq. (7), inside F
            if z.dtype != be.wide:   # 16-bit: the activation in float32, rounded once
                y = be.astype(self._activate(be.astype(z, be.wide)), self.dtype)
            else:
                y = self._activate(z)
            self._saved = (h2, y, lead)
            y = y.reshape(lead + (self.out_features,))
            # F' in backward reads the saved y (all but identity), which `pred -= target` must not change.
            return y if self.activation == "identity" else y.copy()

    def _activate(self, z):
        xp = self._be.xp
        if self.activation == "identity":
            return z
        if self.activation == "tanh":
            return xp.tanh(z)
        if self.activation == "sigmoid":
            e = xp.exp(-xp.abs(z))
            return xp.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)
        e = xp.exp(z - z.max(axis=1, keepdims=True))                          # softmax, stable
        return e / e.sum(axis=1, keepdims=True)

    def backward(self, dy: Any) -> Any:
        """Backpropagate through the last forward; adds dW (eq. 21) and db (eq. 22) into ``grads``.

        Parameters
        ----------
        dy : array
            (..., out_features), the gradient with respect to the last output.

        Returns
        -------
        array
            dh, (..., in_features).
        """
        if self._saved is None:
            from .lstm import BackwardBeforeForwardError
            raise BackwardBeforeForwardError("backward: called before forward")
        be, xp = self._be, self._be.xp
        h2, y, lead = self._saved
        with be.activate():
            dy = be.asarray("dy", dy)
            ck.check_dtype("dy", dy, self.dtype, be)
            ck.check_shape("dy", dy, lead + (self.out_features,))
            dy = dy.reshape(-1, self.out_features)
            low = dy.dtype != be.wide
            if low:                  # 16-bit: F' in float32, dz rounded once (it is a GEMM operand)
                dy, y = be.astype(dy, be.wide), be.astype(y, be.wide)
            # delta-y (.) F'(x): the factor that eqs. (12), (21), (22) share.
            if self.activation == "identity":
                dz = xp.ascontiguousarray(dy)
            elif self.activation == "tanh":
                dz = dy * (1 - y * y)
            elif self.activation == "sigmoid":
                dz = dy * y * (1 - y)
            else:  # softmax Jacobian-vector product: s (.) (dy - <dy, s>)
                dz = y * (dy - (dy * y).sum(axis=1, keepdims=True))
            if low:
                dz = xp.ascontiguousarray(be.astype(dz, self.dtype))
            be.gemm(dz, h2, self.grads["W"], trans_a=True, beta=1.0)          # eq. (21)
            be.sum_rows(dz, self.grads["b"])                                  # eq. (22)
            dh = be.empty((dz.shape[0], self.in_features))
            be.gemm(dz, self.params["W"], dh)                                 # eq. (12): (W^y)^T (...)
            return dh.reshape(lead + (self.in_features,))
