"""The GPU backend: cuBLAS GEMMs and the fused kernels of cuda/lstm_kernels.cu, through CuPy.

Imported only when a GPU model is built. Everything stays on the device: GEMMs write in place with
beta = 1 where gradients accumulate, kernels update their outputs in place, and nothing is copied to
the host during forward or backward. Failures raise with the cuBLAS routine's or the kernel's name.
"""


import cupy as cp
import numpy as np
from cupy_backends.cuda.libs import cublas

import functools

from . import blas, cublas_capture, kernels, reduce

# cuBLAS enums (cudaDataType_t, cublasComputeType_t, cublasGemmAlgo_t) for cublasGemmEx, from
# library_types.h / cublas_api.h (CUDA 11+): CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14;
# CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77; CUBLAS_GEMM_DEFAULT = -1.
CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT = 68, 77, -1
_BLOCK = 256
_LOW = ("bfloat16", "float16")
# cudaDataType_t of a device array dtype; uint16 arrays are bfloat16 bit patterns (see storage).
_CUDA_TYPES = {"float32": CUDA_R_32F, "float16": CUDA_R_16F, "uint16": CUDA_R_16BF}
_XENT_BLOCK = 256   # = GL_XENT_BLOCK; a power of two


def device_description(device_id=None):
    dev = cp.cuda.Device(device_id) if device_id is not None else cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    driver = cp.cuda.runtime.driverGetVersion()
    runtime = cp.cuda.runtime.runtimeGetVersion()
    return (f"GPU {dev.id}: {name}, sm_{props['major']}{props['minor']}, {props['multiProcessorCount']} SMs, "
            f"driver API {driver // 1000}.{driver % 1000 // 10}, runtime {runtime // 1000}.{runtime % 1000 // 10}, "
            f"CuPy {cp.__version__}")


def _dlpack_on_cuda(value):
    try:
        dev_type, _ = value.__dlpack_device__()
    except Exception:
        return False
    return int(dev_type) in (2, 3, 13)   # kDLCUDA, kDLCUDAHost, kDLCUDAManaged


def _has_cuda_array_interface(value):
    """hasattr() that also treats a raising property (not only AttributeError) as absent."""
    try:
        return getattr(value, "__cuda_array_interface__", None) is not None
    except Exception:
        return False


def _bf16_as_int16(value):
    """A torch bfloat16 tensor as an int16 view of the same memory (``tensor.view(torch.int16)``:
    zero-copy), so that DLPack hands CuPy a type it holds on every version; other values unchanged.
    CuPy before v14 refuses kDLBfloat in from_dlpack ("CuPy does not support bfloat16 yet");
    v14 accepts it only with ml_dtypes installed (cupy/cupy#9670), and we do not rely on that."""
    dtype = getattr(value, "dtype", None)
    if str(dtype) == "torch.bfloat16" and hasattr(value, "view"):
        import torch
        return value.view(torch.int16)
    return value


def _run_all(ops):
    for op in ops:
        op()


def _segments(ops):
    """ops split into runs of one lane, with the fork/join markers on their own: [(lane, list or
    Sync)], computed once per list of prepared operations and kept on it."""
    segs = getattr(ops, "segments", None)
    if segs is None:
        from ..plan import Sync
        segs, kinds = [], []
        for op in ops:
            if isinstance(op, Sync):
                segs.append((0, op))
                kinds.append(op.kind)
            elif segs and not isinstance(segs[-1][1], Sync) and segs[-1][0] == op.lane:
                segs[-1][1].append(op)
            else:
                segs.append((op.lane, [op]))
        # Forks and joins alternate, from a fork to a join: work left on the second lane at the end
        # would be unordered with whatever the caller issues next (and CUDA refuses to end a capture
        # with a forked stream).
        if kinds != ["fork", "join"] * (len(kinds) // 2):
            raise RuntimeError(f"prepared operations: forks and joins must alternate fork, join, ...; got {kinds}")
        try:
            ops.segments = segs
        except AttributeError:
            pass
    return segs


class _PinnedScalars:
    """Host-to-device copies of int64 scalars, asynchronous and ordered on a stream.

    cudaMemcpyAsync from pinned memory reads the host slot when the copy runs on the GPU, not when it
    is issued: a slot must not be written again before its copy has run. The slots are used in turn
    and each has an event recorded after its copy; a slot is rewritten only once its event is done,
    so the host waits only when the GPU is SLOTS copies behind (never in steady state)."""

    SLOTS = 64

    def __init__(self):
        self.mem = cp.cuda.alloc_pinned_memory(8 * self.SLOTS)
        self.host = np.frombuffer(self.mem, dtype=np.int64, count=self.SLOTS)
        self.events = [None] * self.SLOTS
        self.next = 0

    def copy(self, dst, value, stream):
        i = self.next
        self.next = (i + 1) % self.SLOTS
        event = self.events[i]
        if event is None:
            event = self.events[i] = cp.cuda.Event(disable_timing=True)
        elif not event.done:
            event.synchronize()
        self.host[i] = value
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, self.host.ctypes.data + 8 * i, 8,
                                    cp.cuda.runtime.memcpyHostToDevice, stream.ptr)
        event.record(stream)


class CupyBackend:
    name = "gpu"
    xp = cp

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.low = self.dtype.name in _LOW
        # The cell state / gradient dtype: float32 for 16-bit storage (docs/precision.md).
        self.wide = np.dtype(np.float32) if self.low else self.dtype
        # The device array dtype of the storage type. bfloat16 lives in CuPy uint16 arrays holding the
        # bfloat16 bit patterns: CuPy up to v13 has no bfloat16 dtype, and its ml_dtypes.bfloat16
        # support in v14 (cupy/cupy#9494) is marked experimental; we do not rely on it. The kernels'
        # gl_bf16 is a 16-bit struct, so a uint16 buffer is exactly their memory. float16 is native.
        self.storage = np.dtype(np.uint16) if self.dtype.name == "bfloat16" else self.dtype
        self.device_id = cp.cuda.Device().id
        # Kernels per buffer type: _k holds the storage type's instantiations (gates, h, x), _kw the
        # wide type's (float32 c and its carry, column-sum partials, optimizers on master weights).
        self._k = kernels.load_module(self.device_id, self.dtype.name)
        self._kw = kernels.load_module(self.device_id, self.wide.name) if self.low else self._k
        self._gemm_fn = cublas.sgemm if self.dtype == np.float32 else cublas.dgemm
        self._gemm_name = ("cublasGemmEx" if self.low else
                           "cublasSgemm" if self.dtype == np.float32 else "cublasDgemm")
        # Host scalars for alpha/beta, made once: nothing is allocated per GEMM call. With compute type
        # CUBLAS_COMPUTE_32F (16-bit models, TF32) the scale type is CUDA_R_32F: float32 scalars.
        # alpha/beta host values and their addresses (an int, not a fresh .ctypes object per GEMM: the
        # eager loop calls gemm twice per step); the arrays are kept alive with the backend.
        self._scalar_arrays = {v: np.array(v, dtype=self.wide) for v in (0.0, 1.0)}
        self._scalars = {v: a.ctypes.data for v, a in self._scalar_arrays.items()}
        sms = cp.cuda.Device(self.device_id).attributes["MultiProcessorCount"]
        self._max_grid = sms * 16   # enough blocks to fill the GPU; grid-stride covers the rest

    math = "default"

    def set_math(self, math):
        """'tf32' (float32 models): GEMMs through cublasGemmEx with CUBLAS_COMPUTE_32F_FAST_TF32, CuPy's
        wrapper in the eager loop and the capture binding (cublas_capture.Handle.gemm_ex_call) in plans
        and graphs."""
        if math == "tf32" and self.dtype != np.float32:
            raise ValueError(f"math='tf32' needs float32, got {self.dtype.name}")
        self.math = math

    def describe(self):
        return device_description(self.device_id)

    def activate(self):
        return cp.cuda.Device(self.device_id)

    def device_dtype(self, dtype=None):
        """The device array dtype for a logical dtype (None: this model's): bfloat16 -> uint16."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        return np.dtype(np.uint16) if dtype.name == "bfloat16" else dtype

    def dtype_of(self, a):
        """The logical dtype of a device array: uint16 arrays of a bfloat16 model are bfloat16."""
        return self.dtype if (self.storage != self.dtype and a.dtype == self.storage) else a.dtype

    def empty(self, shape, dtype=None):
        with self.activate():
            return cp.empty(shape, dtype=self.device_dtype(dtype))

    def zeros(self, shape, dtype=None):
        with self.activate():
            return cp.zeros(shape, dtype=self.device_dtype(dtype))

    # ---- 16-bit conversions on the device ---------------------------------------------------------
    def widen(self, a):
        """A float32 copy of a storage-type array (exact). bfloat16 bits b widen to the float32 bits
        b << 16 (bfloat16 is the upper half of a float32), so no kernel is needed."""
        if a.dtype == self.wide:
            return a
        with self.activate():
            if a.dtype == np.uint16 and self.storage == np.uint16:
                return (a.astype(cp.uint32) << 16).view(cp.float32)
            return a.astype(self.wide)

    def narrow(self, a, out=None):
        """``a`` (float32) rounded once, to nearest even, to the storage type: the narrow_copy kernel
        (the same rounding as every kernel's stores). Into ``out`` when given (C-contiguous)."""
        with self.activate():
            src = cp.ascontiguousarray(a, dtype=cp.float32)
            dst = cp.empty(src.shape, dtype=self.storage) if out is None else out
            self.narrow_copy(src, dst)
            return dst

    def astype(self, a, dtype):
        """``a`` (a device array) in the logical ``dtype``, a copy only where the type changes; the
        16-bit conversions round once (to nearest even) from float32. float64 -> 16-bit goes through
        float32 (two roundings; the parameters' float64 host values are rounded on the host instead)."""
        dtype = np.dtype(dtype)
        src = self.dtype_of(a)
        if src == dtype:
            return a
        if not self.low:
            return a.astype(dtype)
        if src == self.dtype:                                  # storage -> wide or other
            w = self.widen(a)
            return w if dtype == self.wide else w.astype(dtype)
        if dtype == self.dtype:                                # anything -> storage
            return self.narrow(a)
        return a.astype(dtype)

    def add_into(self, dst, src):
        """dst += src, in float32 for 16-bit storage and rounded once (what the CPU reference's
        ml_dtypes/float16 addition does); bfloat16 bit patterns cannot be added as integers."""
        if dst.dtype == np.uint16 and self.storage == np.uint16:
            if dst.ndim and dst.shape == src.shape and dst.flags.c_contiguous and src.flags.c_contiguous:
                self.add_rows(dst, src)        # the same float32 sum rounded once, one launch
                return
            w = self.widen(dst) + self.widen(src)
            if dst.flags.c_contiguous:
                self.narrow(w, dst)
            else:
                dst[...] = self.narrow(w)
        else:
            dst += src

    def widen_into(self, src, dst, broadcast=False):
        """dst (float32, C-contiguous) = src (storage type) widened exactly, one launch; with
        ``broadcast`` src is one row (cols,) written into every row of dst. The plans' conversion
        where the eager loop calls astype (which allocates)."""
        cols = dst.shape[-1]
        want = (cols,) if broadcast else dst.shape
        if not (src.flags.c_contiguous and dst.flags.c_contiguous) or src.shape[-len(want):] != want:
            raise ValueError(f"widen_into: expected C-contiguous src of shape {want} and dst, got {src.shape} "
                             f"{src.strides} -> {dst.shape} {dst.strides}")
        self._launch("widen_copy", dst.size, (np.int64(dst.size), np.int64(cols), np.int64(0 if broadcast else cols),
                                              src, dst))

    def add_rows(self, dst, src, reverse=False):
        """dst += src for C-contiguous storage-type arrays of one shape, in float32 and rounded once
        (what add_into does), without temporaries; ``reverse``: src's rows (axis 0) in reverse order."""
        if not (src.flags.c_contiguous and dst.flags.c_contiguous) or src.shape != dst.shape:
            raise ValueError(f"add_rows: expected C-contiguous arrays of one shape, got {src.shape} {src.strides} "
                             f"and {dst.shape} {dst.strides}")
        cols = dst.size // dst.shape[0]
        self._launch("add_rows", dst.size, (np.int64(dst.size), np.int64(cols), np.int64(1 if reverse else 0),
                                            dst, src))

    def narrow_copy(self, src, dst):
        """dst = src (float32, C-contiguous) rounded to the storage type: the 16-bit parameter copies
        of optim.MixedPrecision, one launch."""
        self._launch("narrow_copy", dst.size, (np.int64(dst.size), src, dst))

    def asarray(self, name, value, copy=True):
        """Device arrays are used as they are, without a copy: cupy arrays, and any object that speaks
        DLPack on a CUDA device (PyTorch, JAX) or ``__cuda_array_interface__`` (Numba). Host arrays
        (NumPy, CPU tensors) are copied to this model's GPU, or, with ``copy=False`` (the caller needs
        its own memory used, e.g. arrays it expects gradients in), refused. An array on another GPU is
        an error.

        DLPack is tried first: CuPy's ``__cuda_array_interface__`` path synchronises the producer's
        stream on every call (torch's, here), and torch raises from that property for tensors that
        require grad. Such tensors are detached first (a view: gpu_lstm keeps its own gradients;
        ``gpu_lstm.interop`` connects them to torch's autograd)."""
        with self.activate():
            if not isinstance(value, cp.ndarray):
                if getattr(value, "requires_grad", False) and hasattr(value, "detach"):
                    value = value.detach()
                if hasattr(value, "__dlpack__") and _dlpack_on_cuda(value):
                    bits = _bf16_as_int16(value)
                    was_bf16 = bits is not value
                    value = cp.from_dlpack(bits)                 # zero-copy view
                    if was_bf16:
                        value = value.view(cp.uint16)            # bfloat16 bits (zero-copy)
                elif _has_cuda_array_interface(value):
                    value = cp.asarray(value)                    # zero-copy view
                elif not copy:
                    raise TypeError(f"{name}: expected an array on GPU {self.device_id}, used in place; got "
                                    f"host data ({type(value).__name__}), which would be copied")
                else:
                    host = np.asarray(value)
                    if host.dtype.name == "bfloat16":            # uploaded as its bit patterns
                        host = host.view(np.uint16)
                    return cp.asarray(host)                      # host data: one copy to the device
            if value.dtype.name == "bfloat16":   # a CuPy that holds ml_dtypes.bfloat16 (v14, experimental)
                value = value.view(cp.uint16)
            if value.device.id != self.device_id:
                raise ValueError(f"{name}: array is on GPU {value.device.id}, the model is on GPU "
                                 f"{self.device_id}; move it there first (e.g. cupy.asarray under "
                                 f"cupy.cuda.Device({self.device_id}))")
            return value

    def is_device_array(self, value):
        """Whether ``value`` is GPU memory that :meth:`asarray` takes as it is (a CuPy array, a CUDA
        DLPack tensor, a ``__cuda_array_interface__`` object); host data otherwise."""
        return (isinstance(value, cp.ndarray) or _has_cuda_array_interface(value)
                or (hasattr(value, "__dlpack__") and _dlpack_on_cuda(value)))

    def to_numpy(self, a):
        """A host copy; a bfloat16 model's uint16 device arrays come back as ml_dtypes.bfloat16."""
        host = cp.asnumpy(a)
        if self.storage != self.dtype and host.dtype == self.storage:
            host = host.view(self.dtype)
        return host

    # ---- plans and graphs (gpu_lstm/plan.py) -----------------------------------------------------
    def graph_support(self):
        """(True, why) when plans and CUDA graphs can run: the capture-capable cuBLAS binding loads."""
        try:
            self._capture_handle()
        except Exception as exc:
            return False, f"capture-capable cuBLAS binding unavailable ({type(exc).__name__}: {exc})"
        return True, "cuBLAS through gpu_lstm.backend.cublas_capture"

    def _capture_handle(self, lane=0):
        def alloc(nbytes):
            with self.activate():
                return cp.empty((nbytes,), dtype=cp.uint8)
        # a 16-bit model's GEMMs all go through GemmEx (float scalars): its handle is the float32 one
        return cublas_capture.handle_for(self.device_id, self.wide, alloc, lane)

    # A plan's ops come in two lanes (gpu_lstm/plan.py): lane 1 (the reverse direction of a
    # bidirectional layer, or a layer's weight gradients) runs on a second stream between a fork and a
    # join. Each lane has its own cuBLAS handle (own stream, own workspace: two GEMMs running at once
    # must not share a workspace). The handles are per (device, dtype, lane), shared by the models of
    # a process: two models replaying at the same time on different streams would share a workspace.
    lanes = 2

    def prepare_gemm(self, a, b, out, trans_a=False, trans_b=False, beta=0.0, lane=0):
        """This GEMM as a zero-argument callable through the capture-capable binding: shapes,
        leading dimensions and pointers computed once, issued by ``lane``'s handle. None when there is
        nothing to do."""
        args = self._gemm_args(a, b, out, trans_a, trans_b)
        if args is None:
            return None
        if args == "fill":
            return functools.partial(out.fill, 0) if beta == 0.0 else None
        ta, tb, m, n, k, ld1, ld2, ldc = args
        handle = self._capture_handle(lane)
        ex = self._gemm_ex_types(a, b, out)
        if ex is None:
            return handle.gemm_call(ta, tb, m, n, k, b.data.ptr, ld1, a.data.ptr, ld2, beta, out.data.ptr, ldc)
        t_ab, t_c, compute = ex
        return handle.gemm_ex_call(ta, tb, m, n, k, b.data.ptr, t_ab, ld1, a.data.ptr, t_ab, ld2, beta,
                                   out.data.ptr, t_c, ldc, compute, CUBLAS_GEMM_DEFAULT)

    def prepare(self, name, *args):
        """The kernel launch(es) of ``name(*args)`` with grid, block and argument tuple built once."""
        launches = []
        self._launch = lambda kname, n, kargs, wide=False: launches.append((kname, n, kargs, wide))   # record
        try:
            getattr(self, name)(*args)
        finally:
            del self._launch
        ops = []
        for kname, n, kargs, wide in launches:
            if n:
                grid = min((n + _BLOCK - 1) // _BLOCK, self._max_grid)
                ops.append(functools.partial((self._kw if wide else self._k)[kname], (grid,), (_BLOCK,), kargs))
        if not ops:
            raise RuntimeError(f"prepare({name}): no kernel launch went through _launch")
        # Several launches (the two-level column sums) replay in order; any buffer they need was
        # allocated above, once, and lives in their argument tuples.
        return ops[0] if len(ops) == 1 else functools.partial(_run_all, tuple(ops))

    def _streams(self, attr):
        stream = getattr(self, attr, None)
        if stream is None:
            with self.activate():
                stream = cp.cuda.Stream(non_blocking=True)
            setattr(self, attr, stream)
        return stream

    def _replay_lanes(self, ops, main, side):
        """Replay ops issued to ``main`` (lane 0) and ``side`` (lane 1): at a fork the side stream
        waits for an event recorded on main (everything issued before it), at a join main waits for
        one recorded on side. Used as is inside a capture: CUDA records the fork and join as graph
        edges, and the side stream joins the capture through the fork's event."""
        from ..plan import Sync, replay
        fork_ev, join_ev = self._events
        for lane, group in _segments(ops):
            if isinstance(group, Sync):
                if group.kind == "fork":
                    fork_ev.record(main)
                    side.wait_event(fork_ev)
                else:
                    join_ev.record(side)
                    main.wait_event(join_ev)
            elif lane:
                with side:
                    replay(group)
            else:
                replay(group)

    def _lane_streams(self, main, side):
        """Point each lane's cuBLAS handle at its stream (outside any capture: cublasSetStream and
        cublasSetWorkspace are handle calls, not stream work) and make the fork/join events."""
        if getattr(self, "_events", None) is None:
            self._events = (cp.cuda.Event(disable_timing=True), cp.cuda.Event(disable_timing=True))
        self._capture_handle(0).set_stream(main.ptr)
        self._capture_handle(1).set_stream(side.ptr)

    def run_prepared(self, ops):
        """Replay prepared operations on the current stream (lane 1 on a private second stream)."""
        with self.activate():
            main, side = cp.cuda.get_current_stream(), self._streams("_side_stream")
            self._lane_streams(main, side)
            self._replay_lanes(ops, main, side)

    def capture(self, ops):
        """Capture prepared operations into a CUDA graph, on a private non-blocking stream (the
        legacy default stream cannot be captured), lane 1 on a second private stream forked from it.
        Nothing is allocated or synchronised inside."""
        with self.activate():
            stream, side = self._streams("_capture_stream"), self._streams("_capture_side_stream")
            self._lane_streams(stream, side)
            with stream:
                stream.begin_capture()
                try:
                    self._replay_lanes(ops, stream, side)
                finally:
                    graph = stream.end_capture()
            return graph

    def launch_graph(self, graph):
        """One graph launch, ordered on the current stream (a graph may launch into any stream)."""
        graph.launch(stream=cp.cuda.get_current_stream())

    def counter(self):
        """A plan's mask call counter: one int64 in device memory, read by the mask kernels (call_at)."""
        with self.activate():
            return cp.zeros((1,), dtype=cp.int64)

    def set_counter(self, counter, value):
        """counter[0] = value, ordered on the current stream before what is issued next (the graph
        launch), without a host sync: an asynchronous copy from a pinned host slot."""
        if getattr(self, "_uploads", None) is None:
            with self.activate():
                self._uploads = _PinnedScalars()
        self._uploads.copy(counter, value, cp.cuda.get_current_stream())

    # ---- the seam -----------------------------------------------------------------------------
    def _gemm_args(self, a, b, out, trans_a, trans_b):
        """Column-major (transa, transb, m, n, k, ld1, ld2, ldc), None for an empty output, 'fill'
        for an empty sum (K = 0)."""
        M, N, K = blas.gemm_shapes(a.shape, b.shape, trans_a, trans_b)
        if out.shape != (M, N):
            raise ValueError(f"gemm: out has shape {out.shape}, expected {(M, N)}")
        if M == 0 or N == 0:
            return None
        if K == 0:  # empty sum: cuBLAS would be asked for lda = 0
            return "fill"
        # each operand's own element size: a 16-bit model's dW GEMMs write float32 from 16-bit operands
        lda = blas.leading_dim("a", a.shape, a.strides, a.itemsize)
        ldb = blas.leading_dim("b", b.shape, b.strides, b.itemsize)
        ldc = blas.leading_dim("out", out.shape, out.strides, out.itemsize)
        ta, tb, m, n, k, _, ld1, _, ld2, ldc = blas.colmajor_args(M, N, K, lda, ldb, ldc, trans_a, trans_b)
        return ta, tb, m, n, k, ld1, ld2, ldc

    def gemm(self, a, b, out, trans_a=False, trans_b=False, beta=0.0):
        args = self._gemm_args(a, b, out, trans_a, trans_b)
        if args is None:
            return
        if args == "fill":
            if beta == 0.0:
                out.fill(0)
            return
        ta, tb, m, n, k, ld1, ld2, ldc = args
        try:
            handle = cp.cuda.device.get_cublas_handle()
            # alpha/beta are host scalars, and the GEMM must be ordered with our kernels on the
            # current stream: set both rather than rely on the handle's state.
            cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
            cublas.setStream(handle, cp.cuda.get_current_stream().ptr)
            ex = self._gemm_ex_types(a, b, out)
            if ex is None:
                self._gemm_fn(handle, ta, tb, m, n, k,
                              self._scalars[1.0], b.data.ptr, ld1, a.data.ptr, ld2,
                              self._scalars[float(beta)], out.data.ptr, ldc)
                return
            t_ab, t_c, compute = ex
            # Column-major: C^T = op(B)^T op(A)^T, so cuBLAS's A is our b (as for Sgemm).
            cublas.gemmEx(handle, ta, tb, m, n, k, self._scalars[1.0],
                          b.data.ptr, t_ab, ld1, a.data.ptr, t_ab, ld2,
                          self._scalars[float(beta)], out.data.ptr, t_c, ldc, compute, CUBLAS_GEMM_DEFAULT)
        except Exception as exc:
            raise RuntimeError(f"{self._gemm_name}(m={m}, n={n}, k={k}) failed: {exc}") from exc

    def _wide(self, a):
        """True when ``a`` is a wide (float32) buffer of a 16-bit model: its kernels are the float
        instantiations (the host backend's _fn picks by buffer dtype the same way)."""
        return self.low and a.dtype == self.wide

    def _gemm_ex_types(self, a, b, out):
        """(A/B type, C type, compute type) of this model's cublasGemmEx, or None where it calls
        S/Dgemm: the one choice the eager GEMM and the plans' captured GEMM share, so they agree bitwise.

        cublasGemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
        Ctype, ldc, computeType, algo), always with CUBLAS_GEMM_DEFAULT (= -1):

        * a 16-bit model: A and B in the storage type (CUDA_R_16BF = 14 or CUDA_R_16F = 2), C in the
          output buffer's type (the storage type, or CUDA_R_32F = 0 for the float32 parameter
          gradients), CUBLAS_COMPUTE_32F (= 68: float32 products and sums, one rounding to C's type).
          cuBLAS accepts exactly these (A/B, C) pairs with compute 32F: (16BF, 16BF), (16BF, 32F),
          (16F, 16F), (16F, 32F).
        * math='tf32': all three CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32 (= 77).

        For both compute types the scale type is CUDA_R_32F, so alpha and beta point to float32 host
        values. These enum values and scale types are from cuBLAS's library_types.h / cublas_api.h
        (CUDA 11+) as we know them; not yet run on a GPU."""
        if self.low:
            if a.dtype != self.storage or b.dtype != self.storage or out.dtype not in (self.storage, self.wide):
                raise TypeError(f"cublasGemmEx: a {self.dtype.name} model's GEMM needs A and B in the storage "
                                f"type ({self.storage.name}) and C in it or in float32, got {a.dtype.name}, "
                                f"{b.dtype.name} -> {out.dtype.name}")
            return _CUDA_TYPES[a.dtype.name], _CUDA_TYPES[out.dtype.name], CUBLAS_COMPUTE_32F
        if self.math == "tf32":
            return CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32
        return None

    def _launch(self, name, n, args, wide=False):
        """One launch of ``name`` instantiated for the storage type, or with ``wide`` for the wide
        type (float32 buffers of a 16-bit model; the same table otherwise)."""
        if n == 0:
            return
        grid = min((n + _BLOCK - 1) // _BLOCK, self._max_grid)
        try:
            (self._kw if wide else self._k)[name]((grid,), (_BLOCK,), args)
        except Exception as exc:
            raise RuntimeError(f"CUDA kernel {name}<{kernels.ctype(self.wide.name if wide else self.dtype.name)}> "
                               f"(grid {grid}, block {_BLOCK}) failed: {exc}") from exc

    def cell_forward(self, gates, bias, peep, c_prev, c, h):
        B, H = c.shape
        null = np.uintp(0)
        self._launch("lstm_cell_forward", B * H,
                     (np.int64(B), np.int64(H), gates, null if bias is None else bias,
                      null if peep is None else peep, c_prev, c, h))

    def cell_backward(self, gates, peep, c, c_prev, dh, dc_carry, dgates, dc_out=None, lengths=None, t=0):
        B, H = c.shape
        null = np.uintp(0)
        self._launch("lstm_cell_backward", B * H,
                     (np.int64(B), np.int64(H), gates, null if peep is None else peep, c, c_prev, dh,
                      dc_carry, dgates, null if dc_out is None else dc_out,
                      null if lengths is None else lengths, np.int64(t)))

    @staticmethod
    def _mask_args(mask):
        """(key, call, call_at, offset, thr) of a gpu_lstm.philox.MaskSlice as kernel arguments:
        call_at is the slice's device counter (plans, graphs) or null (the call goes by value); thr =
        -1 when there is no mask (evaluation: the kernels use the constant z)."""
        if mask is None:
            return np.int64(0), np.int64(0), np.uintp(0), np.int64(0), np.int64(-1)
        at = np.uintp(0) if mask.counter is None else mask.counter
        return np.int64(mask.key), np.int64(mask.call), at, np.int64(mask.offset), np.int64(mask.thr)

    def zoneout_mix(self, mask, z, prev, cur, out):
        wide = self._wide(out)   # h (storage) or c (float32 in a 16-bit model)
        self._launch("zoneout_mix", out.size, (np.int64(out.size), *self._mask_args(mask),
                                               self.wide.type(z), prev, cur, out), wide)

    def zoneout_split(self, mask, z, grad, into, accumulate):
        self._launch("zoneout_split", grad.size, (np.int64(grad.size), *self._mask_args(mask),
                                                  self.wide.type(z), grad, into, np.int32(1 if accumulate else 0)),
                     self._wide(grad))

    def dropout(self, mask, x, out):
        key, call, at, _, thr = self._mask_args(mask.slice)
        self._launch("dropout_apply", x.size, (np.int64(x.size), key, call, at, thr,
                                               self.wide.type(mask.scale), x, out))

    def adam_step(self, p, g, m, v, c):
        """One fused Adam/AdamW launch for one parameter (cuda/optim_kernels.cuh); ``c`` from
        gpu_lstm.optim.adam_constants. Scalars go by value: no host sync, capturable."""
        T = self.wide.type   # optimizers run on wide arrays (a 16-bit model's float32 master weights)
        self._launch("adam_step", p.size,
                     (np.int64(p.size), p, g, m, v,
                      *(T(c[k]) for k in ("lr_c1", "b1", "omb1", "b2", "omb2", "c2", "eps", "wd")),
                      np.int32(c["l2"]), T(c["decay"]), np.int32(c["decoupled"])), True)

    def sgd_step(self, p, g, vel, c):
        T = self.wide.type
        self._launch("sgd_step", p.size, (np.int64(p.size), p, g, np.uintp(0) if vel is None else vel,
                                          T(c["lr"]), T(c["mu"]), T(c["wd"]), np.int32(c["l2"])), True)

    def grad_norm(self, grads, max_norm=None, eps=1e-6):
        """The global L2 norm of ``grads`` (a list of C-contiguous arrays of this dtype) reduced on the
        device in a fixed order (cuda/clip_kernels.cuh: one partial launch per gradient, one launch for
        every gradient's slot, one for the norm and the clip coefficient), as a 0-d float64 device
        array. With ``max_norm`` each gradient is then scaled in place by one launch that reads the
        coefficient min(1, max_norm / (norm + eps)) from device memory: no host synchronisation.
        2P + 2 launches for P gradients (``max_norm`` None: P + 2)."""
        sizes = tuple(int(g.size) for g in grads)
        cache = self.__dict__.setdefault("_norm_offsets", {})
        if sizes not in cache:   # shape-derived, uploaded once per set of sizes
            with self.activate():
                cache[sizes] = cp.asarray(np.array(reduce.norm_offsets(sizes), dtype=np.int64))
        offs = cache[sizes]
        starts = reduce.norm_offsets(sizes)
        with self.activate():
            # Per call from CuPy's pool, like the column sums' partials: concurrent calls cannot race.
            partial = cp.empty(max(1, starts[-1]), dtype=cp.float64)
            slots = cp.empty(max(1, len(sizes)), dtype=cp.float64)
            out = cp.empty(2, dtype=cp.float64)
        for g, n, a, b in zip(grads, sizes, starts, starts[1:]):
            self._launch("grad_sumsq_partial", b - a, (np.int64(n), np.int64(b - a), g, partial[a:b]), True)
        self._launch("grad_norm_finish", len(sizes) * _BLOCK, (np.int64(len(sizes)), offs, partial, slots), True)
        self._launch("grad_clip_coef", 1, (np.int64(len(sizes)), slots,
                                           np.float64("nan" if max_norm is None else max_norm),
                                           np.float64(eps), out), True)
        if max_norm is not None:
            for g, n in zip(grads, sizes):
                self._launch("grad_scale", n, (np.int64(n), g, out[1:]), True)
        return out[0:1].reshape(())   # a 0-d device array (CuPy's out[0] is one too; NumPy's is a scalar)

    def seq_carry(self, lengths, t, src, dst, move):
        B, N = dst.shape
        self._launch("seq_carry", B * N, (np.int64(B), np.int64(N), lengths, np.int64(t), src, dst,
                                          np.int32(1 if move else 0)), self._wide(dst))

    def sum_rows(self, x, out):
        """out += column sums of x: the deterministic two-level reduction of cuda/reduce_kernels.cuh."""
        x = cp.ascontiguousarray(x)
        self._sum_rows2(x, x.shape[1], 0, None, out)

    def sum_rows_prod(self, x, x_col0, y, out):
        """out += column sums of x[:, x_col0:x_col0 + cols] * y, without forming the product."""
        self._sum_rows2(x, x.shape[1], x_col0, y, out)

    def _sum_rows2(self, x, ldx, x_off, y, out):
        rows, cols = x.shape[0], out.shape[0]
        if rows == 0 or cols == 0:
            return
        chunk = reduce.row_chunk(rows, cols)
        nchunks = reduce.num_chunks(rows, chunk)
        # Per call from CuPy's pool (no shared scratch: concurrent directions cannot race on it).
        # The partials are of the arithmetic type (float32 for 16-bit x): the second pass is sum_rows
        # instantiated for that type (sum_rows<float> over float32 partials into float32 out).
        partial = cp.empty((nchunks, cols), dtype=self.wide)
        self._launch("sum_rows_partial", nchunks * cols,
                     (np.int64(rows), np.int64(cols), np.int64(chunk), x, np.int64(ldx), np.int64(x_off),
                      np.uintp(0) if y is None else y, partial))
        self._launch("sum_rows", cols, (np.int64(nchunks), np.int64(cols), partial, out), self.low)

    def softmax_xent(self, logits, targets, ignore_index, inv_count, loss_rows, grad):
        rows, V = logits.shape
        if rows == 0:
            return
        # One block of _XENT_BLOCK threads per row (cuda/lstm_kernels.cu, GL_XENT_BLOCK); blocks
        # stride over rows. The block size fixes the summation order: never change it per call.
        grid = min(rows, self._max_grid)
        args = (np.int64(rows), np.int64(V), cp.ascontiguousarray(logits),
                cp.ascontiguousarray(targets, dtype=cp.int64), np.int64(ignore_index),
                inv_count.reshape(1), loss_rows, grad)
        try:
            self._k["softmax_xent"]((grid,), (_XENT_BLOCK,), args)
        except Exception as exc:
            raise RuntimeError(f"CUDA kernel softmax_xent<{kernels.ctype(self.dtype.name)}> "
                               f"(grid {grid}, block {_XENT_BLOCK}) failed: {exc}") from exc
