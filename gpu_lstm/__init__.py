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

from .gates import GATE_ORDER
from .lstm import LSTM, BackwardBeforeForwardError, to_numpy

__version__ = "0.1.0"

__all__ = ["LSTM", "GATE_ORDER", "BackwardBeforeForwardError", "to_numpy", "__version__"]
