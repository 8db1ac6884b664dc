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
  with its argument checks (leading dimensions, host pointer mode);
* the persistent kernels' cooperative launch (last section): device attributes, occupancy, and the
  kernels of cuda/persistent_lstm.cu run by their host build (gpu_lstm.backend.persistent);
* stream capture (section after cuBLAS): streams, ``begin_capture``/``end_capture`` and graph replay;
  while a stream captures, kernel launches, GEMMs of the capture-capable binding
  (gpu_lstm.backend.cublas_capture, emulated as ``FakeLibcublas``) and in-place array operations are
  recorded instead of run, and what CUDA or CuPy would refuse raises ``CaptureError``.

``install()`` puts the fake modules in ``sys.modules``; use it in a fresh process only.
"""

import ctypes
import re
import sys
import time
import types
import weakref

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
        _check_bits_ufunc(ufunc, inputs + tuple(kwargs.get("out", ())))
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


# ---- the memory pool ---------------------------------------------------------------------------------
# cupy.get_default_memory_pool(): used_bytes, total_bytes, free_all_blocks. The fake counts the memory of
# "device" arrays (each owning buffer once, released when it is garbage-collected) from the first call
# of free_all_blocks on; total_bytes is the peak of that count since the last free_all_blocks (a caching
# pool holds what was ever needed at once). Buffers allocated before tracking began are not counted, so
# only differences are meaningful (what gpu_lstm.bench measures). Block rounding is not modelled.
class _MemoryPool:
    def __init__(self):
        self.tracking = False
        self.used = self.peak = 0
        self._seen = set()

    def _track(self, owner):
        key = id(owner)
        if key in self._seen:
            return
        self._seen.add(key)
        self.used += owner.nbytes
        self.peak = max(self.peak, self.used)
        weakref.finalize(owner, self._release, key, owner.nbytes)

    def _release(self, key, nbytes):
        self._seen.discard(key)
        self.used -= nbytes

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.peak

    def free_all_blocks(self):
        self.tracking = True
        self.peak = self.used


_pool = _MemoryPool()


def _array_finalize(self, obj):
    if _pool.tracking:
        owner = self if self.base is None else self.base
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        if isinstance(owner, np.ndarray) and owner.flags.owndata:
            _pool._track(owner)


ndarray.__array_finalize__ = _array_finalize


# ---- bfloat16 as uint16 bit patterns ---------------------------------------------------------------
# The GPU backend keeps bfloat16 in uint16 arrays (CuPy's own bfloat16 is not relied on). Nothing in
# gpu_lstm has other uint16 device arrays, so the fake treats every uint16 array as bfloat16 bits and
# refuses what would silently compute on the bit patterns as integers: arithmetic ufuncs (only the
# product of two uint16 arrays is let through: the 0/1 length mask times bits, exact), numeric casts
# between uint16 and float types, and float values written into uint16 arrays or back. Arrays of
# ml_dtypes.bfloat16 itself are refused on the "device" (not every CuPy holds them).
def _is_bits(a):
    return isinstance(a, np.ndarray) and a.dtype == np.uint16


def _check_bits_ufunc(ufunc, operands):
    bits = [a for a in operands if _is_bits(a)]
    if not bits:
        return
    if ufunc is np.multiply and all(_is_bits(a) for a in operands):
        return
    raise TypeError(f"fake cupy: {ufunc.__name__} on uint16 (bfloat16 bit pattern) arrays computes on "
                    "the bits as integers; widen to float32 first")


def _check_bits_mix(what, dst_dtype, src):
    sd = getattr(src, "dtype", None)
    if sd is None or np.ndim(src) == 0 and not isinstance(src, np.ndarray):
        return
    sd = np.dtype(sd)
    if (dst_dtype == np.uint16) != (sd == np.uint16) and (sd.kind == "f" or np.dtype(dst_dtype).kind == "f"):
        raise TypeError(f"fake cupy: {what} converts between {sd.name} and {np.dtype(dst_dtype).name} "
                        "numerically; uint16 arrays are bfloat16 bit patterns")


def _no_bf16_dtype(dtype):
    if dtype is not None and np.dtype(dtype).name == "bfloat16":
        raise TypeError("fake cupy: a bfloat16 device array; the GPU backend keeps bfloat16 as uint16 "
                        "bit patterns (CuPy's own bfloat16 is not relied on)")


def _fake(x):
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
        return x.view(ndarray)
    if isinstance(x, tuple):
        return tuple(_fake(v) for v in x)
    return x


def _wrap(fn):
    def wrapped(*args, **kwargs):
        _no_bf16_dtype(kwargs.get("dtype"))
        res = _fake(fn(*args, **kwargs))
        for r in (res if isinstance(res, tuple) else (res,)):
            if isinstance(r, np.ndarray):
                _no_bf16_dtype(r.dtype)
        return res
    return wrapped


def asarray(a, dtype=None):
    _no_bf16_dtype(dtype if dtype is not None else getattr(a, "dtype", None))
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
_KINDS = {"long long": "i64", "int": "i32", "double": "f64", "unsigned int": "u32"}
# Pointer kinds other than T*: the dtype the array must have.
_PTR_DTYPES = {"i64*": np.int64, "i32*": np.int32, "f64*": np.float64, "u32*": np.uint32}


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
                kinds.append({"T": "T*", "gl_acc_t<T>": "A*"}.get(base) or _KINDS[base] + "*")
            else:
                kinds.append({"T": "T", "gl_acc_t<T>": "A"}.get(typ) or _KINDS[typ])
        sigs[name] = kinds
    return sigs


_DEVICE_DTYPES = {"float": np.float32, "double": np.float64, "gl_bf16": np.uint16, "gl_half": np.float16}
_SUFFIXES = {"float": "f32", "double": "f64", "gl_bf16": "bf16", "gl_half": "f16"}


class _Kernel:
    def __init__(self, name, ctype, fn, kinds):
        self.name, self.fn, self.kinds = name, fn, kinds
        # The device dtype of T: gl_bf16 lives in uint16 arrays (bfloat16 bit patterns, what the GPU
        # backend allocates), gl_half in float16 ones.
        self.dtype = np.dtype(_DEVICE_DTYPES[ctype])
        # gl_acc_t<T>: the arithmetic type (T itself for float and double, float for the 16-bit types)
        self.acc = np.dtype(np.float32) if ctype in ("gl_bf16", "gl_half") else self.dtype
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
                want = {"T*": self.dtype, "A*": self.acc}.get(kind) or np.dtype(_PTR_DTYPES[kind])
                if a.dtype != want or not a.flags.c_contiguous:
                    raise TypeError(f"{where}: expected a C-contiguous {want.name} array, got "
                                    f"{a.dtype.name} with strides {a.strides}")
                conv.append(a.ctypes.data)
            elif kind in ("T", "A"):
                want = self.dtype if kind == "T" else self.acc
                if type(a) is not want.type:
                    raise TypeError(f"{where}: expected {want.type.__name__}, got {type(a).__name__}")
                conv.append(float(a))
            elif kind == "f64":
                if type(a) is not np.float64:
                    raise TypeError(f"{where}: expected np.float64, got {type(a).__name__}")
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
               "softmax_xent": "gl_softmax_xent", "adam_step": "gl_adam_step", "sgd_step": "gl_sgd_step",
               "grad_sumsq_partial": "gl_grad_sumsq_partial", "grad_norm_finish": "gl_grad_norm_finish",
               "grad_clip_coef": "gl_grad_clip_coef", "grad_scale": "gl_grad_scale",
               "narrow_copy": "gl_narrow_copy", "widen_copy": "gl_widen_copy", "add_rows": "gl_add_rows"}
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
        suffix = _SUFFIXES[ctype]
        host_name = f"{_HOST_NAMES[name]}_{suffix}"
        fn = getattr(self._lib, host_name, None)
        if fn is None:   # a 16-bit instantiation the host build leaves out (the clip kernels: gradients are float32)
            def fn(*args, _n=host_name):
                raise NotImplementedError(f"fake cupy: {_n} has no host build; the GPU backend should not launch it")
        return _Kernel(name, ctype, fn, self._sigs[name])


# ---- cuBLAS: column-major GEMM on raw pointers -----------------------------------------------------
def _view(ptr, ctype, rows, cols, ld):
    if ld < max(1, rows):
        raise RuntimeError(f"CUBLAS_STATUS_INVALID_VALUE: leading dimension {ld} < rows {rows}")
    n = ld * (cols - 1) + rows
    flat = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctype)), shape=(n,))
    item = ctypes.sizeof(ctype)
    return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(item, ld * item))


def _require_host_mode(mode):
    if mode != 0:
        raise RuntimeError("fake cuBLAS: alpha/beta are host pointers but the pointer mode is not HOST")


def _gemm(ctype, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    _require_host_mode(_cublas_state["pointer_mode"])
    for v in (transa, transb, m, n, k, lda, ldb, ldc):
        if not isinstance(v, int):
            raise TypeError(f"fake cuBLAS: integer arguments expected, got {type(v).__name__}")
    a = ctypes.cast(alpha, ctypes.POINTER(ctype)).contents.value
    b = ctypes.cast(beta, ctypes.POINTER(ctype)).contents.value
    _gemm_values(ctype, transa, transb, m, n, k, a, A, lda, B, ldb, b, C, ldc)


# pointer_mode starts NOT in host mode: the backend must set it. plain: Sgemm/Dgemm runs through either
# binding (CuPy's wrapper or the ctypes one), gemm_ex: GemmEx runs through either.
_cublas_state = {"pointer_mode": 1, "plain": 0}

# cudaDataType_t the fake's gemmEx accepts: CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14, as
# (ctypes element, NumPy dtype of the values); bfloat16 is read from uint16 memory as ml_dtypes.bfloat16.
_CUDA_TYPES = {0: (ctypes.c_float, "float32"), 2: (ctypes.c_uint16, "float16"), 14: (ctypes.c_uint16, "bfloat16")}
_CUDA_SIZES = {t: ctypes.sizeof(ct) for t, (ct, _) in _CUDA_TYPES.items()}
_COMPUTE = {68: "32F", 77: "32F_FAST_TF32"}  # cublasComputeType_t
# (A/B type, C type) pairs cuBLAS takes with each compute type (cublasGemmEx's table, as we know it)
_EX_PAIRS = {"32F": {(0, 0), (2, 2), (2, 0), (14, 14), (14, 0)}, "32F_FAST_TF32": {(0, 0)}}


def _ex_dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _ex_view(ptr, t, rows, cols, ld):
    """A column-major (rows, cols) view of cudaDataType_t ``t`` at ``ptr`` (16-bit: reinterpreted)."""
    ct, name = _CUDA_TYPES[t]
    v = _view(ptr, ct, rows, cols, ld)
    return v if name == "float32" else v.view(_ex_dtype(name))


def _check_ex(Atype, Btype, Ctype, compute, algo, ints):
    """cublasGemmEx's argument rules, strictly (shared by CuPy's wrapper and the ctypes binding)."""
    for what, t in (("Atype", Atype), ("Btype", Btype), ("Ctype", Ctype)):
        if type(t) is not int or t not in _CUDA_TYPES:
            raise TypeError(f"fake cublasGemmEx: {what} {t!r} is not a supported cudaDataType_t")
    if type(compute) is not int or compute not in _COMPUTE or algo != -1:
        raise TypeError(f"fake cublasGemmEx: computeType {compute!r} / algo {algo!r} not supported")
    if Atype != Btype or (Atype, Ctype) not in _EX_PAIRS[_COMPUTE[compute]]:
        raise TypeError(f"fake cublasGemmEx: Atype {Atype}, Btype {Btype}, Ctype {Ctype} with compute "
                        f"{_COMPUTE[compute]}: not a combination cuBLAS supports")
    for v in ints:
        if not isinstance(v, int):
            raise TypeError(f"fake cuBLAS: integer arguments expected, got {type(v).__name__}")


def _read_f32(ptr):
    return np.float32(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)).contents.value)


def _gemm_ex_values(transa, transb, m, n, k, a, A, Atype, lda, B, Btype, ldb, b, C, Ctype, ldc, compute):
    """C = a op(A) op(B) + b C: 16-bit operands widened exactly, float32 products and sums, the result
    formed in float32 and rounded once to C's type (to nearest even through NumPy / ml_dtypes);
    32F_FAST_TF32 rounds the float32 operands to TF32 first, as the CPU reference does."""
    opA = _ex_view(A, Atype, k, m, lda).T if transa == 1 else _ex_view(A, Atype, m, k, lda)
    opB = _ex_view(B, Btype, n, k, ldb).T if transb == 1 else _ex_view(B, Btype, k, n, ldb)
    opA, opB = opA.astype(np.float32), opB.astype(np.float32)      # exact for 16-bit values
    if _COMPUTE[compute] == "32F_FAST_TF32":
        from gpu_lstm.backend.numpy_backend import tf32_round
        opA, opB = tf32_round(opA), tf32_round(opB)
    Cm = _ex_view(C, Ctype, m, n, ldc)
    r = a * (opA @ opB)
    if b != 0:
        r = r + b * Cm.astype(np.float32)
    Cm[...] = r.astype(Cm.dtype)                                     # one rounding to C's type
    _cublas_state["gemm_ex"] = _cublas_state.get("gemm_ex", 0) + 1
    key = (_CUDA_TYPES[Atype][1], _CUDA_TYPES[Ctype][1])
    counts = _cublas_state.setdefault("gemm_ex_types", {})
    counts[key] = counts.get(key, 0) + 1


def _gemm_ex(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
             compute, algo):
    """cublasGemmEx through CuPy's wrapper, strictly: A and B of one type (float32, float16 or
    bfloat16), C of that type or float32, compute type 32F or 32F_FAST_TF32 (float32 only), algo
    CUBLAS_GEMM_DEFAULT, float32 host scalars, integer sizes and leading dimensions."""
    _check_ex(Atype, Btype, Ctype, compute, algo, (transa, transb, m, n, k, lda, ldb, ldc))
    _require_host_mode(_cublas_state["pointer_mode"])
    _gemm_ex_values(transa, transb, m, n, k, _read_f32(alpha), A, Atype, lda, B, Btype, ldb, _read_f32(beta),
                    C, Ctype, ldc, compute)


def _make_cublas():
    mod = types.ModuleType("cupy_backends.cuda.libs.cublas")
    mod.CUBLAS_POINTER_MODE_HOST = 0
    mod.sgemm = lambda *a: _gemm(ctypes.c_float, *a)
    mod.dgemm = lambda *a: _gemm(ctypes.c_double, *a)
    mod.gemmEx = _gemm_ex
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
    cupy.get_default_memory_pool = lambda: _pool
    _global = np.random.RandomState(0)
    cupy.random = types.SimpleNamespace(
        RandomState=RandomState,
        standard_normal=lambda size=None, dtype=float: _global.standard_normal(size).astype(dtype).view(ndarray))
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = _make_cublas()
    libs.nvrtc = types.ModuleType("cupy_backends.cuda.libs.nvrtc")
    libs.nvrtc.getVersion = lambda: (13, 0)
    _install_capture(cupy, cuda, libs.cublas)
    _install_persistent(cupy, cuda)
    sys.modules.update({"cupy": cupy, "cupy.cuda": cuda, "cupy_backends": types.ModuleType("cupy_backends"),
                        "cupy_backends.cuda": types.ModuleType("cupy_backends.cuda"),
                        "cupy_backends.cuda.libs": libs, "cupy_backends.cuda.libs.cublas": libs.cublas,
                        "cupy_backends.cuda.libs.nvrtc": libs.nvrtc})
    return cupy


# ---- stream capture and graphs ---------------------------------------------------------------------
# What CUDA and CuPy refuse while a stream captures (global capture mode), and what this fake raises
# CaptureError for: allocation (cupy.empty/zeros/..., any operation without ``out=``, copy/astype),
# host synchronisation (get, asnumpy, synchronize), synchronous host<->device copies (asarray of host
# data, ndarray.set), CuPy's cuBLAS wrapper (cublas.pyx setStream raises NotImplementedError), cuRAND
# (cupy.random), work on a stream that is not part of the capture, waiting on an event recorded outside
# the capture (cudaErrorStreamCaptureIsolation), ending a capture while a forked stream has not joined
# back (cudaErrorStreamCaptureUnjoined), an async copy from pageable host memory, and a GEMM of the
# capture binding whose handle has no user workspace (cuBLAS would allocate one). Recorded: kernel
# launches, GEMMs of the binding, ufuncs with ``out=``, copyto, take with ``out=``, fill, async copies
# from pinned memory.
#
# Several streams (fork/join with events): a stream joins a capture by waiting on an event recorded on
# a stream of that capture, and the capture may only end once every op recorded on any of its streams
# happens-before the end of the capturing stream (joined back by events). Outside capture, a fork (a
# stream waiting on an event recorded on another stream) opens a tracked region that closes when the
# forking stream has joined everything back. In both, every op is a node with its happens-before set
# (stream order, event waits, host synchronisation) and its memory footprint (4-byte words read and
# written; a GEMM also writes its handle's workspace), and the fake raises CaptureError for any two
# ops on different streams that touch the same word, at least one writing, with no order between
# them: a data race that the fake's sequential execution would hide and a GPU would not.
import functools  # noqa: E402


class CaptureError(RuntimeError):
    pass


class _CaptureState:
    def __init__(self):
        self.current = []          # stack of streams made current with ``with stream:``
        self.capturing = None      # the stream whose capture is open (the origin)
        self.record = None
        self.tracker = None        # the _Tracker of the open capture or of a fork outside capture
        self.graphs = 0
        self.launched = 0
        self.forks = 0             # fork/join regions checked (captured or not)
        self.checked_pairs = 0     # cross-stream conflicting accesses proven ordered


_cap = _CaptureState()


# ---- happens-before and footprints ---------------------------------------------------------------
def _words(a):
    """The 4-byte words an array view touches (int64 addresses)."""
    a = a.view(np.ndarray) if isinstance(a, np.ndarray) else np.asarray(a)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    out = np.array([a.ctypes.data], dtype=np.int64)
    for n, st in zip(a.shape, a.strides):
        out = (out[:, None] + np.arange(n, dtype=np.int64) * st).ravel()
    return _widen(out, a.itemsize)


def _widen(starts, itemsize):
    return (starts[:, None] + np.arange(0, max(itemsize, 4), 4, dtype=np.int64)).ravel()


def _raw_words(ptr, rows, cols, ld, itemsize):
    """Words of a column-major (rows, cols) matrix with leading dimension ld at a raw pointer."""
    starts = ptr + (np.arange(rows, dtype=np.int64)[:, None] + ld * np.arange(cols, dtype=np.int64)) * itemsize
    return _widen(starts.ravel(), itemsize)


class _Tracker:
    """Nodes of one fork/join region or capture: stream, happens-before bitset, footprint thunk."""

    def __init__(self, origin):
        self.origin = origin
        self.nodes = []            # (stream, ancestors bitset, footprint thunk, label)
        self.known = {origin: 0}   # stream -> bitset of the nodes its next op is ordered after
        self.host = 0              # nodes the host has waited for (synchronize, get)

    def node(self, stream, label, footprint):
        i = len(self.nodes)
        anc = self.known.get(stream, 0) | self.host
        self.nodes.append((stream, anc, footprint, label))
        self.known[stream] = anc | (1 << i)

    def joined(self):
        return self.known[self.origin] | self.host == (1 << len(self.nodes)) - 1

    def unjoined(self):
        missing = ~(self.known[self.origin] | self.host)
        return [label for i, (_, _, _, label) in enumerate(self.nodes) if (missing >> i) & 1]

    def check(self):
        """Raise CaptureError for two unordered ops on different streams touching a word, one writing."""
        _cap.forks += 1
        streams = {id(s) for s, _, _, _ in self.nodes}
        if len(streams) < 2:
            return
        sid = {k: j for j, k in enumerate(sorted(streams))}
        addr, node, write = [], [], []
        for i, (stream, _, footprint, _) in enumerate(self.nodes):
            reads, writes = footprint()
            for arrs, w in ((reads, False), (writes, True)):
                for a in arrs:
                    addr.append(a)
                    node.append(np.full(a.size, i, dtype=np.int64))
                    write.append(np.full(a.size, w))
        if not addr:
            return
        addr, node, write = np.concatenate(addr), np.concatenate(node), np.concatenate(write)
        st = np.array([sid[id(self.nodes[i][0])] for i in range(len(self.nodes))], dtype=np.int64)[node]
        order = np.lexsort((node, addr))
        addr, node, write, st = addr[order], node[order], write[order], st[order]
        starts = np.flatnonzero(np.r_[True, addr[1:] != addr[:-1]])
        any_w = np.maximum.reduceat(write.astype(np.int8), starts) > 0
        multi = np.maximum.reduceat(st, starts) != np.minimum.reduceat(st, starts)
        ends = np.r_[starts[1:], addr.size]
        seen = set()
        for g in np.flatnonzero(any_w & multi):
            acc = sorted({(int(n), bool(w)) for n, w in zip(node[starts[g]:ends[g]], write[starts[g]:ends[g]])})
            for x in range(len(acc)):
                for y in range(x + 1, len(acc)):
                    (a, wa), (b, wb) = acc[x], acc[y]
                    if not (wa or wb) or self.nodes[a][0] is self.nodes[b][0] or (a, b) in seen:
                        continue
                    seen.add((a, b))
                    if not ((self.nodes[b][1] >> a) & 1 or (self.nodes[a][1] >> b) & 1):
                        raise CaptureError(f"data race: {self.nodes[a][3]!r} and {self.nodes[b][3]!r} run on "
                                           f"different streams with no event ordering them and touch the same "
                                           f"memory (address {int(addr[starts[g]]):#x}), at least one writing")
                    _cap.checked_pairs += 1


def _issue(what, fn, footprint, stream=None):
    """Run ``fn`` now, or record it when its stream is capturing; track it in an open region. Raises
    when a capture is open and the stream is not part of it."""
    stream = _current_stream() if stream is None else stream
    tr = _cap.tracker
    if _cap.capturing is not None:
        if stream not in tr.known:
            raise CaptureError(f"{what}: issued to a stream that is not part of the capture (fork it from the "
                               "capturing stream with an event first)")
        tr.node(stream, what, footprint)
        _cap.record.append(fn)
        return True
    if tr is not None:
        tr.node(stream, what, footprint)
    fn()
    return False


def _host_waits(stream=None):
    """The host waited for ``stream`` (None: every stream): later ops are ordered after its nodes."""
    tr = _cap.tracker
    if tr is None or _cap.capturing is not None:
        return
    for s, known in tr.known.items():
        if stream is None or s is stream:
            tr.host |= known


def _fp(reads=(), writes=()):
    """A footprint thunk over arrays (only evaluated when a region with several streams is checked)."""
    reads = tuple(_plain(a) for a in reads if isinstance(a, np.ndarray))
    writes = tuple(_plain(a) for a in writes if isinstance(a, np.ndarray))
    return lambda: ([_words(a) for a in reads], [_words(a) for a in writes])


def _capturing(what):
    """None when nothing captures; else the record list when the current stream is part of the
    capture, else raise (kept for callers that only ask)."""
    if _cap.capturing is None:
        return None
    if _current_stream() not in _cap.tracker.known:
        raise CaptureError(f"{what}: issued to a stream that is not part of the capture")
    return _cap.record


def _refuse(what):
    if _cap.capturing is not None:
        raise CaptureError(f"{what} is not permitted while a stream is capturing")


_streams_by_ptr = {}


class Stream:
    _next_ptr = 0x1000

    def __init__(self, non_blocking=False, null=False):
        self.non_blocking = non_blocking
        if null:
            self.ptr = 0
        else:
            Stream._next_ptr += 0x10
            self.ptr = Stream._next_ptr
        _streams_by_ptr[self.ptr] = self

    def __enter__(self):
        _cap.current.append(self)
        return self

    def __exit__(self, *exc):
        _cap.current.pop()
        return False

    def begin_capture(self, mode=None):
        if self.ptr == 0:
            raise CaptureError("the legacy default stream cannot be captured")
        if _cap.capturing is not None:
            raise CaptureError("another stream is already capturing")
        if _cap.tracker is not None:
            raise CaptureError("begin_capture while forked work outside capture has not joined back")
        _cap.capturing, _cap.record, _cap.tracker = self, [], _Tracker(self)

    def end_capture(self):
        if _cap.capturing is not self:
            raise CaptureError("end_capture on a stream that is not capturing")
        tr, ops = _cap.tracker, _cap.record
        _cap.capturing, _cap.record, _cap.tracker = None, None, None
        if not tr.joined():
            raise CaptureError(f"capture ended with forked work not joined back into the capturing stream "
                               f"(cudaErrorStreamCaptureUnjoined): {tr.unjoined()[:3]}")
        tr.check()
        _cap.graphs += 1
        return Graph(ops)

    def is_capturing(self):
        return _cap.capturing is not None and self in _cap.tracker.known

    def wait_event(self, event):
        """cudaStreamWaitEvent: what this stream issues next runs after the event's recorded work."""
        tr = _cap.tracker
        if _cap.capturing is not None:
            if event.capture is not tr:
                if self in tr.known:
                    raise CaptureError("a capturing stream waits on an event recorded outside the capture "
                                       "(cudaErrorStreamCaptureIsolation)")
                return
            tr.known[self] = tr.known.get(self, 0) | event.known   # joins the capture if it was not in it
            return
        if event.capture is not None:
            raise CaptureError("waiting on an event recorded inside a capture that has ended")
        if event.stream is None or event.stream is self:
            return
        if tr is None:                       # a fork outside capture: track until it is joined back
            tr = _cap.tracker = _Tracker(event.stream)
        tr.known[self] = tr.known.get(self, 0) | event.known
        if self is tr.origin and tr.joined():
            _cap.tracker = None
            tr.check()

    def synchronize(self):
        _refuse("Stream.synchronize")
        _host_waits(self)


_NULL_STREAM = Stream(null=True)


def _current_stream():
    return _cap.current[-1] if _cap.current else _NULL_STREAM


class CaptureEvent:
    """cupy.cuda.Event: record on a stream (capture-aware), wait on it from another, query, time."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.stream, self.capture, self.known, self.t = None, None, 0, None

    def record(self, stream=None):
        stream = _current_stream() if stream is None else stream
        tr = _cap.tracker
        self.stream, self.t = stream, time.perf_counter()
        self.capture = tr if _cap.capturing is not None and stream in tr.known else None
        self.known = tr.known.get(stream, 0) if tr is not None and stream in tr.known else 0

    @property
    def done(self):
        if self.capture is not None and _cap.capturing is not None:
            raise CaptureError("querying an event recorded in an open capture")
        return True

    def synchronize(self):
        _refuse("Event.synchronize")
        if self.stream is not None:
            _host_waits(self.stream)


class Graph:
    def __init__(self, ops):
        self.ops = ops

    def launch(self, stream=None):
        _refuse("Graph.launch into the capturing stream (not used here)")
        _cap.launched += 1
        for op in self.ops:
            op()


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, ndarray) else a


def _check_device_operand(what, a):
    if isinstance(a, np.ndarray) and not isinstance(a, ndarray):
        raise CaptureError(f"{what}: a host array operand during capture (a synchronous copy)")


_strict_array_ufunc = ndarray.__array_ufunc__   # outside capture: CuPy's rules (no NumPy operands)


def _array_ufunc(self, ufunc, method, *inputs, **kwargs):
    what = f"{ufunc.__name__}.{method}"
    out = kwargs.get("out")
    if _cap.capturing is None:
        if _cap.tracker is None:
            return _strict_array_ufunc(self, ufunc, method, *inputs, **kwargs)
        res = []
        _issue(what, lambda: res.append(_strict_array_ufunc(self, ufunc, method, *inputs, **kwargs)),
               _fp(inputs, out or ()))
        return res[0]
    if method != "__call__" or not out or not all(isinstance(o, ndarray) for o in out):
        raise CaptureError(f"{what} without out= allocates: not permitted while a stream is capturing")
    for a in inputs:
        _check_device_operand(what, a)
    kw = dict(kwargs, out=tuple(_plain(o) for o in out))
    _issue(what, functools.partial(ufunc, *[_plain(a) for a in inputs], **kw), _fp(inputs, out))
    return out[0] if len(out) == 1 else out


def _cap_copyto(dst, src, **kw):
    _check_bits_mix("copyto", dst.dtype, src)
    if _cap.capturing is not None:
        _check_device_operand("copyto", src)
    _issue("copyto", functools.partial(np.copyto, _plain(dst), _plain(src), **kw), _fp((src,), (dst,)))


def _cap_take(a, indices, axis=None, out=None):
    if _cap.capturing is None and out is None:
        return _fake(np.take(a, indices, axis=axis))
    if out is None:
        raise CaptureError("take without out= allocates: not permitted while a stream is capturing")
    _issue("take", functools.partial(np.take, _plain(a), _plain(indices), axis=axis, out=_plain(out)),
           _fp((a, indices), (out,)))
    return out


_np_fill = np.ndarray.fill


def _cap_fill(self, value):
    _issue("fill", functools.partial(_np_fill, _plain(self), value), _fp((), (self,)))


def _set(self, host):
    """cupy.ndarray.set: a synchronous host-to-device copy of a same-shaped host array."""
    _refuse("ndarray.set (a synchronous copy)")
    host = np.asarray(host)
    if host.shape != self.shape or host.dtype != self.dtype:
        raise ValueError(f"set: shape/dtype {host.shape} {host.dtype} differ from {self.shape} {self.dtype}")
    _issue("ndarray.set", functools.partial(np.copyto, self.view(np.ndarray), host), _fp((), (self,)))


def _refusing(name, fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        _refuse(name)
        return fn(*args, **kwargs)
    return wrapped


def _tracked(name, fn, writes_self=False, syncs=False):
    """An ndarray method refused under capture, and inside a fork/join region a node on the current
    stream that reads (or writes) the array; ``syncs``: the host then waits for that stream."""
    @functools.wraps(fn)
    def wrapped(self, *args, **kwargs):
        _refuse(name)
        if _cap.tracker is None:
            return fn(self, *args, **kwargs)
        res = []
        _issue(name, lambda: res.append(fn(self, *args, **kwargs)),
               _fp((self,) + tuple(args), (self,) if writes_self else ()))
        if syncs:
            _host_waits(_current_stream())
        return res[0]
    return wrapped


def _bits_checked_setitem(self, key, value):
    _check_bits_mix("__setitem__", self.dtype, value)
    return np.ndarray.__setitem__(self, key, value)


def _bits_checked_astype(self, dtype, *args, **kwargs):
    _no_bf16_dtype(dtype)
    _check_bits_mix("astype", dtype, self)
    return np.ndarray.astype(self, dtype, *args, **kwargs)


ndarray.__setitem__ = _bits_checked_setitem
ndarray.astype = _bits_checked_astype
ndarray.__array_ufunc__ = _array_ufunc
ndarray.fill = _cap_fill
ndarray.set = _set
for _name, _w, _s in (("copy", False, False), ("astype", False, False), ("get", False, True),
                      ("__setitem__", True, False)):
    setattr(ndarray, _name, _tracked(f"ndarray.{_name}", getattr(ndarray, _name), _w, _s))

_kernel_call = _Kernel.__call__
_const_params = {}


def _kernel_consts(name):
    """Per parameter of a kernel of cuda/lstm_kernels.cu: True where it is a pointer to const (read
    only); other pointers count as written."""
    if not _const_params:
        from gpu_lstm.backend import kernels
        for kname, params in re.findall(r"__global__ void (\w+)\(([^)]*)\)", kernels.kernel_source()):
            _const_params[kname] = ["const" in p and "*" in p for p in params.split(",")]
    return _const_params.get(name)


def _kernel_call_or_record(self, grid, block, args):
    consts = _kernel_consts(self.name) or [False] * len(args)
    arrays = [(a, c) for a, c in zip(args, consts) if isinstance(a, ndarray)]
    fp = _fp([a for a, _ in arrays], [a for a, c in arrays if not c])
    if _cap.capturing is None:
        _issue(f"kernel {self.name}", lambda: _kernel_call(self, grid, block, args), fp)
        return
    fn, seen = self.fn, []
    self.fn = lambda *conv: seen.append(conv)    # run every argument check, keep the converted args
    try:
        _kernel_call(self, grid, block, args)
    finally:
        self.fn = fn
    _issue(f"kernel {self.name}", functools.partial(fn, *seen[0]), fp)


_Kernel.__call__ = _kernel_call_or_record


# ---- pinned host memory and asynchronous copies ----------------------------------------------------
_pinned = []   # (ptr, nbytes) of every pinned allocation


class PinnedMemory(bytearray):
    """cupy.cuda.alloc_pinned_memory: page-locked host memory (a buffer NumPy can view)."""

    @property
    def ptr(self):
        return ctypes.addressof((ctypes.c_char * len(self)).from_buffer(self))


def alloc_pinned_memory(nbytes):
    _refuse("cupy.cuda.alloc_pinned_memory")
    mem = PinnedMemory(int(nbytes))
    _pinned.append((mem.ptr, len(mem), mem))
    return mem


MEMCPY_HOST_TO_DEVICE = 1
memcpy_calls = []


def memcpy_async(dst, src, size, kind, stream):
    """cudaMemcpyAsync: host-to-device from pinned memory only (from pageable memory it could not be
    captured, and is not asynchronous), ordered on ``stream``; captured as a node when it captures."""
    for name, v in (("dst", dst), ("src", src), ("size", size), ("kind", kind), ("stream", stream)):
        if not isinstance(v, int):
            raise TypeError(f"memcpyAsync {name}: expected an int, got {type(v).__name__}")
    if kind != MEMCPY_HOST_TO_DEVICE:
        raise NotImplementedError("fake memcpyAsync: host-to-device only")
    if not any(p <= src and src + size <= p + n for p, n, _ in _pinned):
        raise CaptureError("memcpyAsync from pageable host memory: not asynchronous, and not capturable")
    target = _streams_by_ptr.get(stream)
    if target is None:
        raise RuntimeError(f"memcpyAsync: unknown stream {stream:#x}")
    memcpy_calls.append((dst, src, size, stream))
    _issue("memcpyAsync", functools.partial(ctypes.memmove, dst, src, size),
           lambda: ([], [_widen(dst + np.arange(0, size, 4, dtype=np.int64), 4)]), stream=target)


class FakeLibcublas:
    """libcublas as gpu_lstm.backend.cublas_capture binds it: the six entry points, each checking
    that the binding declared the C signature (restype and argtypes) before the first call; status
    codes returned, not raised. GEMMs on a capturing stream are recorded."""

    EXPECTED = None   # filled from cublas_capture.SIGNATURES on first use (the declared C prototypes)

    def __init__(self):
        self.handles = {}
        self.calls = {"gemm": 0, "recorded": 0, "setStream": 0, "setWorkspace": 0}
        for name in ("cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2",
                     "cublasSetPointerMode_v2", "cublasSgemm_v2", "cublasDgemm_v2", "cublasGemmEx"):
            impl = getattr(self, "_" + name)

            def fn(*args, _impl=impl, _name=name):
                return self._checked(_name, args, _impl)
            fn.restype, fn.argtypes = None, None
            setattr(self, name, fn)

    def _checked(self, name, args, impl):
        from gpu_lstm.backend import cublas_capture
        restype, argtypes = cublas_capture.SIGNATURES[name]
        fn = getattr(self, name)
        if fn.restype is not ctypes.c_int or fn.argtypes is None or len(fn.argtypes) != len(argtypes):
            raise TypeError(f"{name}: called before its C signature was declared")
        if len(args) != len(argtypes):
            raise TypeError(f"{name}: {len(args)} arguments for {len(argtypes)} parameters")
        for i, (a, t) in enumerate(zip(args, fn.argtypes)):
            if t is ctypes.c_int and not (isinstance(a, int) and -2**31 <= a < 2**31):
                raise TypeError(f"{name} argument {i}: expected a C int, got {a!r}")
            if t in (ctypes.c_void_p, ctypes.c_size_t) and not isinstance(a, int):
                raise TypeError(f"{name} argument {i}: expected an integer address/size, got {type(a).__name__}")
        return impl(*args)

    def _handle(self, h):
        if h not in self.handles:
            return None
        return self.handles[h]

    def _cublasCreate_v2(self, out):
        ptr = 0x5000 + 0x10 * len(self.handles)
        out._obj.value = ptr
        # A new handle: default stream, default (library-owned) workspace, host pointer mode.
        self.handles[ptr] = {"stream": 0, "workspace": None, "pointer_mode": 0}
        return 0

    def _cublasDestroy_v2(self, h):
        return 0 if self.handles.pop(h, None) is not None else 1

    def _cublasSetStream_v2(self, h, stream):
        st = self._handle(h)
        if st is None:
            return 1   # CUBLAS_STATUS_NOT_INITIALIZED
        st["stream"], st["workspace"] = stream, None   # cublasSetStream resets the workspace
        self.calls["setStream"] += 1
        return 0

    def _cublasSetWorkspace_v2(self, h, ptr, nbytes):
        st = self._handle(h)
        if st is None:
            return 1
        if ptr % 256 or nbytes < 4 * 1024 * 1024:
            return 7   # CUBLAS_STATUS_INVALID_VALUE
        st["workspace"] = (ptr, nbytes)
        self.calls["setWorkspace"] += 1
        return 0

    def _cublasSetPointerMode_v2(self, h, mode):
        st = self._handle(h)
        if st is None:
            return 1
        st["pointer_mode"] = mode
        return 0

    def _gemm(self, ctype, h, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        st = self._handle(h)
        if st is None:
            return 1
        _require_host_mode(st["pointer_mode"])
        # alpha/beta are read when the GEMM is issued (host pointer mode), also when it is captured.
        a = ctypes.cast(alpha, ctypes.POINTER(ctype)).contents.value
        b = ctypes.cast(beta, ctypes.POINTER(ctype)).contents.value
        item = ctypes.sizeof(ctype)
        fn = functools.partial(_gemm_values, ctype, transa, transb, m, n, k, a, A, lda, B, ldb, b, C, ldc)
        return self._submit(st, fn, transa, transb, m, n, k, (A, item, lda), (B, item, ldb), (C, item, ldc))

    def _cublasGemmEx(self, h, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype,
                      ldc, compute, algo):
        st = self._handle(h)
        if st is None:
            return 1
        _check_ex(Atype, Btype, Ctype, compute, algo, (transa, transb, m, n, k, lda, ldb, ldc))
        _require_host_mode(st["pointer_mode"])
        fn = functools.partial(_gemm_ex_values, transa, transb, m, n, k, _read_f32(alpha), A, Atype, lda, B,
                               Btype, ldb, _read_f32(beta), C, Ctype, ldc, compute)
        return self._submit(st, fn, transa, transb, m, n, k, (A, _CUDA_SIZES[Atype], lda),
                            (B, _CUDA_SIZES[Btype], ldb), (C, _CUDA_SIZES[Ctype], ldc))

    def _submit(self, st, fn, transa, transb, m, n, k, A, B, C):
        """Run or record one GEMM on the handle's stream; A, B, C are (pointer, element size, ld)."""
        stream = _streams_by_ptr.get(st["stream"])
        ws = st["workspace"]

        def footprint():   # A and B read; C written; the workspace written (shared = a race)
            ra, ca = (k, m) if transa == 1 else (m, k)
            rb, cb = (n, k) if transb == 1 else (k, n)
            writes = [_raw_words(C[0], m, n, C[2], C[1])]
            if ws is not None:
                writes.append(np.array([ws[0]], dtype=np.int64))
            return [_raw_words(A[0], ra, ca, A[2], A[1]), _raw_words(B[0], rb, cb, B[2], B[1])], writes
        if _cap.capturing is not None:
            if stream is None or stream not in _cap.tracker.known:
                raise CaptureError("GEMM on a handle whose stream is not part of the capture")
            if ws is None:
                raise CaptureError("GEMM during capture with cuBLAS's default workspace (it would allocate):"
                                   " cublasSetWorkspace after cublasSetStream")
            _issue("GEMM", fn, footprint, stream=stream)
            self.calls["recorded"] += 1
            return 0
        if st["stream"] != _current_stream().ptr:
            raise RuntimeError("fake cuBLAS: handle's stream differs from the current stream (GEMM would be "
                               "unordered with the kernels)")
        _issue("GEMM", fn, footprint, stream=stream)
        self.calls["gemm"] += 1
        return 0

    def _cublasSgemm_v2(self, *args):
        return self._gemm(ctypes.c_float, *args)

    def _cublasDgemm_v2(self, *args):
        return self._gemm(ctypes.c_double, *args)


def _gemm_values(ctype, transa, transb, m, n, k, a, A, lda, B, ldb, b, C, ldc):
    opA = _view(A, ctype, k, m, lda).T if transa == 1 else _view(A, ctype, m, k, lda)
    opB = _view(B, ctype, n, k, ldb).T if transb == 1 else _view(B, ctype, k, n, ldb)
    Cm = _view(C, ctype, m, n, ldc)
    Cm[...] = a * (opA @ opB) + (b * Cm if b != 0 else 0)
    _cublas_state["plain"] += 1


fake_libcublas = None


def _install_capture(cupy, cuda, cublas_mod):
    """Streams and graphs on the fake cupy, capture checks on CuPy's cuBLAS wrapper and cuRAND, and
    the fake libcublas for gpu_lstm.backend.cublas_capture."""
    global fake_libcublas
    cuda.Stream = Stream
    cuda.Event = CaptureEvent
    cuda.get_current_stream = _current_stream
    cuda.capture_state = _cap
    cuda.alloc_pinned_memory = alloc_pinned_memory
    cuda.runtime.memcpyAsync = memcpy_async
    cuda.runtime.memcpyHostToDevice = MEMCPY_HOST_TO_DEVICE
    cupy.copyto = _cap_copyto
    cupy.take = _cap_take
    getattr_np = cupy.__getattr__

    def module_getattr(name):
        obj = getattr_np(name)
        if callable(obj) and not isinstance(obj, type) and name not in ("multiply", "add", "subtract",
                                                                          "broadcast_to"):
            return _refusing(f"cupy.{name}", obj)
        return obj
    cupy.__getattr__ = module_getattr
    for name in ("asarray", "ascontiguousarray", "asnumpy"):
        setattr(cupy, name, _refusing(f"cupy.{name}", getattr(cupy, name)))

    def set_stream(handle, stream):
        if _cap.capturing is not None and stream == _cap.capturing.ptr:
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
    cublas_mod.setStream = set_stream
    for name in ("sgemm", "dgemm"):
        setattr(cublas_mod, name, _refusing(f"CuPy's cublas.{name}", getattr(cublas_mod, name)))
    RandomState.random_sample = _refusing("cuRAND (cupy.random)", RandomState.random_sample)
    def device_synchronize(self):
        _refuse("Device.synchronize")
        _host_waits()
    Device.synchronize = device_synchronize
    fake_libcublas = FakeLibcublas()
    from gpu_lstm.backend import cublas_capture
    cublas_capture._library_override = fake_libcublas



# ---- persistent kernels: cooperative launch (gpu_lstm/backend/persistent.py, GpuRunner) --------------
# What GpuRunner uses of CuPy, emulated. The names and signatures were checked against CuPy's sources
# (cupy/cuda/function.pyx Function.__call__, cupy/_core/raw.pyx RawKernel.kernel and
# max_dynamic_shared_size_bytes, cupy_backends/cuda/api/driver.pyx, cupy/cuda/device.pyx attributes,
# runtime.pyx getDeviceProperties); what the driver does at the edges (marked "uncertain") was not run
# on a GPU machine:
#   cupy.cuda.Device(i).attributes           dict keyed by cudaDeviceAttr names without the prefix
#                                            ('MultiProcessorCount', 'MaxSharedMemoryPerBlockOptin',
#                                            'CooperativeLaunch', ...)
#   cupy.cuda.runtime.getDeviceProperties(i) dict of cudaDeviceProp fields ('sharedMemPerBlockOptin', ...)
#   cupy.RawModule(code=..., options=..., name_expressions=...).get_function(expr) -> RawKernel, with
#     .max_dynamic_shared_size_bytes (settable: cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)) and
#     .kernel, a cupy.cuda.function.Function with .ptr and
#     __call__(grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False)
#   cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(func_ptr, block_size, dynamic_smem)
# The fake GPU has the shared memory limits of an H100 (sm_90) and the fake's SM count. Each launch:
#   * refused while a stream captures (no engine captures them; with check_contract on, the runner reads
#     the error flag back after each launch, which a capture could not hold);
#   * refused without enable_cooperative_groups when the kernel has a grid barrier (on a GPU it could
#     deadlock), when the grid exceeds occupancy x SMs (CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE), when
#     shared_mem exceeds the kernel's max_dynamic_shared_size_bytes, or when the block exceeds the
#     kernel's __launch_bounds__;
#   * arguments checked against the parameter list parsed from cuda/persistent_lstm.cu, as _Kernel does;
#   * the launch contract of cuda/persistent_lstm.cu checked (dynamic shared memory >= 4 U H sizeof(T),
#     block a multiple of 32 and of KS, KS a power of two <= 32, three sync words with the counter at 0),
#     and the kernel's own refusal (grid * U < H: sync[1] = 1) reproduced;
#   * then the host build of the same phases runs (persistent.HostRunner's library entry points, whose
#     parameters are the kernel's minus `sync`: checked when the module is made), and the sync words
#     end as the barrier leaves them (counter 0, generation + number of barriers).
PERSISTENT_DEVICE = {"MaxSharedMemoryPerBlockOptin": 232448, "MaxSharedMemoryPerMultiprocessor": 233472,
                     "MaxThreadsPerMultiProcessor": 2048, "MaxBlocksPerMultiprocessor": 32,
                     "MaxRegistersPerMultiprocessor": 65536, "MaxThreadsPerBlock": 1024, "CooperativeLaunch": 1}
RESERVED_SMEM_PER_BLOCK = 1024       # what the system reserves per block (sm_80 / sm_90)
DEFAULT_DYNAMIC_SMEM = 48 * 1024     # a kernel's limit before the opt-in attribute is raised
ASSUMED_REGS_PER_THREAD = 128        # the most __launch_bounds__(512) allows; ptxas decides on a GPU
cooperative = {"launches": 0, "refused": 0}
compiled_persistent = []             # (code, options, name_expressions) of every persistent RawModule


def _param_list(params):
    """[(kind, name)] of a C parameter list, kinds as _Kernel uses them ('T*', 'i64', 'u32*', ...)."""
    out = []
    for p in params.split(","):
        p = " ".join(p.replace("__restrict__", "").replace("const", "").split())
        typ, name = p.rsplit(" ", 1)
        if name.startswith("*"):
            typ, name = typ + "*", name[1:]
        typ = typ.strip()
        if typ.endswith("*"):
            base = typ[:-1].strip()
            out.append(("T*" if base == "T" else _KINDS[base] + "*", name))
        else:
            out.append(("T" if typ == "T" else _KINDS[typ], name))
    return out


def _persistent_kernels():
    """{name: (params, has_grid_barrier, launch bound)} from cuda/persistent_lstm.cu, with the host entry
    points' parameter lists checked to be the kernel's minus `sync`."""
    from gpu_lstm.backend import kernels, persistent
    src = persistent.kernel_source()
    host_src = (kernels.cuda_dir() / persistent.HOST_ENTRY).read_text().replace("\\\n", " ")
    bound = int(re.search(r"#define GL_PERS_MAX_THREADS (\d+)", src).group(1))
    heads = list(re.finditer(r"__global__ void __launch_bounds__\((\w+)\)\s*(\w+)\(([^)]*)\)", src))
    out = {}
    for k, m in enumerate(heads):
        if m.group(1) != "GL_PERS_MAX_THREADS":
            raise AssertionError(f"{m.group(2)}: unexpected launch bound {m.group(1)}")
        body = src[m.end():heads[k + 1].start() if k + 1 < len(heads) else len(src)]
        params = _param_list(m.group(3))
        short = m.group(2).replace("persistent_lstm_", "")
        hm = re.search(r'extern "C" void gl_persistent_' + short + r"_##SUFFIX\(([^)]*)\)", host_src)
        if hm is None:
            raise AssertionError(f"no host entry gl_persistent_{short}_* for {m.group(2)}")
        host = _param_list(hm.group(1))
        if params[-1] != ("u32*", "sync") or host != params[:-1]:
            raise AssertionError(f"{m.group(2)}: host entry parameters {host} are not the kernel's {params} "
                                 "minus sync")
        out[m.group(2)] = (params, "gl_pers_grid_barrier(" in body, bound)
    return out


class CooperativeLaunchError(RuntimeError):
    pass


_functions = {}   # Function.ptr -> the kernel (for the occupancy query)


class _Function:
    """cupy.cuda.function.Function of a persistent kernel."""

    def __init__(self, rk):
        self._rk = rk
        self.ptr = 0x7000 + 0x10 * len(_functions)
        _functions[self.ptr] = rk

    def __call__(self, grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False):
        self._rk._launch(grid, block, args, shared_mem, enable_cooperative_groups)


class _PersistentKernel:
    """cupy.RawKernel of a persistent kernel: .kernel, .max_dynamic_shared_size_bytes, and __call__."""

    def __init__(self, name, ctype, fn, params, barrier, bound):
        self.name, self.fn, self.barrier, self.bound = name, fn, barrier, bound
        self.params = params
        self.dtype = np.dtype({"float": np.float32, "double": np.float64}[ctype])
        self._check = _Kernel(name, ctype, None, [k for k, _ in params])
        self._smem_limit = DEFAULT_DYNAMIC_SMEM
        self.kernel = _Function(self)
        self.launches = 0

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._smem_limit

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        if not isinstance(value, int) or not 0 <= value <= PERSISTENT_DEVICE["MaxSharedMemoryPerBlockOptin"]:
            raise CooperativeLaunchError(f"{self.name}: max_dynamic_shared_size_bytes = {value!r} exceeds the "
                                         f"opt-in maximum {PERSISTENT_DEVICE['MaxSharedMemoryPerBlockOptin']} "
                                         "(cudaErrorInvalidValue)")
        self._smem_limit = value

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        # RawKernel.__call__ launches without cooperative groups here (the module was not compiled
        # with enable_cooperative_groups=True).
        self._launch(grid, block, args, shared_mem, False)

    def _refuse(self, why):
        cooperative["refused"] += 1
        raise CooperativeLaunchError(f"{self.name}: {why}")

    def _launch(self, grid, block, args, shared_mem, coop):
        _refuse(f"launch of {self.name} (no engine captures the persistent kernels)")
        threads = int(np.prod(block)) if isinstance(block, tuple) else 0
        if not (isinstance(grid, tuple) and len(grid) == 1 and isinstance(block, tuple) and len(block) == 1):
            self._refuse(f"grid {grid!r} and block {block!r} must be 1-D tuples")
        if threads > self.bound:
            self._refuse(f"block of {threads} threads exceeds __launch_bounds__({self.bound}) "
                         "(cudaErrorInvalidValue)")
        if not isinstance(shared_mem, int) or shared_mem > self._smem_limit:
            self._refuse(f"shared_mem {shared_mem!r} exceeds max_dynamic_shared_size_bytes {self._smem_limit} "
                         "(cudaErrorInvalidValue: raise the attribute first)")
        if self.barrier and not coop:
            self._refuse("a kernel with a grid barrier launched without enable_cooperative_groups=True: nothing "
                         "guarantees its blocks are co-resident (it could deadlock on a GPU)")
        if coop:
            per_sm = _occupancy(self.kernel.ptr, threads, shared_mem)
            sms = Device().attributes["MultiProcessorCount"]
            if grid[0] > per_sm * sms:
                self._refuse(f"cooperative grid of {grid[0]} blocks > {per_sm} per SM x {sms} SMs "
                             "(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE)")
        seen = []
        self._check.fn = lambda *conv: seen.append(conv)
        _kernel_call(self._check, grid, block, args)          # every argument checked, as _Kernel does
        conv, named = seen[0], {n: a for (_, n), a in zip(self.params, args)}
        sync = named["sync"]
        T, B, H, U, KS = (int(named[k]) for k in ("Tn", "B", "H", "U", "KS"))
        need = 4 * U * H * self.dtype.itemsize
        if shared_mem < need:
            self._refuse(f"dynamic shared memory {shared_mem} B < 4 U H sizeof(T) = {need} B (R's slice would "
                         "overflow it)")
        if not (KS in (1, 2, 4, 8, 16, 32) and threads % 32 == 0 and threads % KS == 0):
            self._refuse(f"block {threads} must be a multiple of 32 and of KS = {KS} (a power of two <= 32)")
        if sync.shape != (3,) or int(np.asarray(sync)[0]) != 0 or int(np.asarray(sync)[1]) != 0:
            self._refuse(f"sync must be three uint32 words with counter and error flag 0, got {np.asarray(sync)}")
        self.launches += 1
        cooperative["launches"] += 1
        if grid[0] * U < H:               # the kernel's own refusal: every block returns, flag set
            sync.view(np.ndarray)[1] = 1
            return
        self.fn(*conv[:-1])
        barriers = max(T - 1, 0) if self.name == "persistent_lstm_forward" else (T if T > 0 else 0)
        sync.view(np.ndarray)[2] = (int(np.asarray(sync)[2]) + barriers) % 2 ** 32


def _occupancy(func_ptr, block_size, dynamic_smem):
    """cuOccupancyMaxActiveBlocksPerMultiprocessor for the fake device: the least of the block, thread,
    register and shared-memory limits; 0 when dynamic_smem exceeds the kernel's limit (uncertain: what
    the driver returns there, 0 or an error)."""
    rk = _functions.get(func_ptr)
    if rk is None:
        raise RuntimeError(f"occupancy query for an unknown function {func_ptr:#x}")
    if not isinstance(block_size, int) or block_size < 1:
        raise TypeError(f"block_size must be a positive int, got {block_size!r}")
    if dynamic_smem > rk.max_dynamic_shared_size_bytes:
        return 0
    d = PERSISTENT_DEVICE
    warps = -(-block_size // 32) * 32
    limits = [d["MaxBlocksPerMultiprocessor"], d["MaxThreadsPerMultiProcessor"] // warps,
              d["MaxRegistersPerMultiprocessor"] // (ASSUMED_REGS_PER_THREAD * warps),
              d["MaxSharedMemoryPerMultiprocessor"] // (dynamic_smem + RESERVED_SMEM_PER_BLOCK)]
    return max(0, min(limits))


# 0-d results: CuPy's integer indexing returns a 0-d device array (with .get()), never a scalar.
_np_getitem = np.ndarray.__getitem__


def _getitem(self, key):
    res = _np_getitem(self, key)
    if isinstance(res, np.generic):
        k = key if isinstance(key, tuple) else (key,)
        if not any(x is Ellipsis for x in k):
            return _np_getitem(self, k + (Ellipsis,))    # a 0-d view, as CuPy's
        return np.asarray(res).view(ndarray)
    return res


ndarray.__getitem__ = _getitem

_raw_module_init = RawModule.__init__
_raw_module_get = RawModule.get_function


def _raw_module_init_any(self, code=None, options=(), name_expressions=()):
    from gpu_lstm.backend import persistent
    if code != persistent.kernel_source():
        self._persistent = None
        return _raw_module_init(self, code=code, options=options, name_expressions=name_expressions)
    compiled_persistent.append((code, tuple(options), tuple(name_expressions)))
    self._persistent = (persistent.load_host_library(), _persistent_kernels())
    self._names = set(name_expressions)


def _raw_module_get_any(self, expr):
    if self._persistent is None:
        return _raw_module_get(self, expr)
    if expr not in self._names:
        raise ValueError(f"{expr} was not among the name expressions {sorted(self._names)}")
    name, ctype = re.fullmatch(r"(\w+)<(\w+)>", expr).groups()
    lib, kinds = self._persistent
    params, barrier, bound = kinds[name]
    suffix = {"float": "f32", "double": "f64"}[ctype]
    host = getattr(lib, "gl_persistent_" + name.replace("persistent_lstm_", "") + "_" + suffix)
    return _PersistentKernel(name, ctype, host, params, barrier, bound)


RawModule.__init__ = _raw_module_init_any
RawModule.get_function = _raw_module_get_any


def _install_persistent(cupy, cuda):
    """Device attributes and properties of the fake GPU, and cupy.cuda.driver's occupancy query."""
    init = Device.__init__

    def device_init(self, device_id=None):
        init(self, device_id)
        self.attributes.update(PERSISTENT_DEVICE)
    if not getattr(Device.__init__, "_persistent", False):
        device_init._persistent = True
        Device.__init__ = device_init
    props = cuda.runtime.getDeviceProperties

    def device_properties(i):
        p = dict(props(i))
        p.update(sharedMemPerBlockOptin=PERSISTENT_DEVICE["MaxSharedMemoryPerBlockOptin"],
                 sharedMemPerMultiprocessor=PERSISTENT_DEVICE["MaxSharedMemoryPerMultiprocessor"],
                 maxThreadsPerMultiProcessor=PERSISTENT_DEVICE["MaxThreadsPerMultiProcessor"],
                 cooperativeLaunch=1)
        return p
    cuda.runtime.getDeviceProperties = device_properties
    driver = getattr(cuda, "driver", None) or types.SimpleNamespace()
    driver.occupancyMaxActiveBlocksPerMultiprocessor = _occupancy
    cuda.driver = driver
