"""The persistent fused recurrent engine (issue 13): one kernel launch per direction runs the whole time
loop, forward or backward, with the block's slice of R in shared memory and a grid barrier per step.

The per-step work is ``cuda/persistent_lstm.cuh`` (``__host__ __device__`` phase functions), run by
``cuda/persistent_lstm.cu`` on a GPU and by ``cuda/persistent_host_entry.cpp`` on the CPU (``device="host"``).

This module holds
* :func:`persistent_supported`: which models/options it runs, with the reason when not;
* :func:`launch_config`, :func:`max_hidden`, :func:`capacity_table`: the tiling and its capacity per
  architecture (docs/persistent.md is generated from them, and tested against them);
* :func:`recurrent_reference`: the documented summation order, in NumPy (the bitwise reference);
* :func:`run_forward` / :func:`run_backward`: drop-in replacements for ``_direction.forward/backward``
  on the supported option set, for the "host" backend (host runner) and the "gpu" backend (CuPy,
  cooperative launch). ``gl.LSTM(..., algo="persistent")`` runs them (``gpu_lstm/plan.py``: ``engine``
  picks them per call where :func:`persistent_supported` allows, else the engine 'auto' would pick,
  with the reason in ``LSTM.algo_reason``).

Supported option set: float32 / float64 storage, with or without bias, peepholes, variable lengths;
no projection (proj_size = 0), no zoneout, no gradient-flow diagnostics (dc_all). Dropout between
layers and bidirectional models are outside a direction, so they are unaffected.
"""

import ctypes
import os
import re
from dataclasses import dataclass

import numpy as np

from .. import _direction as dirn
from . import kernels
from .host_backend import _ptr, build_cached   # checked array pointers; the cached host build

SOURCE_FILE = "persistent_lstm.cu"
HEADER_FILE = "persistent_lstm.cuh"
HOST_ENTRY = "persistent_host_entry.cpp"
KERNEL_NAMES = ("persistent_lstm_forward", "persistent_lstm_backward")
MAX_THREADS = 512          # GL_PERS_MAX_THREADS, the kernels' __launch_bounds__
SYNC_WORDS = 3             # arrival counter, error flag, generation (cuda/persistent_lstm.cu)
DTYPES = {"float32": 4, "float64": 8}

# Per-architecture figures the capacity depends on (NVIDIA's published limits; the runtime queries the
# real device instead). smem_block: the opt-in maximum of dynamic shared memory for ONE block (the SM's
# shared memory minus the 1 KB the system reserves per block).
ARCHS = {
    "sm_80": dict(gpu="A100", sms=108, smem_sm=164 * 1024, smem_block=163 * 1024, regs_sm=64 * 1024),
    "sm_90": dict(gpu="H100 / H200", sms=132, smem_sm=228 * 1024, smem_block=227 * 1024, regs_sm=64 * 1024),
}


# ---- tiling and capacity --------------------------------------------------------------------------
def split_lanes(K):
    """KS, the lanes that split one dot product of length K (k = s, s+KS, ...): the largest power of two
    <= 32 that leaves each lane at least 8 terms (1 for K < 16)."""
    ks = 1
    while ks < 32 and K // (2 * ks) >= 8:
        ks *= 2
    return ks


@dataclass(frozen=True)
class LaunchConfig:
    grid: int          # blocks = ceil(H / U), one per SM at most
    units: int         # U, hidden units per block
    lanes_fwd: int     # KS of the forward (dot length P = H)
    lanes_bwd: int     # KS of the backward (dot length 4H)
    threads: int       # per block, multiple of 32
    smem: int          # dynamic shared memory per block, bytes: 4 * U * H * itemsize (both directions)


def launch_config(H, B, itemsize, sms, smem_block):
    """The launch for hidden size H and batch B on a GPU with ``sms`` SMs and ``smem_block`` bytes of
    shared memory per block, or ``(None, reason)`` when R does not fit on chip.

    One block per SM (grid = min(H, sms) before rounding); block k owns units [k U, k U + U); its
    shared memory holds 4 U rows (forward) / 4H x U columns (backward) of R. B does not enter the
    shared memory: the (b, unit) pairs are spread over the block's threads in passes."""
    if H < 1 or B < 1:
        return None, f"empty problem (H={H}, B={B})"
    grid = min(H, sms)
    U = -(-H // grid)
    grid = -(-H // U)
    smem = 4 * U * H * itemsize
    if smem > smem_block:
        return None, (f"R does not fit on chip: {U} units x 4 gates x {H} x {itemsize} B = {smem} B of shared "
                      f"memory per block > {smem_block} B ({sms} SMs)")
    ks_f, ks_b = split_lanes(H), split_lanes(4 * H)
    threads = min(MAX_THREADS, max(32, -(-B * U * max(ks_f, ks_b) // 32) * 32))
    return LaunchConfig(grid, U, ks_f, ks_b, threads, smem), ""


def max_hidden(itemsize, arch):
    """Largest H whose R fits on chip with this tiling on ``arch`` ('sm_80', 'sm_90'). The shared memory
    needed grows with H, so the first H that fails ends the search."""
    a = ARCHS[arch]
    H = 1
    while launch_config(H + 1, 1, itemsize, a["sms"], a["smem_block"])[0] is not None:
        H += 1
    return H


def capacity_table():
    """Rows (arch, gpu, storage, itemsize, max H, U at that H, KiB of shared memory per block) for the
    implemented FP64 / FP32 tiling, and the forecast for 2-byte storage (bf16/fp16, not implemented)."""
    rows = []
    for arch, a in ARCHS.items():
        for name, item in (("float64", 8), ("float32", 4), ("bf16/fp16 (forecast)", 2)):
            H = max_hidden(item, arch)
            cfg, _ = launch_config(H, 1, item, a["sms"], a["smem_block"])
            rows.append((arch, a["gpu"], name, item, H, cfg.units, cfg.smem / 1024))
    return rows


def capacity_markdown():
    lines = ["| arch | GPU | storage | max H | U (units/block) at max H | shared memory/block (KiB) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arch, gpu, name, _, H, U, kib in capacity_table():
        lines.append(f"| {arch} | {gpu} | {name} | {H} | {U} | {kib:.1f} |")
    return "\n".join(lines)


# ---- what it runs ----------------------------------------------------------------------------------
def persistent_supported(model, T, B, device_limits=None):
    """(True, "") if the persistent engine can run ``model`` (a gl.LSTM) on (T, B), else (False, why).
    ``device_limits`` = (sms, smem_block); by default those of the model's GPU (queried once), and no
    capacity check for the host runner (it has no chip to fit)."""
    if model.dtype.name not in DTYPES:
        return False, f"dtype {model.dtype.name} not supported (float32, float64)"
    if getattr(model, "math", "default") != "default":
        return False, f"math={model.math!r} not supported (the kernels' FMA loops are float32/float64)"
    if model.device not in ("gpu", "host"):
        return False, f"device {model.device!r}: the persistent engine runs on 'gpu' (or 'host' for tests)"
    if model.proj_size:
        return False, "projection (proj_size > 0) not supported by the persistent engine"
    if model.zoneout:
        return False, "zoneout not supported by the persistent engine"
    if getattr(model, "track_gradient_flow", False):
        return False, "gradient-flow diagnostics (dc_all) not supported by the persistent engine"
    if T < 1 or B < 1:
        return False, f"empty sequence or batch (T={T}, B={B})"
    if device_limits is None and model.device == "gpu":
        runner = runner_for(model._be)
        device_limits = (runner.sms, runner.smem_block)
    if device_limits is not None:
        cfg, why = launch_config(model.hidden_size, B, model.dtype.itemsize, *device_limits)
        if cfg is None:
            return False, why
    return True, ""


# ---- the documented summation order, in NumPy ------------------------------------------------------
def recurrent_reference(a, b, lanes):
    """op = a @ b, (M, K) @ (K, N), summed in the persistent kernels' order (cuda/persistent_lstm.cuh):
    lane s sums k = s, s+KS, ... sequentially from zero, in a's dtype; then partial[s] += partial[s+o]
    for o = KS/2, ..., 1. Every product and sum rounded separately (what the host build computes)."""
    M, K = a.shape
    parts = np.zeros((lanes, M, b.shape[1]), dtype=a.dtype)
    for k in range(K):
        parts[k % lanes] += a[:, k:k + 1] * b[k:k + 1, :]
    o = lanes // 2
    while o:
        parts[:o] += parts[o:2 * o]
        o //= 2
    return parts[0]


# ---- source, compile, host build -------------------------------------------------------------------
def kernel_source():
    """persistent_lstm.cu with its local includes inlined (kernels.inline_includes, as kernels.kernel_source)."""
    return kernels.inline_includes(kernels.cuda_dir() / SOURCE_FILE)


def name_expressions(dtypes=tuple(DTYPES)):
    return tuple(f"{k}<{kernels.CTYPES[d]}>" for k in KERNEL_NAMES for d in dtypes)


def compile_options():
    return kernels.compile_options()


_PTXAS_FN = re.compile(r"Function properties for (\S+)")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def ptxas_report(log):
    """{mangled kernel name: dict(registers, stack, spill_stores, spill_loads)} from a ``ptxas -v`` log
    (nvcc -Xptxas -v, or NVRTC >= 12 with --ptxas-options=-v)."""
    out, name = {}, None
    for line in log.splitlines():
        m = _PTXAS_FN.search(line)
        if m:
            name = m.group(1)
            out[name] = {}
            continue
        if name is None:
            continue
        m = _PTXAS_SPILL.search(line)
        if m:
            out[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _PTXAS_REGS.search(line)
        if m:
            out[name]["registers"] = int(m.group(1))
    return out


def nvrtc_register_report(arch):
    """Compile the persistent kernels with NVRTC for ``arch`` with ptxas verbose output; returns
    {name expression: ptxas figures}. Needs libnvrtc (the nvidia-cuda-nvrtc wheel), no GPU."""
    from . import nvrtc
    lowered, log, _ = nvrtc.compile_kernels(arch, source=kernel_source(),
                                            options=compile_options() + ("--ptxas-options=-v",),
                                            expressions=name_expressions())
    figures = ptxas_report(log)
    return {expr: figures[mangled] for expr, mangled in lowered.items()}


_host_lib = None


def _host_build_command(output):
    from . import host_backend
    return host_backend.build_command(output, HOST_ENTRY, "for the host runner of the persistent kernels")


def load_host_library():
    """Build (once per source version) and load the host runner of the persistent phases."""
    global _host_lib
    if _host_lib is not None:
        return _host_lib
    lib = build_cached("persistent_host", ("lstm_math.cuh", "lowp_types.cuh", HEADER_FILE, "host_shim.h", HOST_ENTRY),
                       _host_build_command, "the persistent kernels")
    ll, vp, i = ctypes.c_longlong, ctypes.c_void_p, ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(lib, f"gl_persistent_forward_{suffix}").argtypes = [ll, ll, ll, ll, i] + [vp] * 7
        getattr(lib, f"gl_persistent_backward_{suffix}").argtypes = [ll, ll, ll, ll, i] + [vp] * 9
        fn = getattr(lib, f"gl_persistent_slice_len_{suffix}")
        fn.argtypes, fn.restype = [ll, ll, ll], ll
    _host_lib = lib
    return lib


class HostRunner:
    """The phases on the CPU. ``units`` (U) and the lanes default to what a GPU with ``sms`` SMs would use."""

    def __init__(self, dtype, units=None, sms=ARCHS["sm_90"]["sms"]):
        self.dtype = np.dtype(dtype)
        self.units, self.sms = units, sms
        lib = load_host_library()
        sfx = {"float32": "f32", "float64": "f64"}[self.dtype.name]
        self._fwd = getattr(lib, f"gl_persistent_forward_{sfx}")
        self._bwd = getattr(lib, f"gl_persistent_backward_{sfx}")

    def _units(self, H):
        return self.units if self.units is not None else -(-H // min(H, self.sms))

    def forward(self, gates, bias, peep, R, h, c, lengths):
        T, B, G = gates.shape
        H = G // 4
        d = self.dtype
        self._fwd(T, B, H, self._units(H), split_lanes(H), _ptr("gates", gates, d), _ptr("bias", bias, d),
                  _ptr("peep", peep, d), _ptr("R", R, d), _ptr("h", h, d), _ptr("c", c, d),
                  _ptr("lengths", lengths, np.dtype(np.int64)))

    def backward(self, gates, peep, R, c, dh, dc, dgates, dh0, lengths):
        T, B, G = gates.shape
        H = G // 4
        d = self.dtype
        self._bwd(T, B, H, self._units(H), split_lanes(4 * H), _ptr("gates", gates, d), _ptr("peep", peep, d),
                  _ptr("R", R, d), _ptr("c", c, d), _ptr("dh", dh, d), _ptr("dc", dc, d),
                  _ptr("dgates", dgates, d), _ptr("dh0", dh0, d), _ptr("lengths", lengths, np.dtype(np.int64)))


SYNC_POOL = 64             # streams whose sync words a GpuRunner keeps (least recently used dropped)


class GpuRunner:
    """The cooperative kernels through CuPy (imported only here). One per (device, dtype), shared by
    every model of that device and dtype.

    Sync words: the grid barrier's three words (cuda/persistent_lstm.cu) belong to one launch while it
    runs, so two launches in flight at the same time must not share them. Launches queued on one
    stream run one after another, launches on different streams may overlap: each launch takes the
    words of its stream (:meth:`sync_words`, a small pool keyed by the stream handle), zeroed on that
    stream just before it. Per stream rather than per model: one model called from two streams (the
    torch module runs on torch's current stream) would race on per-model words just the same. A
    dropped entry's memory goes back to CuPy's pool, which hands it out again only in stream order.

    ``check_contract``: ``launch_config`` makes the grid cover the hidden units by construction
    (grid * U >= H), so the kernel's error flag can only be set by a launch that bypasses it. Reading
    the flag back costs a host synchronisation per launch (forward and backward, each direction), so
    it is opt-in: True under ``GPU_LSTM_DEBUG=1`` and in the GPU tests, else off.
    """

    check_contract = False

    def __init__(self, be):
        import cupy as cp
        self.cp, self.be = cp, be
        self.dtype = be.dtype
        if os.environ.get("GPU_LSTM_DEBUG") == "1":
            self.check_contract = True
        dev = cp.cuda.Device(be.device_id)
        attrs = dev.attributes
        self.sms = attrs["MultiProcessorCount"]
        self.smem_block = (attrs.get("MaxSharedMemoryPerBlockOptin")
                           or cp.cuda.runtime.getDeviceProperties(be.device_id)["sharedMemPerBlockOptin"])
        if not attrs.get("CooperativeLaunch", 1):
            raise RuntimeError("this GPU does not support cooperative launches")
        with dev:
            # No enable_cooperative_groups here: older CuPy releases then compile with
            # --device-c and link libcudadevrt.a, which pip-installed CUDA may lack; the kernels use no
            # cooperative_groups device code, so only the LAUNCH is cooperative (see _launch).
            module = cp.RawModule(code=kernel_source(), options=compile_options(),
                                  name_expressions=name_expressions((self.dtype.name,)))
            ct = kernels.CTYPES[self.dtype.name]
            self._k = {k: module.get_function(f"{k}<{ct}>") for k in KERNEL_NAMES}
        self._sync = {}            # stream handle -> SYNC_WORDS uint32 words (insertion order = recency)
        self._resident = {}        # (kernel, threads, smem) -> blocks per SM (the occupancy query, once)

    def sync_words(self):
        """The grid-barrier words of launches on the current stream (allocated on first use)."""
        cp = self.cp
        key = cp.cuda.get_current_stream().ptr
        words = self._sync.pop(key, None)
        if words is None:
            if len(self._sync) >= SYNC_POOL:
                self._sync.pop(next(iter(self._sync)))
            with cp.cuda.Device(self.be.device_id):
                words = cp.zeros(SYNC_WORDS, dtype=cp.uint32)
        self._sync[key] = words      # most recently used last
        return words

    def config(self, H, B):
        cfg, why = launch_config(H, B, self.dtype.itemsize, self.sms, self.smem_block)
        if cfg is None:
            raise ValueError(why)
        return cfg

    def _launch(self, name, cfg, args):
        """One cooperative launch of ``name`` with ``args`` (the kernel's parameters but ``sync``) on the
        current stream, with that stream's sync words."""
        cp = self.cp
        fn = self._k[name]
        key = (name, cfg.threads, cfg.smem)
        per_sm = self._resident.get(key)
        if per_sm is None:
            if fn.max_dynamic_shared_size_bytes < cfg.smem:
                fn.max_dynamic_shared_size_bytes = cfg.smem     # only ever raised: stays valid for key
            per_sm = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, cfg.threads, cfg.smem)
            self._resident[key] = per_sm
        if per_sm * self.sms < cfg.grid:   # CuPy would shrink the grid (with a warning): refuse instead
            raise RuntimeError(f"{name}: {cfg.grid} blocks of {cfg.threads} threads and {cfg.smem} B cannot be "
                               f"co-resident ({per_sm} per SM x {self.sms} SMs)")
        sync = self.sync_words()
        sync.fill(0)
        # cuLaunchCooperativeKernel through CuPy's Function: refuses a grid that cannot be co-resident
        fn.kernel((cfg.grid,), (cfg.threads,), tuple(args) + (sync,), shared_mem=cfg.smem,
                  enable_cooperative_groups=True)
        # The kernel sets sync[1] when the grid does not cover H, which launch_config rules out; reading
        # it back is a host synchronisation, hence opt-in (check_contract, see the class).
        if self.check_contract and int(sync[1].get()) != 0:
            raise RuntimeError(f"{name}: the grid did not cover the hidden units (launch contract broken)")

    def _run(self, name, backward, gates, *arrays):
        """Launch ``name`` over gates (T, B, 4H) and ``arrays`` in the kernel's order (None: null)."""
        T, B, G = gates.shape
        H = G // 4
        cfg = self.config(H, B)
        lanes = cfg.lanes_bwd if backward else cfg.lanes_fwd
        self._launch(name, cfg, (np.int64(T), np.int64(B), np.int64(H), np.int64(cfg.units), np.int32(lanes), gates,
                                 *(np.uintp(0) if a is None else a for a in arrays)))

    def forward(self, gates, bias, peep, R, h, c, lengths):
        self._run("persistent_lstm_forward", False, gates, bias, peep, R, h, c, lengths)

    def backward(self, gates, peep, R, c, dh, dc, dgates, dh0, lengths):
        self._run("persistent_lstm_backward", True, gates, peep, R, c, dh, dc, dgates, dh0, lengths)


_runners = {}


def has_persistent(be):
    """True for the backends the persistent engine runs on ('gpu', and 'host' for the CPU tests)."""
    return getattr(be, "name", None) in ("gpu", "host")


def runner_for(be):
    """The runner of a backend: the host runner for 'host', the cooperative kernels for 'gpu'."""
    key = (be.name, getattr(be, "device_id", None), be.dtype.name)
    if key not in _runners:
        if be.name == "host":
            _runners[key] = HostRunner(be.dtype)
        elif be.name == "gpu":
            _runners[key] = GpuRunner(be)
        else:
            raise ValueError(f"the persistent engine has no runner for backend {be.name!r} (use 'gpu' or 'host')")
    return _runners[key]


# ---- drop-in replacements for _direction.forward / backward (supported option set) -------------------
def _check(prm, ws, zoneout):
    if prm.Whr is not None or ws.m is not None:
        raise ValueError("persistent engine: projection not supported")
    if zoneout is not None or ws.ct is not None:
        raise ValueError("persistent engine: zoneout not supported")


def run_forward(be, prm, ws, x, h0, c0, lengths, zoneout=None, runner=None):
    """``_direction.forward`` with the per-step loop replaced by one persistent launch. Same buffers in
    and out: ws.gates (activated), ws.h, ws.c."""
    _check(prm, ws, zoneout)
    ws.zoneout = None
    if dirn.start(be, prm, ws, x, h0, c0):
        (runner or runner_for(be)).forward(ws.gates, prm.b, prm.peep, prm.R, ws.h, ws.c, lengths)


def run_backward(be, prm, grads, prefix, ws, shared, x, dh, dh_n, dc_n, dh0, dc0, dx, lengths, dc_all=None,
                 runner=None):
    """``_direction.backward`` with the per-step loop (cell backward + delta-h GEMM) replaced by one
    persistent launch; after the loop, the same parameter gradients as every engine
    (``_direction.parameter_gradients``: eqs. 23-25, peepholes, dx)."""
    _check(prm, ws, ws.zoneout)
    if dc_all is not None:
        raise ValueError("persistent engine: dc_all (gradient-flow diagnostics) not supported")
    T = x.shape[0]
    gates, h, c = ws.gates, ws.h, ws.c
    dgates, dc = shared.dgates, shared.dc
    dc[...] = 0 if dc_n is None else dc_n
    if T == 0:
        dh0[...] = 0 if dh_n is None else dh_n
        dc0[...] = dc
        return
    if dh_n is not None:
        dh[T - 1] += dh_n
    (runner or runner_for(be)).backward(gates, prm.peep, prm.R, c, dh, dc, dgates, dh0, lengths)
    dc0[...] = dc
    dirn.parameter_gradients(be, prm, grads, prefix, x, h, c, None, None, dh, dgates, dx)


__all__ = ["persistent_supported", "launch_config", "max_hidden", "capacity_table", "capacity_markdown",
           "recurrent_reference", "run_forward", "run_backward", "HostRunner", "GpuRunner", "runner_for",
           "has_persistent", "split_lanes", "LaunchConfig", "ARCHS", "ptxas_report", "nvrtc_register_report"]
