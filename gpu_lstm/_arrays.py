"""Moving results between devices, with no dependency on the rest of the package, so that any module
(the LSTM, the torch state mapping, checkpoints) can use it without importing another."""

from typing import Any, Callable

import numpy as np


def _walk(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with ``leaf`` applied to every array in its tuples, lists and dicts."""
    if isinstance(value, (tuple, list)):
        return type(value)(_walk(v, leaf) for v in value)
    if isinstance(value, dict):
        return {k: _walk(v, leaf) for k, v in value.items()}
    return leaf(value)


def _host(value: Any) -> Any:
    if type(value).__module__.startswith("cupy") and hasattr(value, "get"):   # cupy.ndarray
        return value.get()
    if hasattr(value, "get") and hasattr(value, "__cuda_array_interface__"):
        return value.get()
    return np.asarray(value)


def to_numpy(value: Any) -> Any:
    """Bring a result back to host NumPy arrays, each with its device array's own dtype.

    Parameters
    ----------
    value : array, or tuple, list or dict of arrays
        NumPy or CuPy (or anything ``numpy.asarray`` accepts), nested in containers.

    Returns
    -------
    same structure as ``value``
        With every array a ``numpy.ndarray`` on the host, of the same dtype. A GPU bfloat16 model
        keeps its arrays as CuPy uint16 arrays holding the bfloat16 bit patterns (CuPy's own bfloat16
        support is not relied on), and an array does not say which model it came from: here they come
        back as those uint16 bits, never guessed to be bfloat16 (a uint16 array of token ids or
        lengths stays integers). Use the model's ``to_numpy`` (:meth:`gpu_lstm.LSTM.to_numpy`,
        ``SequenceModel.to_numpy``) to get ``ml_dtypes.bfloat16`` arrays, or ``.view(ml_dtypes.bfloat16)``.
    """
    return _walk(value, _host)


def to_numpy_as(backend: Any, value: Any) -> Any:
    """:func:`to_numpy` through ``backend.to_numpy``, which knows its own arrays' logical dtypes (a
    bfloat16 GPU backend's uint16 arrays are bfloat16 bits and come back as ``ml_dtypes.bfloat16``)."""
    return _walk(value, backend.to_numpy)
