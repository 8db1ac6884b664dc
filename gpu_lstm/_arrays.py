"""Moving results between devices, with no dependency on the rest of the package, so that any module
(the LSTM, the torch state mapping, checkpoints) can use it without importing another."""

from typing import Any

import numpy as np


def to_numpy(value: Any) -> Any:
    """Bring a result back to host NumPy arrays.

    Parameters
    ----------
    value : array, or tuple, list or dict of arrays
        NumPy or CuPy (or anything ``numpy.asarray`` accepts), nested in containers.

    Returns
    -------
    same structure as ``value``
        With every array a ``numpy.ndarray`` on the host.
    """
    if isinstance(value, (tuple, list)):
        return type(value)(to_numpy(v) for v in value)
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if hasattr(value, "get") and hasattr(value, "__cuda_array_interface__"):
        return value.get()
    return np.asarray(value)
