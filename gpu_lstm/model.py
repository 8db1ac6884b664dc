"""A trainable sequence model: an LSTM stack with a Dense prediction layer on top, eq. (7)."""

from typing import Any, Optional, Tuple

import numpy as np

from . import _checks as ck
from ._arrays import to_numpy
from .dense import Dense
from .lstm import LSTM


class SequenceModel:
    """LSTM(input_size -> hidden_size, num_layers) followed by Dense(features -> output_size).

    Parameters
    ----------
    input_size, hidden_size, output_size : int
        I, H and the prediction size.
    num_layers : int
        The number of stacked LSTM layers.
    head : {'all', 'last'}
        'all' applies the prediction layer to every time step (all T*B rows in one GEMM) and returns
        (T, B, output_size), or (B, T, output_size) with ``batch_first=True``; 'last' applies it to
        each sample's last step only (its last valid step when ``lengths`` are given) and returns
        (B, output_size).
    activation : {'identity', 'sigmoid', 'tanh', 'softmax'}
        The prediction layer's F in eq. (7).
    dtype : {'float32', 'float64', 'bfloat16', 'float16'}
        The 16-bit types keep c and the gradients in float32 (docs/precision.md).
    device : {'auto', 'cpu', 'gpu'}
    seed : int or None
        Seeds the LSTM (``seed``) and the prediction layer (``seed + 1``).
    **lstm_kwargs
        Any other :class:`gpu_lstm.LSTM` option (``batch_first``, ``bidirectional``, ``dropout``, ...).

    Notes
    -----
    ``params`` / ``grads`` merge both layers' dicts under "lstm.*" and "head.*" (the same arrays, not
    copies), so optimizers and checkpoints see one flat dict. ``eval()`` disables :meth:`backward`.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, num_layers: int = 1, *,
                 head: str = "all", activation: str = "identity", dtype: str = "float32",
                 device: str = "auto", seed: Optional[int] = None, **lstm_kwargs: Any) -> None:
        if head not in ("all", "last"):
            raise ValueError(f"head: expected 'all' or 'last', got {head!r}")
        output_size = ck.positive_int("output_size", output_size)
        self.config = dict(input_size=input_size, hidden_size=hidden_size, output_size=output_size,
                           num_layers=num_layers, head=head, activation=activation,
                           dtype=np.dtype(ck.float_dtype(dtype)).name, **lstm_kwargs)
        self.head_mode = head
        self.lstm = LSTM(input_size, hidden_size, num_layers, dtype=dtype, device=device, seed=seed,
                         **lstm_kwargs)
        features = self.lstm.num_directions * self.lstm.output_size     # H, or 2P with options
        self.head = Dense(features, output_size, activation, dtype=dtype, backend=self.lstm._be,
                          seed=None if seed is None else seed + 1)
        self.device, self.dtype, self.xp = self.lstm.device, self.lstm.dtype, self.lstm._be.xp
        self.batch_first = self.lstm.batch_first
        self.params = {**{f"lstm.{k}": v for k, v in self.lstm.params.items()},
                       **{f"head.{k}": v for k, v in self.head.params.items()}}
        self.grads = {**{f"lstm.{k}": v for k, v in self.lstm.grads.items()},
                      **{f"head.{k}": v for k, v in self.head.grads.items()}}
        self.training = True
        self._y_shape = None
        self._last = None

    def train(self) -> "SequenceModel":
        """Training mode (the default): dropout and zoneout on, :meth:`backward` allowed.

        Returns
        -------
        SequenceModel
            ``self``.
        """
        self.training = True
        self.lstm.train()
        return self

    def eval(self) -> "SequenceModel":
        """Evaluation mode: no dropout, and backward is refused.

        Returns
        -------
        SequenceModel
            ``self``.
        """
        self.training = False
        self.lstm.eval()
        return self

    def zero_grad(self) -> None:
        """Set every gradient of both layers to zero (backward accumulates)."""
        self.lstm.zero_grad()
        self.head.zero_grad()

    def to_numpy(self, value: Any) -> Any:
        """This model's arrays on the host in their logical dtypes.

        Parameters
        ----------
        value : array, or tuple, list or dict of arrays
            As for :meth:`gpu_lstm.LSTM.to_numpy`.

        Returns
        -------
        same structure as ``value``
            Every array a ``numpy.ndarray`` on the host (a GPU bfloat16 model's as bfloat16).
        """
        return self.lstm.to_numpy(value)

    def forward(self, x: Any, state: Optional[Tuple[Any, Any]] = None,
                lengths: Any = None) -> Tuple[Any, Tuple[Any, Any]]:
        """Predict from a sequence.

        Parameters
        ----------
        x : array
            (T, B, I), or (B, T, I) with ``batch_first=True``.
        state : (h, c) or None
            The state returned by a previous call, to carry it across chunks of a long sequence
            (truncated BPTT: no gradient flows between chunks). None starts from zeros.
        lengths : array of int, optional
            (B,) valid steps per sample, in [1, T]; with head='last' each sample's prediction comes
            from its own last valid step.

        Returns
        -------
        prediction : array
            (T, B, output_size) (or batch-first) for head='all'; (B, output_size) for head='last'.
        state : (h_n, c_n)
            The LSTM's final states, (num_layers * num_directions, B, features).
        """
        shape = getattr(x, "shape", None)
        if self.head_mode == "last" and shape is not None and len(shape) == 3 \
                and shape[1 if self.batch_first else 0] == 0:       # checked before the LSTM records anything
            raise ValueError(f"x: expected at least one time step for head='last' (its prediction comes "
                             f"from the last step), got shape {ck.shape_str(shape)}")
        ck.pair("state", state, hint=", as a previous call returns")
        y, state = self.lstm(x, state, lengths=lengths)
        self._y_shape = tuple(y.shape)
        if self.head_mode == "all":
            return self.head._forward(y, owned=True), state      # y is this model's: no copy
        xp = self.xp
        time_axis = 1 if self.batch_first else 0
        B = y.shape[1 - time_axis]
        if lengths is None:
            self._last = None
            last = y[:, -1] if self.batch_first else y[-1]            # (B, features)
        else:
            idx = xp.asarray(np.asarray(to_numpy(lengths), dtype=np.int64) - 1)
            self._last = idx
            last = y[xp.arange(B), idx] if self.batch_first else y[idx, xp.arange(B)]
        return self.head._forward(last, owned=True), state

    __call__ = forward

    def backward(self, dout: Any) -> None:
        """Backpropagate d(loss)/d(prediction); gradients add into ``grads``.

        Parameters
        ----------
        dout : array
            The gradient of the loss with respect to the last forward's prediction, same shape.
        """
        if not self.training:
            raise RuntimeError("backward: the model is in eval mode; call model.train() first")
        dh = self.head.backward(dout)
        if self.head_mode == "all":
            self.lstm.backward(dh)
            return
        # only the step the prediction was read from receives an error
        dy = self.lstm._be.zeros(self._y_shape)
        B = dh.shape[0]
        if self._last is None:
            if self.batch_first:
                dy[:, -1] = dh
            else:
                dy[-1] = dh
        elif self.batch_first:
            dy[self.xp.arange(B), self._last] = dh
        else:
            dy[self._last, self.xp.arange(B)] = dh
        self.lstm.backward(dy)
