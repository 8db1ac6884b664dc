"""PyTorch front end: ``gpu_lstm.torch.LSTM`` is a drop-in replacement for ``torch.nn.LSTM``.

    import gpu_lstm.torch
    lstm = gpu_lstm.torch.LSTM(32, 64, num_layers=2, batch_first=True)   # was torch.nn.LSTM(...)

Importing this subpackage imports torch (an optional dependency: ``pip install "gpu_lstm[torch]"``);
``import gpu_lstm`` alone never does. See docs/torch.md.
"""

from .module import LSTM

__all__ = ["LSTM"]
