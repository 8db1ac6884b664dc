"""A trainable sequence model: an LSTM stack with a Dense prediction layer on top, eq. (7)."""

import numpy as np

from . import _checks as ck
from .dense import Dense
from .lstm import LSTM, to_numpy


class SequenceModel:
    """LSTM(input_size -> hidden_size, num_layers) followed by Dense(hidden_size -> output_size).

    head : 'all' applies the prediction layer to every time step (all T*B rows in one GEMM) and returns
        (T, B, output_size); 'last' applies it to the last step's h only and returns (B, output_size).
    ``params`` / ``grads`` merge both layers' dicts under "lstm.*" and "head.*" (the same arrays, not
    copies), so optimizers and checkpoints see one flat dict. ``eval()`` disables :meth:`backward`.
    """

    def __init__(self, input_size, hidden_size, output_size, num_layers=1, *, head="all",
                 activation="identity", dtype="float32", device="auto", seed=None, **lstm_kwargs):
        if head not in ("all", "last"):
            raise ValueError(f"head: expected 'all' or 'last', got {head!r}")
        self.config = dict(input_size=input_size, hidden_size=hidden_size, output_size=output_size,
                           num_layers=num_layers, head=head, activation=activation,
                           dtype=np.dtype(ck.float_dtype(dtype)).name, **lstm_kwargs)
        self.head_mode = head
        self.lstm = LSTM(input_size, hidden_size, num_layers, dtype=dtype, device=device, seed=seed,
                         **lstm_kwargs)
        features = self.lstm.num_directions * self.lstm.output_size     # H, or 2P with options
        self.head = Dense(features, ck.positive_int("output_size", output_size), activation,
                          dtype=dtype, backend=self.lstm._be,
                          seed=None if seed is None else seed + 1)
        self.device, self.dtype, self.xp = self.lstm.device, self.lstm.dtype, self.lstm._be.xp
        self.params = {**{f"lstm.{k}": v for k, v in self.lstm.params.items()},
                       **{f"head.{k}": v for k, v in self.head.params.items()}}
        self.grads = {**{f"lstm.{k}": v for k, v in self.lstm.grads.items()},
                      **{f"head.{k}": v for k, v in self.head.grads.items()}}
        self.training = True
        self._T = None
        self._last = None

    def train(self):
        self.training = True
        self.lstm.train()
        return self

    def eval(self):
        """Evaluation mode: no dropout, and backward is refused."""
        self.training = False
        self.lstm.eval()
        return self

    def zero_grad(self):
        self.lstm.zero_grad()
        self.head.zero_grad()

    def forward(self, x, state=None, lengths=None):
        """x (T, B, I) -> (prediction, (h_n, c_n)); pass the returned state back in to carry it across
        chunks of a long sequence (truncated BPTT: no gradient flows between chunks). With
        ``lengths`` and head='last', each sample's prediction comes from its own last valid step."""
        y, state = self.lstm(x, state, lengths=lengths)
        self._T = y.shape[0]
        if self.head_mode == "all":
            return self.head(y), state
        xp = self.xp
        if lengths is None:
            self._last = None
            last = y[-1]
        else:
            idx = xp.asarray(np.asarray(to_numpy(lengths), dtype=np.int64) - 1)
            self._last = idx
            last = y[idx, xp.arange(y.shape[1])]
        return self.head(last), state

    __call__ = forward

    def backward(self, dout):
        """Backpropagate d(loss)/d(prediction); gradients add into ``grads``."""
        if not self.training:
            raise RuntimeError("backward: the model is in eval mode; call model.train() first")
        dh = self.head.backward(dout)
        if self.head_mode == "all":
            self.lstm.backward(dh)
            return
        # only the step the prediction was read from receives an error
        dy = self.lstm._be.zeros((self._T,) + tuple(dh.shape))
        if self._last is None:
            dy[-1] = dh
        else:
            dy[self._last, self.xp.arange(dh.shape[0])] = dh
        self.lstm.backward(dy)
