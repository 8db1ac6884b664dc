"""The CUDA kernels compiled for the CPU by the host C++ compiler, inside the real time loop.

``HostKernelBackend`` is the NumPy backend with its three elementwise operations replaced by the
kernels of ``cuda/lstm_kernels.cu`` built through ``cuda/host_shim.h``: CPU tests therefore run the very
kernel source the GPU runs, on the buffer layout and loop order the GPU path uses. For tests and
``gpu-lstm check --device host``; not a fast path.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from . import kernels, reduce
from .lowp import LowPrecisionNumpyBackend
from .numpy_backend import NumpyBackend

_lib = None


def compiler():
    """The host C++ compiler: $CXX, else c++ or g++ or clang++ on PATH, else None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build_command(output, entry="host_entry.cpp", what="to build the CUDA kernels for the CPU"):
    """g++ (or $CXX) building cuda/``entry`` through host_shim.h into the shared library ``output``."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError(f"no host C++ compiler found (set CXX or install g++): needed {what}")
    root = kernels.cuda_dir()
    # -ffp-contract=off: no fused multiply-adds the NumPy reference does not do either.
    return [cxx, "-O2", "-std=c++14", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
            "-include", str(root / "host_shim.h"), f"-I{root}", *kernels.gate_defines(),
            str(root / entry), "-o", str(output)]


def build_cached(prefix, sources, command, what):
    """Build a host library from cuda/ once per version of its ``sources`` and build ``command``
    (cached as ``<prefix>_<hash>.so`` under $XDG_CACHE_HOME or the temp dir) and load it."""
    root = kernels.cuda_dir()
    digest = hashlib.sha256()
    for name in sources:
        digest.update((root / name).read_bytes())
    digest.update(" ".join(command("x")).encode())
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", tempfile.gettempdir()), "gpu_lstm-host-kernels")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"{prefix}_{digest.hexdigest()[:16]}.so")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        res = subprocess.run(command(tmp), capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"host build of {what} failed:\n{' '.join(command(tmp))}\n{res.stderr}")
        os.replace(tmp, path)   # atomic: a concurrent test process never loads a half-written file
    return ctypes.CDLL(path)


def load_library():
    """Build (once per source version) and load the host kernel library."""
    global _lib
    if _lib is not None:
        return _lib
    lib = build_cached("lstm_host", (*kernels.SOURCE_FILES, "host_shim.h", "host_entry.cpp"), build_command,
                       "the CUDA kernels")
    ll, vp = ctypes.c_longlong, ctypes.c_void_p
    # (suffix, C type of the arithmetic scalars): the 16-bit storage types compute in float
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double), ("bf16", ctypes.c_float),
                         ("f16", ctypes.c_float)):
        getattr(lib, f"gl_zoneout_mix_{suffix}").argtypes = [ll, ll, ll, vp, ll, ll, real, vp, vp, vp]
        getattr(lib, f"gl_zoneout_split_{suffix}").argtypes = [ll, ll, ll, vp, ll, ll, real, vp, vp, ctypes.c_int]
        getattr(lib, f"gl_dropout_apply_{suffix}").argtypes = [ll, ll, ll, vp, ll, real, vp, vp]
        ci = ctypes.c_int
        if suffix in ("bf16", "f16"):
            getattr(lib, f"gl_narrow_copy_{suffix}").argtypes = [ll, vp, vp]
            getattr(lib, f"gl_widen_copy_{suffix}").argtypes = [ll, ll, ll, vp, vp]
            getattr(lib, f"gl_add_rows_{suffix}").argtypes = [ll, ll, ll, vp, vp]
        else:
            getattr(lib, f"gl_adam_step_{suffix}").argtypes = [ll, vp, vp, vp, vp] + [real] * 8 + [ci, real, ci]
            getattr(lib, f"gl_sgd_step_{suffix}").argtypes = [ll, vp, vp, vp, real, real, real, ci]
            getattr(lib, f"gl_grad_sumsq_partial_{suffix}").argtypes = [ll, ll, vp, vp]
            getattr(lib, f"gl_grad_norm_finish_{suffix}").argtypes = [ll, vp, vp, vp]
            getattr(lib, f"gl_grad_clip_coef_{suffix}").argtypes = [ll, vp, ctypes.c_double, ctypes.c_double, vp]
            getattr(lib, f"gl_grad_scale_{suffix}").argtypes = [ll, vp, vp]
        getattr(lib, f"gl_cell_forward_{suffix}").argtypes = [ll, ll, vp, vp, vp, vp, vp, vp]
        getattr(lib, f"gl_cell_backward_{suffix}").argtypes = [ll, ll, vp, vp, vp, vp, vp, vp, vp, vp, vp, ll]
        getattr(lib, f"gl_seq_carry_{suffix}").argtypes = [ll, ll, vp, ll, vp, vp, ctypes.c_int]
        getattr(lib, f"gl_sum_rows_{suffix}").argtypes = [ll, ll, vp, vp]
        getattr(lib, f"gl_sum_rows_partial_{suffix}").argtypes = [ll, ll, ll, vp, ll, ll, vp, vp]
        getattr(lib, f"gl_softmax_xent_{suffix}").argtypes = [ll, ll, vp, vp, ll, vp, vp, vp]
    lib.gl_host_philox4x32_10.argtypes = [vp, vp, vp]
    for name in ("gl_host_to_bf16", "gl_host_to_half", "gl_host_from_bf16", "gl_host_from_half"):
        getattr(lib, name).argtypes = [ll, vp, vp]
    _lib = lib
    return lib


def _ptr(name, a, dtype):
    """Pointer to a C-contiguous array of the backend's dtype (None for None)."""
    if a is None:
        return None
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"{name}: host kernels need a C-contiguous {dtype.name} array, "
                         f"got {a.dtype.name} with strides {a.strides}")
    return a.ctypes.data


def _counter_ptr(mask):
    """Pointer to the slice's call-counter array (plans), or None (the call goes by value)."""
    return None if mask.counter is None else _ptr("call_at", mask.counter, np.dtype(np.int64))


def _mask_args(mask):
    """(key, call, call_at, offset, thr) of a gpu_lstm.philox.MaskSlice; thr = -1 (no mask: the
    constant z)."""
    if mask is None:
        return (0, 0, None, 0, -1)
    return (mask.key, mask.call, _counter_ptr(mask), mask.offset, mask.thr)


_SUFFIX = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}


class HostKernelBackend(NumpyBackend):
    name = "host"

    def __init__(self, dtype):
        super().__init__(dtype)
        lib = self._lib = load_library()
        suffix = _SUFFIX[self.dtype.name]
        wsuffix = _SUFFIX[self.wide.name]   # the optimizers and second-level sums run on wide arrays
        self._fwd = getattr(lib, f"gl_cell_forward_{suffix}")
        self._bwd = getattr(lib, f"gl_cell_backward_{suffix}")
        self._carry = getattr(lib, f"gl_seq_carry_{suffix}")
        self._dropout = getattr(lib, f"gl_dropout_apply_{suffix}")
        self._adam = getattr(lib, f"gl_adam_step_{wsuffix}")
        self._sgd = getattr(lib, f"gl_sgd_step_{wsuffix}")
        self._sum = getattr(lib, f"gl_sum_rows_{suffix}")
        self._sum_wide = getattr(lib, f"gl_sum_rows_{wsuffix}")
        self._sum_partial = getattr(lib, f"gl_sum_rows_partial_{suffix}")
        self._xent = getattr(lib, f"gl_softmax_xent_{suffix}")
        # gradient clipping works on the gradients, which are wide (float32) in a 16-bit model
        self._sumsq = getattr(lib, f"gl_grad_sumsq_partial_{wsuffix}")
        self._norm_finish = getattr(lib, f"gl_grad_norm_finish_{wsuffix}")
        self._clip_coef = getattr(lib, f"gl_grad_clip_coef_{wsuffix}")
        self._grad_scale = getattr(lib, f"gl_grad_scale_{wsuffix}")

    def describe(self):
        return f"CPU, CUDA kernels built by {compiler()} (host test backend)"

    def _fn(self, name, dtype):
        """The host entry ``name`` instantiated for ``dtype`` (the buffers' own type: a low-precision
        model's c is float32, so its carries and zoneout run the float kernels)."""
        return getattr(self._lib, f"{name}_{_SUFFIX[dtype.name]}")

    def cell_forward(self, gates, bias, peep, c_prev, c, h):
        B, H = c.shape
        d, w = self.dtype, self.wide
        self._fwd(B, H, _ptr("gates", gates, d), _ptr("bias", bias, d), _ptr("peep", peep, d),
                  _ptr("c_prev", c_prev, w), _ptr("c", c, w), _ptr("h", h, d))

    def cell_backward(self, gates, peep, c, c_prev, dh, dc_carry, dgates, dc_out=None, lengths=None, t=0):
        B, H = c.shape
        d, w = self.dtype, self.wide
        self._bwd(B, H, _ptr("gates", gates, d), _ptr("peep", peep, d), _ptr("c", c, w),
                  _ptr("c_prev", c_prev, w), _ptr("dh", dh, d), _ptr("dc_carry", dc_carry, w),
                  _ptr("dgates", dgates, d), _ptr("dc_out", dc_out, w),
                  _ptr("lengths", lengths, np.dtype(np.int64)), t)

    def zoneout_mix(self, mask, z, prev, cur, out):
        d = out.dtype if out.dtype in (self.dtype, self.wide) else self.dtype
        self._fn("gl_zoneout_mix", d)(out.size, *_mask_args(mask), float(z), _ptr("prev", prev, d), _ptr("cur", cur, d),
                   _ptr("out", out, d))

    def zoneout_split(self, mask, z, grad, into, accumulate):
        d = grad.dtype if grad.dtype in (self.dtype, self.wide) else self.dtype
        self._fn("gl_zoneout_split", d)(grad.size, *_mask_args(mask), float(z), _ptr("grad", grad, d), _ptr("into", into, d),
                     int(accumulate))

    def dropout(self, mask, x, out):
        d, s = self.dtype, mask.slice
        self._dropout(x.size, s.key, s.call, _counter_ptr(s), s.thr, float(mask.scale), _ptr("x", x, d),
                      _ptr("out", out, d))

    def adam_step(self, p, g, m, v, c):
        """The fused Adam/AdamW kernel; ``c`` from gpu_lstm.optim.adam_constants (Python floats).
        Runs on wide arrays (a low-precision model's optimizer updates float32 master weights)."""
        d = self.wide
        self._adam(p.size, _ptr("p", p, d), _ptr("g", g, d), _ptr("m", m, d), _ptr("v", v, d),
                   *(float(d.type(c[k])) for k in ("lr_c1", "b1", "omb1", "b2", "omb2", "c2", "eps", "wd")),
                   int(c["l2"]), float(d.type(c["decay"])), int(c["decoupled"]))

    def sgd_step(self, p, g, vel, c):
        d = self.wide
        self._sgd(p.size, _ptr("p", p, d), _ptr("g", g, d), _ptr("vel", vel, d),
                  *(float(d.type(c[k])) for k in ("lr", "mu", "wd")), int(c["l2"]))

    def seq_carry(self, lengths, t, src, dst, move):
        B, N = dst.shape
        d = dst.dtype if dst.dtype in (self.dtype, self.wide) else self.dtype
        self._fn("gl_seq_carry", d)(B, N, _ptr("lengths", lengths, np.dtype(np.int64)), t, _ptr("src", src, d),
                                    _ptr("dst", dst, d), int(move))

    def sum_rows(self, x, out):
        """The GPU's two-level fixed-order column sum (cuda/reduce_kernels.cuh), same chunking."""
        x = np.ascontiguousarray(x)
        self._sum_rows2(x, x.shape[1], 0, None, out)

    def sum_rows_prod(self, x, x_col0, y, out):
        self._sum_rows2(x, x.shape[1], x_col0, y, out)

    def _sum_rows2(self, x, ldx, x_off, y, out):
        d, w = self.dtype, self.wide
        rows, cols = x.shape[0], out.shape[0]
        if rows == 0 or cols == 0:
            return
        chunk = reduce.row_chunk(rows, cols)
        partial = np.empty((reduce.num_chunks(rows, chunk), cols), dtype=w)
        self._sum_partial(rows, cols, chunk, _ptr("x", x, d), ldx, x_off, _ptr("y", y, w), partial.ctypes.data)
        self._sum_wide(partial.shape[0], cols, partial.ctypes.data, _ptr("out", out, w))

    def softmax_xent(self, logits, targets, ignore_index, inv_count, loss_rows, grad):
        rows, V = logits.shape
        d, w = self.dtype, self.wide
        if targets.dtype != np.int64 or not targets.flags.c_contiguous:
            raise ValueError("targets: host kernels need a C-contiguous int64 array")
        self._xent(rows, V, _ptr("logits", logits, d), targets.ctypes.data, int(ignore_index),
                   _ptr("inv_count", np.asarray(inv_count, dtype=w).reshape(1), w),
                   _ptr("loss_rows", loss_rows, w), _ptr("grad", grad, d))

    def grad_norm(self, grads, max_norm=None, eps=1e-6):
        """The global L2 norm of ``grads`` (a list of arrays of this dtype) by the kernels of
        cuda/clip_kernels.cuh, as a 0-d float64 array; with ``max_norm`` every gradient is also scaled
        in place by min(1, max_norm / (norm + eps)) (optim.clip_grad_norm)."""
        d = self.wide
        sizes = [g.size for g in grads]
        offs = np.array(reduce.norm_offsets(sizes), dtype=np.int64)
        partial = np.zeros(max(1, int(offs[-1])))
        slots = np.zeros(max(1, len(grads)))
        out = np.zeros(2)
        for i, g in enumerate(grads):
            if g.size:
                self._sumsq(g.size, reduce.norm_lanes(g.size), _ptr("grad", g, d), partial[offs[i]:].ctypes.data)
        self._norm_finish(len(grads), offs.ctypes.data, partial.ctypes.data, slots.ctypes.data)
        self._clip_coef(len(grads), slots.ctypes.data, float("nan") if max_norm is None else float(max_norm),
                        float(eps), out.ctypes.data)
        if max_norm is not None:
            for g in grads:
                if g.size:
                    self._grad_scale(g.size, _ptr("grad", g, d), out[1:].ctypes.data)
        return out[0:1].reshape(())


class LowPrecisionHostBackend(HostKernelBackend, LowPrecisionNumpyBackend):
    """bfloat16/float16 storage: the CUDA kernels' 16-bit instantiations built for the CPU, with the
    rounding reference's GEMMs (operands widened exactly, float32 products, one rounding)."""

    def describe(self):
        return f"CPU, CUDA kernels ({self.dtype.name} storage) built by {compiler()} (host test backend)"

    def narrow_copy(self, src, dst):
        self._fn("gl_narrow_copy", self.dtype)(dst.size, _ptr("src", src, self.wide), _ptr("dst", dst, self.dtype))
