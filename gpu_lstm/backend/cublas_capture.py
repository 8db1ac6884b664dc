"""A cuBLAS binding that may be used while a CUDA stream is being captured into a graph.

CuPy's own wrapper (``cupy_backends.cuda.libs.cublas``) cannot: its ``setStream`` raises
NotImplementedError while the stream is capturing and ``sgemm``/``dgemm`` call it on every call. The
plans and graphs (:mod:`gpu_lstm.plan`) therefore call libcublas through ctypes.

Why ctypes and not nvmath-python (``nvmath.bindings.cublas``): we need six entry points; ctypes needs
no new dependency and binds the very libcublas that CuPy has already loaded into the process (found
in ``/proc/self/maps``, else by soname), so there is never a second cuBLAS of another version in the
process. The ctypes call costs about a microsecond per GEMM; in graph mode the GEMMs are replayed by
the graph and cost nothing on the host.

The C signatures (cublas_api.h, CUDA 12 and 13; ``cublasHandle_t`` and ``cudaStream_t`` are pointers,
enums are ``int``)::

    cublasStatus_t cublasCreate_v2(cublasHandle_t *handle);
    cublasStatus_t cublasDestroy_v2(cublasHandle_t handle);
    cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId);
    cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes);
    cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode);
    cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                  int m, int n, int k, const float *alpha, const float *A, int lda,
                                  const float *B, int ldb, const float *beta, float *C, int ldc);
    (cublasDgemm_v2: the same with double)
    cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                int m, int n, int k, const void *alpha, const void *A, cudaDataType_t Atype,
                                int lda, const void *B, cudaDataType_t Btype, int ldb, const void *beta,
                                void *C, cudaDataType_t Ctype, int ldc, cublasComputeType_t computeType,
                                cublasGemmAlgo_t algo);
    (16-bit models and TF32 math; alpha/beta point to float, the scale type of compute types 32F
    and 32F_FAST_TF32)

cuBLAS rules this module follows (cuBLAS documentation, "CUDA Graphs support" and cublasSetStream):
one handle per device and stream (plans issue to two streams: two handles, two workspaces);
``cublasSetStream`` resets the workspace to the default pool, so the user
workspace is set again after every stream change; with a user workspace set nothing is allocated
while capturing.
"""

import ctypes
import ctypes.util
import functools
import os
import sys

import numpy as np

CUBLAS_STATUS_SUCCESS = 0
CUBLAS_POINTER_MODE_HOST = 0
# cuBLAS's recommended user workspace for graph capture: 32 MiB on Hopper and newer, 4 MiB before;
# 32 MiB everywhere keeps one rule.
WORKSPACE_BYTES = 32 * 1024 * 1024

_vp, _int, _size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
SIGNATURES = {   # name: (restype, argtypes)
    "cublasCreate_v2": (_int, [ctypes.POINTER(_vp)]),
    "cublasDestroy_v2": (_int, [_vp]),
    "cublasSetStream_v2": (_int, [_vp, _vp]),
    "cublasSetWorkspace_v2": (_int, [_vp, _vp, _size]),
    "cublasSetPointerMode_v2": (_int, [_vp, _int]),
    "cublasSgemm_v2": (_int, [_vp, _int, _int, _int, _int, _int, _vp, _vp, _int, _vp, _int, _vp, _vp, _int]),
    "cublasDgemm_v2": (_int, [_vp, _int, _int, _int, _int, _int, _vp, _vp, _int, _vp, _int, _vp, _vp, _int]),
    "cublasGemmEx": (_int, [_vp, _int, _int, _int, _int, _int, _vp, _vp, _int, _int, _vp, _int, _int, _vp, _vp,
                            _int, _int, _int, _int]),
}

_library_override = None   # tests: an object with the functions above (tests/fake_cupy.py sets it)
_lib = None
_handles = {}              # (device id, dtype name) -> Handle


class CublasError(RuntimeError):
    pass


def _loaded_cublas_path():
    """The libcublas file already mapped into this process (CuPy's), or None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                name = os.path.basename(path)
                if name.startswith("libcublas.so") and "Lt" not in name:
                    return path
    except OSError:
        pass
    return None


def library_candidates():
    """Where libcublas is looked for, in order (for error messages and the benchmark's report)."""
    out = []
    loaded = _loaded_cublas_path()
    if loaded:
        out.append(loaded)
    try:   # how CuPy 14 finds its CUDA libraries (cuda-pathfinder): the same file
        from cuda import pathfinder
        path = pathfinder.load_nvidia_dynamic_lib("cublas").abs_path
        if path:
            out.append(path)
    except Exception:
        pass
    if sys.platform == "win32":
        out += ["cublas64_13.dll", "cublas64_12.dll"]
    else:
        out += ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11"]
    try:   # the nvidia-cublas wheels: nvidia/cu13/lib (CUDA 13), nvidia/cublas/lib (CUDA 12)
        import nvidia
        for root in nvidia.__path__:
            for sub in ("cu13/lib", "cublas/lib"):
                d = os.path.join(root, sub)
                if os.path.isdir(d):
                    out += sorted(os.path.join(d, f) for f in os.listdir(d)
                                  if f.startswith("libcublas.so.") and "Lt" not in f)
    except Exception:
        pass
    found = ctypes.util.find_library("cublas")
    if found:
        out.append(found)
    return out


def load_library():
    """The libcublas CuPy uses, with the signatures above declared."""
    global _lib
    if _library_override is not None:
        lib = _library_override
    elif _lib is not None:
        return _lib
    else:
        try:   # make CuPy load its libcublas first (it may load it lazily), so we bind the same file
            import cupy
            cupy.cuda.device.get_cublas_handle()
        except Exception:
            pass
        lib, errors = None, []
        for cand in library_candidates():
            try:
                lib = ctypes.CDLL(cand)
                break
            except OSError as exc:
                errors.append(f"{cand}: {exc}")
        if lib is None:
            raise CublasError("libcublas not found for the graph-capable cuBLAS binding; tried "
                              + "; ".join(errors))
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    if _library_override is None:
        _lib = lib
    return lib


def _check(status, what):
    if status != CUBLAS_STATUS_SUCCESS:
        raise CublasError(f"{what} failed: cublasStatus_t {status}")


class Handle:
    """One cuBLAS handle of this binding for one device and dtype: host pointer mode, a user
    workspace (allocated once, by CuPy, outside any capture) and the stream it issues to."""

    def __init__(self, device_id, dtype, workspace_alloc):
        self.lib = load_library()
        self.dtype = np.dtype(dtype)
        self.device_id = device_id
        h = _vp()
        _check(self.lib.cublasCreate_v2(ctypes.byref(h)), "cublasCreate_v2")
        self.ptr = h.value
        _check(self.lib.cublasSetPointerMode_v2(self.ptr, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode_v2")
        # Kept alive as long as the handle; 256-byte aligned as cublasSetWorkspace requires.
        self.workspace = workspace_alloc(WORKSPACE_BYTES + 256)
        self.workspace_ptr = (self.workspace.data.ptr + 255) // 256 * 256
        self.stream = None
        self.gemm_fn = self.lib.cublasSgemm_v2 if self.dtype == np.float32 else self.lib.cublasDgemm_v2
        self.gemm_name = "cublasSgemm_v2" if self.dtype == np.float32 else "cublasDgemm_v2"
        # alpha = 1 and beta in {0, 1} as host scalars that live as long as the handle.
        self._scalar_arrays = {(v, t): np.array(v, dtype=t) for v in (0.0, 1.0) for t in (self.dtype, np.float32)}
        self._scalars = {v: self._scalar_arrays[v, self.dtype].ctypes.data for v in (0.0, 1.0)}
        self._scalars32 = {v: self._scalar_arrays[v, np.float32].ctypes.data for v in (0.0, 1.0)}   # GemmEx
        self.set_stream(0)

    def set_stream(self, stream_ptr):
        """Issue to this stream from now on; sets the workspace again (cublasSetStream resets it)."""
        if stream_ptr == self.stream:
            return
        _check(self.lib.cublasSetStream_v2(self.ptr, stream_ptr), "cublasSetStream_v2")
        _check(self.lib.cublasSetWorkspace_v2(self.ptr, self.workspace_ptr, WORKSPACE_BYTES),
               "cublasSetWorkspace_v2")
        self.stream = stream_ptr

    def gemm_call(self, transa, transb, m, n, k, A, lda, B, ldb, beta, C, ldc):
        """A zero-argument callable that issues this GEMM (column-major arguments, raw pointers),
        everything converted once; it raises with the routine's name on a non-zero status."""
        args = (self.ptr, transa, transb, m, n, k, self._scalars[1.0], A, lda, B, ldb,
                self._scalars[float(beta)], C, ldc)
        return functools.partial(_call_checked, self.gemm_fn, self.gemm_name, args)

    def gemm_ex_call(self, transa, transb, m, n, k, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
                     compute, algo):
        """As gemm_call, through cublasGemmEx (operand types are cudaDataType_t values, compute a
        cublasComputeType_t of scale type CUDA_R_32F: alpha and beta are float)."""
        args = (self.ptr, transa, transb, m, n, k, self._scalars32[1.0], A, Atype, lda, B, Btype, ldb,
                self._scalars32[float(beta)], C, Ctype, ldc, compute, algo)
        return functools.partial(_call_checked, self.lib.cublasGemmEx, "cublasGemmEx", args)


def _call_checked(fn, name, args):
    status = fn(*args)
    if status:
        raise CublasError(f"{name}(m={args[3]}, n={args[4]}, k={args[5]}) failed: cublasStatus_t {status}")


def handle_for(device_id, dtype, workspace_alloc, lane=0):
    """The handle of one lane (a stream a plan issues to: gpu_lstm/backend/cupy_backend.py): a handle
    per stream, each with its own workspace, as cuBLAS requires of GEMMs that may run concurrently."""
    key = (device_id, np.dtype(dtype).name, id(_library_override), lane)
    if key not in _handles:
        _handles[key] = Handle(device_id, dtype, workspace_alloc)
    return _handles[key]
