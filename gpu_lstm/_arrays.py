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
        With every array a ``numpy.ndarray`` on the host. CuPy arrays of dtype uint16 come back as
        ``ml_dtypes.bfloat16`` views: a GPU bfloat16 model keeps its arrays as uint16 bit patterns
        (CuPy's own bfloat16 support is not relied on); gpu_lstm makes no other uint16 arrays (to
        get the raw integers of one, call ``cupy.asnumpy``).
    """
    if isinstance(value, (tuple, list)):
        return type(value)(to_numpy(v) for v in value)
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if type(value).__module__.startswith("cupy") and hasattr(value, "get"):   # cupy.ndarray
        host = value.get()
        if host.dtype == np.uint16:
            from .backend.lowp import dtype_of
            host = host.view(dtype_of("bfloat16"))
        return host
    if hasattr(value, "get") and hasattr(value, "__cuda_array_interface__"):
        return value.get()
    return np.asarray(value)
