"""A test-only stand-in for CuPy, so the real CupyBackend runs on a machine without a GPU.

It is not a GPU emulator; it checks the part of the GPU path that is pure host-side plumbing, and is
the most likely place for a bug nobody could run:

* "device" arrays are NumPy arrays of a subclass that has CuPy's ``.data.ptr`` and ``.device``;
* ``RawModule.get_function('lstm_cell_forward<float>')`` returns a kernel that first checks every
  argument against the parameter list parsed from cuda/lstm_kernels.cu (a ``long long`` needs an
  ``np.int64``, an ``int`` an ``np.int32``, a ``T*`` an array of the kernel's dtype or a null
  ``np.uintp(0)``, ...), as a real launch would silently misread a wrong one, then calls the same
  kernel compiled for the host (gpu_lstm.backend.host_backend);
* ``cupy_backends.cuda.libs.cublas.sgemm/dgemm`` emulate cuBLAS's column-major GEMM on raw pointers,
  with its argument checks (leading dimensions, host pointer mode).

``install()`` puts the fake modules in ``sys.modules``; use it in a fresh process only.
"""

import ctypes
import re
import sys
import time
import types

import numpy as np


# ---- arrays ---------------------------------------------------------------------------------------
class _Data:
    def __init__(self, ptr):
        self.ptr = ptr


class _Device:
    id = 0


class ndarray(np.ndarray):
    @property
    def data(self):
        return _Data(self.ctypes.data)

    @property
    def device(self):
        return _Device()

    def get(self):
        return np.array(self).view(np.ndarray)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # CuPy refuses NumPy arrays as operands of its elementwise operations (TypeError, "Unsupported
        # type <class 'numpy.ndarray'>"): a host array never silently meets a device array. NumPy
        # scalars and Python numbers are fine. 0-d NumPy arrays are let through (uncertain: CuPy
        # versions have differed on them).
        for a in inputs + tuple(kwargs.get("out", ())):
            if isinstance(a, np.ndarray) and not isinstance(a, ndarray) and a.ndim > 0:
                raise TypeError(f"Unsupported type {type(a)} (fake cupy: a NumPy array as an operand of "
                                f"cupy.{ufunc.__name__}; CuPy raises here too)")
        args = tuple(a.view(np.ndarray) if isinstance(a, ndarray) else a for a in inputs)
        outs = kwargs.get("out")
        if outs is not None:
            kwargs["out"] = tuple(a.view(np.ndarray) if isinstance(a, ndarray) else a for a in outs)
        res = getattr(ufunc, method)(*args, **kwargs)
        if method == "at":
            return None
        if outs is not None:                      # in place: hand back the caller's own arrays
            return outs[0] if len(outs) == 1 else tuple(outs)
        wrap = lambda r: np.asarray(r).view(ndarray) if isinstance(r, (np.ndarray, np.generic)) else r  # noqa: E731
        return tuple(wrap(r) for r in res) if isinstance(res, tuple) else wrap(res)


ndarray.__module__ = "cupy"


def _fake(x):
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
        return x.view(ndarray)
    if isinstance(x, tuple):
        return tuple(_fake(v) for v in x)
    return x


def _wrap(fn):
    def wrapped(*args, **kwargs):
        return _fake(fn(*args, **kwargs))
    return wrapped


def asarray(a, dtype=None):
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return np.array(a, dtype=dtype).view(ndarray)      # host -> "device": a copy, as in CuPy


def ascontiguousarray(a, dtype=None):
    # CuPy's ascontiguousarray takes only cupy arrays (its argument is typed ``ndarray``): a NumPy
    # array raises TypeError there, so it does here (it must go through cupy.asarray first).
    if not isinstance(a, ndarray):
        raise TypeError(f"fake cupy.ascontiguousarray: expected a cupy.ndarray, got {type(a).__name__} "
                        "(CuPy raises TypeError too)")
    return _fake(np.ascontiguousarray(a, dtype=dtype))


dlpack_calls = []


def from_dlpack(obj):
    """Accepts a producer that reports a CUDA device (the fake's "device" memory is host memory)."""
    dlpack_calls.append(True)

    class _AsHost:
        def __dlpack__(self, stream=None, **kwargs):
            return obj.__dlpack__()

        def __dlpack_device__(self):
            return (1, 0)
    return np.from_dlpack(_AsHost()).view(ndarray)


def asnumpy(a):
    return np.array(a).view(np.ndarray)


# ---- kernels: signatures from the CUDA source, bodies from the host build -------------------------
_KINDS = {"long long": "i64", "int": "i32"}


def _signatures():
    from gpu_lstm.backend import kernels
    src = kernels.kernel_source()
    sigs = {}
    for name, params in re.findall(r"__global__ void (\w+)\(([^)]*)\)", src):
        kinds = []
        for p in params.split(","):
            p = " ".join(p.replace("__restrict__", "").replace("const", "").split())
            typ = p.rsplit(" ", 1)[0].strip()
            if typ.endswith("*"):
                base = typ[:-1].strip()
                kinds.append("T*" if base == "T" else _KINDS[base] + "*")
            else:
                kinds.append("T" if typ == "T" else _KINDS[typ])
        sigs[name] = kinds
    return sigs


class _Kernel:
    def __init__(self, name, ctype, fn, kinds):
        self.name, self.fn, self.kinds = name, fn, kinds
        self.dtype = np.dtype({"float": np.float32, "double": np.float64}[ctype])
        self.launches = 0

    def __call__(self, grid, block, args):
        for dims in (grid, block):
            if not (isinstance(dims, tuple) and all(isinstance(d, int) and d > 0 for d in dims)):
                raise TypeError(f"{self.name}: grid and block must be tuples of positive ints, got {dims!r}")
        if len(args) != len(self.kinds):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.kinds)} parameters")
        conv = []
        for i, (a, kind) in enumerate(zip(args, self.kinds)):
            where = f"{self.name} argument {i} ({kind})"
            if kind.endswith("*"):
                if isinstance(a, np.uintp):
                    if int(a) != 0:
                        raise TypeError(f"{where}: only a null pointer may be passed as an integer")
                    conv.append(None)
                    continue
                if not isinstance(a, ndarray):
                    raise TypeError(f"{where}: expected a device array, got {type(a).__name__}")
                want = self.dtype if kind == "T*" else np.dtype({"i64*": np.int64, "i32*": np.int32}[kind])
                if a.dtype != want or not a.flags.c_contiguous:
                    raise TypeError(f"{where}: expected a C-contiguous {want.name} array, got "
                                    f"{a.dtype.name} with strides {a.strides}")
                conv.append(a.ctypes.data)
            elif kind == "T":
                if type(a) is not self.dtype.type:
                    raise TypeError(f"{where}: expected {self.dtype.type.__name__}, got {type(a).__name__}")
                conv.append(float(a))
            elif kind == "i64":
                if type(a) is not np.int64:
                    raise TypeError(f"{where}: expected np.int64, got {type(a).__name__}")
                conv.append(int(a))
            elif kind == "i32":
                if type(a) is not np.int32:
                    raise TypeError(f"{where}: expected np.int32, got {type(a).__name__}")
                conv.append(int(a))
        self.launches += 1
        self.fn(*conv)


_HOST_NAMES = {"lstm_cell_forward": "gl_cell_forward", "lstm_cell_backward": "gl_cell_backward",
               "seq_carry": "gl_seq_carry", "zoneout_mix": "gl_zoneout_mix", "zoneout_split": "gl_zoneout_split",
               "dropout_apply": "gl_dropout_apply",
               "sum_rows": "gl_sum_rows", "sum_rows_partial": "gl_sum_rows_partial",
               "softmax_xent": "gl_softmax_xent", "adam_step": "gl_adam_step", "sgd_step": "gl_sgd_step"}
compiled = []   # (code, options, name_expressions) of every RawModule made


class RawModule:
    def __init__(self, code=None, options=(), name_expressions=()):
        from gpu_lstm.backend import host_backend
        compiled.append((code, tuple(options), tuple(name_expressions)))
        self._lib = host_backend.load_library()
        self._sigs = _signatures()
        self._names = set(name_expressions)

    def get_function(self, expr):
        if expr not in self._names:
            raise ValueError(f"{expr} was not among the name expressions {sorted(self._names)}")
        name, ctype = re.fullmatch(r"(\w+)<(\w+)>", expr).groups()
        suffix = {"float": "f32", "double": "f64"}[ctype]
        return _Kernel(name, ctype, getattr(self._lib, f"{_HOST_NAMES[name]}_{suffix}"), self._sigs[name])


# ---- cuBLAS: column-major GEMM on raw pointers -----------------------------------------------------
def _view(ptr, ctype, rows, cols, ld):
    if ld < max(1, rows):
        raise RuntimeError(f"CUBLAS_STATUS_INVALID_VALUE: leading dimension {ld} < rows {rows}")
    n = ld * (cols - 1) + rows
    flat = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctype)), shape=(n,))
    item = ctypes.sizeof(ctype)
    return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(item, ld * item))


def _gemm(ctype, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    if _cublas_state["pointer_mode"] != 0:
        raise RuntimeError("fake cuBLAS: alpha/beta are host pointers but the pointer mode is not HOST")
    for v in (transa, transb, m, n, k, lda, ldb, ldc):
        if not isinstance(v, int):
            raise TypeError(f"fake cuBLAS: integer arguments expected, got {type(v).__name__}")
    a = ctypes.cast(alpha, ctypes.POINTER(ctype)).contents.value
    b = ctypes.cast(beta, ctypes.POINTER(ctype)).contents.value
    opA = _view(A, ctype, k, m, lda).T if transa == 1 else _view(A, ctype, m, k, lda)
    opB = _view(B, ctype, n, k, ldb).T if transb == 1 else _view(B, ctype, k, n, ldb)
    Cm = _view(C, ctype, m, n, ldc)
    Cm[...] = a * (opA @ opB) + (b * Cm if b != 0 else 0)
    _cublas_state["calls"] += 1


_cublas_state = {"pointer_mode": 1, "calls": 0}   # starts NOT in host mode: the backend must set it


def _make_cublas():
    mod = types.ModuleType("cupy_backends.cuda.libs.cublas")
    mod.CUBLAS_POINTER_MODE_HOST = 0
    mod.sgemm = lambda *a: _gemm(ctypes.c_float, *a)
    mod.dgemm = lambda *a: _gemm(ctypes.c_double, *a)
    mod.setPointerMode = lambda handle, mode: _cublas_state.__setitem__("pointer_mode", mode)
    mod.setStream = lambda handle, stream: None
    mod.state = _cublas_state
    return mod


# ---- cupy.cuda, cupy.random ----------------------------------------------------------------------
class Device:
    def __init__(self, device_id=None):
        self.id = 0 if device_id is None else device_id
        if self.id != 0:
            raise RuntimeError("fake cupy has one device")
        self.attributes = {"MultiProcessorCount": 4}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class _Stream:
    ptr = 0

    def synchronize(self):
        pass


class RawKernel:
    """cupy.RawKernel for small extern "C" kernels outside cuda/ (the profiler's stream-blocking spin).
    Arguments are checked against the parsed parameter list like RawModule's kernels; the body only
    runs for kernels the fake knows (a spin has no observable effect on the host, so it is a no-op)."""

    _BODIES = {"gl_profile_spin": lambda cycles: None}

    def __init__(self, code, name, options=()):
        m = re.search(r'extern "C" __global__ void ' + re.escape(name) + r"\(([^)]*)\)", code)
        if m is None:
            raise ValueError(f"fake RawKernel: no extern \"C\" kernel {name!r} in the code")
        if name not in self._BODIES:
            raise NotImplementedError(f"fake RawKernel: no host body for {name!r}")
        kinds = []
        for p in m.group(1).split(","):
            typ = " ".join(p.replace("const", "").split()).rsplit(" ", 1)[0]
            kinds.append(_KINDS[typ])
        self._k = _Kernel(name, "float", self._BODIES[name], kinds)

    def __call__(self, grid, block, args):
        self._k(grid, block, args)


class Event:
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class RandomState:
    def __init__(self, seed):
        self._rs = np.random.RandomState(seed)

    def random_sample(self, size=None, dtype=float):
        return self._rs.random_sample(size).astype(dtype).view(ndarray)


def install():
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "fake (host kernels)"
    def module_getattr(name):
        obj = getattr(np, name)    # NumPy's function, with results viewed as "device" arrays
        return _wrap(obj) if callable(obj) and not isinstance(obj, type) else obj
    cupy.__getattr__ = module_getattr
    for name, value in (("ndarray", ndarray), ("asarray", asarray), ("ascontiguousarray", ascontiguousarray),
                        ("asnumpy", asnumpy), ("RawModule", RawModule), ("RawKernel", RawKernel),
                        ("from_dlpack", from_dlpack)):
        setattr(cupy, name, value)
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = Device
    cuda.Event = Event
    cuda.get_elapsed_time = lambda s, e: 1e3 * (e.t - s.t)
    cuda.get_current_stream = lambda: _Stream()
    cuda.device = types.SimpleNamespace(get_cublas_handle=lambda: 1)
    cuda.runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 13000,
        getDeviceProperties=lambda i: {"name": b"fake GPU (host-built kernels)", "major": 9, "minor": 0,
                                       "multiProcessorCount": 4})
    cupy.cuda = cuda
    _global = np.random.RandomState(0)
    cupy.random = types.SimpleNamespace(
        RandomState=RandomState,
        standard_normal=lambda size=None, dtype=float: _global.standard_normal(size).astype(dtype).view(ndarray))
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = _make_cublas()
    libs.nvrtc = types.ModuleType("cupy_backends.cuda.libs.nvrtc")
    libs.nvrtc.getVersion = lambda: (13, 0)
    sys.modules.update({"cupy": cupy, "cupy.cuda": cuda, "cupy_backends": types.ModuleType("cupy_backends"),
                        "cupy_backends.cuda": types.ModuleType("cupy_backends.cuda"),
                        "cupy_backends.cuda.libs": libs, "cupy_backends.cuda.libs.cublas": libs.cublas,
                        "cupy_backends.cuda.libs.nvrtc": libs.nvrtc})
    return cupy
