"""Backends: the few operations that differ between CPU and GPU.

The time loop, buffer layout and GEMM order live once in :mod:`gpu_lstm.lstm`; a backend supplies

* ``gemm(a, b, out, trans_a=False, trans_b=False, beta=0.0)``: ``out = op(a) @ op(b) + beta * out``
* ``cell_forward(gates, bias, c_prev, c, h)``: eqs. (1)-(6) for one step, gates activated in place
* ``cell_backward(gates, c, c_prev, dh, dc_carry, dgates)``: eqs. (16)-(20) for one step
* ``sum_rows(x, out)``: ``out += x.sum(axis=0)``, deterministic (eq. 25)
* ``zoneout_mix``/``zoneout_split``/``dropout``: the random masks come as :mod:`gpu_lstm.philox`
  counters and are computed where they are used (bitwise the same on every backend)
* array helpers: ``xp``, ``empty``, ``zeros``, ``asarray``, ``to_numpy``, ``activate``

Implementations: :class:`NumpyBackend` (the reference), ``HostKernelBackend`` (NumPy GEMMs with the
CUDA kernel source compiled for the CPU; for tests), ``CupyBackend`` (cuBLAS + fused kernels).
Nothing here imports cupy or compiles anything until a backend is asked for.
"""

import os

from .numpy_backend import NumpyBackend

DEVICE_ENV = "GPU_LSTM_DEVICE"
_DEVICES = ("auto", "cpu", "gpu", "host")


def gpu_available():
    """(True, description) when cupy imports, sees a CUDA device, and can load cuBLAS and NVRTC;
    else (False, reason).

    CuPy 14 loads cuBLAS and NVRTC lazily, on first use: ``import cupy`` and a device count succeed
    on a machine whose CUDA libraries are missing (no ``cupy-cuda1Nx[ctk]``, no toolkit), and the
    first GEMM or kernel compile would then fail inside a model. So both are probed here: a cuBLAS
    handle is created (it loads libcublas) and NVRTC is asked for its version (it loads libnvrtc).
    """
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return False, f"cupy not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n >= 1:
            # A device can be counted yet unusable (driver too old, busy, no memory): touch it once.
            cupy.cuda.runtime.getDeviceProperties(0)
    except Exception as exc:
        return False, f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, "no CUDA device found"
    try:
        with cupy.cuda.Device(0):
            cupy.cuda.device.get_cublas_handle()
    except Exception as exc:
        return False, f"cuBLAS cannot be loaded ({type(exc).__name__}: {exc})"
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as exc:
        return False, f"NVRTC cannot be loaded ({type(exc).__name__}: {exc})"
    return True, f"{n} CUDA device(s)"


_warned_fallback = False


def _cupy_installed():
    import importlib.util
    try:
        return importlib.util.find_spec("cupy") is not None
    except (ImportError, ValueError):
        return False


def _warn_cpu_fallback(why):
    """device='auto' chose the CPU although cupy is installed: say why, once per process."""
    global _warned_fallback
    if _warned_fallback or not _cupy_installed():
        return
    _warned_fallback = True
    import warnings
    warnings.warn(f"gpu_lstm: device='auto' falls back to the CPU: cupy is installed but {why}",
                  RuntimeWarning, stacklevel=4)


def resolve_device(device):
    """Map 'auto' (or the GPU_LSTM_DEVICE environment variable) to 'cpu' or 'gpu'."""
    if not isinstance(device, str) or device not in _DEVICES:
        raise ValueError(f"device: expected one of {_DEVICES}, got {device!r}")
    if device == "auto":
        forced = os.environ.get(DEVICE_ENV, "").strip().lower()
        if forced:
            if forced not in ("cpu", "gpu", "host"):
                raise ValueError(f"{DEVICE_ENV}: expected 'cpu', 'gpu' or 'host', got {forced!r}")
            device = forced
        else:
            ok, why = gpu_available()
            device = "gpu" if ok else "cpu"
            if not ok:
                _warn_cpu_fallback(why)
    return device


def get_backend(device, dtype):
    """Backend instance for a resolved device name ('cpu', 'gpu', 'host') and a NumPy dtype."""
    device = resolve_device(device)
    import numpy as np
    low = np.dtype(dtype).name in ("bfloat16", "float16")   # 16-bit storage, float32 maths (lowp.py)
    if device == "cpu":
        if low:
            from .lowp import LowPrecisionNumpyBackend
            return LowPrecisionNumpyBackend(dtype)
        return NumpyBackend(dtype)
    if device == "host":
        if low:
            from .host_backend import LowPrecisionHostBackend
            return LowPrecisionHostBackend(dtype)
        from .host_backend import HostKernelBackend
        return HostKernelBackend(dtype)
    ok, why = gpu_available()
    if not ok:
        raise RuntimeError(f"device='gpu' requested but {why}; install gpu_lstm[cuda12] or [cuda13] (they "
                           "pull the CUDA libraries) on a CUDA machine, or use device='cpu'")
    from .cupy_backend import CupyBackend
    return CupyBackend(dtype)


_instances = {}


def backend_for(array, dtype=None):
    """A (cached) backend matching where ``array`` lives: the GPU for cupy arrays, else NumPy."""
    import numpy as np
    dtype = np.dtype(dtype if dtype is not None else array.dtype)
    device = "gpu" if type(array).__module__.startswith("cupy") else "cpu"
    if device == "gpu" and dtype == np.uint16:   # a GPU bfloat16 array: uint16 bit patterns
        from .lowp import dtype_of
        dtype = dtype_of("bfloat16")
    key = (device, dtype.name)
    if key not in _instances:
        _instances[key] = get_backend(device, dtype)
    return _instances[key]
