"""The gate order along the 4H axis, defined once for NumPy, CuPy, the CUDA sources and torch interop.

(i, f, g, o) is PyTorch's and cuDNN's order, so ``torch.nn.LSTM`` weights load without reordering.
The CUDA kernels receive these offsets as ``-DGL_GATE_I=...`` compile options
(:func:`gpu_lstm.backend.kernels.compile_options`), so changing the order here changes it everywhere.
"""

from . import _checks as ck

GATE_ORDER = ("i", "f", "g", "o")

# Offset (in units of H) of each gate's block of rows in W (4H, I), R (4H, H), b (4H,).
GATE_INDEX = {name: k for k, name in enumerate(GATE_ORDER)}


def gate_slice(name, hidden_size):
    """Slice of the 4H axis that holds gate ``name``.

    Parameters
    ----------
    name : str
        'i', 'f', 'g' or 'o'.
    hidden_size : int
        H.

    Returns
    -------
    slice
        Rows ``k*H:(k+1)*H`` of W, R and b for the gate's offset k in :data:`GATE_ORDER`.
    """
    if name not in GATE_INDEX:
        raise ValueError(f"name: expected one of {', '.join(map(repr, GATE_ORDER))}, got {name!r}")
    k = GATE_INDEX[name]
    H = ck.positive_int("hidden_size", hidden_size)
    return slice(k * H, (k + 1) * H)


# Rows of the peephole weights "l{k}.P" (3, H): the gates that look at the cell. The CUDA kernels read
# rows 0, 1, 2 as i, f, o (cuda/lstm_kernels.cu); tests/test_features.py checks this order.
PEEPHOLE_ORDER = ("i", "f", "o")
