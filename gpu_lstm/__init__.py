"""gpu_lstm: LSTM networks with exact backpropagation through time, on NVIDIA GPUs (CuPy: cuBLAS GEMMs
and fused CUDA kernels) or on the CPU (NumPy), both computing the same equations.

Importing this package never imports cupy, touches a GPU or compiles a kernel.

>>> import gpu_lstm as gl
>>> lstm = gl.LSTM(8, 16, num_layers=2, dtype="float64", device="cpu", seed=0)
>>> import numpy as np
>>> y, (h_n, c_n) = lstm(np.zeros((5, 3, 8)))
>>> y.shape, h_n.shape
((5, 3, 16), (2, 3, 16))
"""

from ._arrays import to_numpy
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .dense import Dense
from .gates import GATE_ORDER
from .losses import mse_loss, nats_to_bits, softmax_cross_entropy
from .lstm import LSTM, BackwardBeforeForwardError
from .model import SequenceModel
from .optim import SGD, Adam, AdamW, Optimizer, clip_grad_norm, clip_grad_value, global_grad_norm

__version__ = "0.1.0"

__all__ = [
    "LSTM", "SequenceModel", "Dense",
    "mse_loss", "softmax_cross_entropy", "nats_to_bits",
    "Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm", "clip_grad_value", "global_grad_norm",
    "save_checkpoint", "load_checkpoint", "read_checkpoint", "CheckpointError",
    "to_numpy", "GATE_ORDER", "BackwardBeforeForwardError", "__version__",
]
