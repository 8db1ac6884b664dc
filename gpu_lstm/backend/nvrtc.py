"""Compile the kernels with NVRTC through ctypes, with no GPU and no CuPy.

NVRTC is a library, not a driver call, so the ``nvidia-cuda-nvrtc`` wheel compiles CUDA on any x86-64
machine. This is the "compile" ring of verification: every kernel, every instantiation, for the
architectures we target, with the options the runtime uses (:func:`kernels.compile_options`).
"""

import ctypes
import glob
import os
import sys

from . import kernels

_lib = None


class NvrtcError(RuntimeError):
    pass


def find_libnvrtc():
    """Path to libnvrtc: $GPU_LSTM_NVRTC_LIB, the nvidia-cuda-nvrtc wheel, or a CUDA toolkit."""
    env = os.environ.get("GPU_LSTM_NVRTC_LIB")
    if env:
        return env
    patterns = []
    for entry in sys.path:
        patterns += [os.path.join(entry, "nvidia", "*", "lib", "libnvrtc.so*"),
                     os.path.join(entry, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")]
    patterns += ["/usr/local/cuda/lib64/libnvrtc.so*", "/usr/local/cuda/targets/*/lib/libnvrtc.so*"]
    for pattern in patterns:
        hits = sorted(p for p in glob.glob(pattern) if "builtins" not in os.path.basename(p))
        if hits:
            return hits[0]
    return None


def _load():
    global _lib
    if _lib is None:
        path = find_libnvrtc()
        if path is None:
            raise NvrtcError("libnvrtc not found: pip install nvidia-cuda-nvrtc (the 'test' extra), "
                             "or set GPU_LSTM_NVRTC_LIB")
        _lib = ctypes.CDLL(path)
        _lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return _lib


def version():
    lib = _load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def _check(lib, status, what):
    if status != 0:
        raise NvrtcError(f"{what} failed: {lib.nvrtcGetErrorString(status).decode()}")


def compile_kernels(arch, source=None, options=None, expressions=None):
    """Compile ``source`` (default: the kernels) for ``arch`` (e.g. 'sm_90').

    Returns ``(lowered, log, cubin_size)``: the mangled name of each name expression, the compiler log
    and the size of the machine code. Raises NvrtcError with the log on any error.
    """
    lib = _load()
    source = kernels.kernel_source() if source is None else source
    options = tuple(kernels.compile_options() if options is None else options)
    options += (f"--gpu-architecture={arch}",)
    expressions = kernels.name_expressions() if expressions is None else expressions
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"lstm_kernels.cu", 0, None, None),
           "nvrtcCreateProgram")
    try:
        for expr in expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr})")
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if status != 0:
            raise NvrtcError(f"NVRTC compile for {arch} with {options} failed: "
                             f"{lib.nvrtcGetErrorString(status).decode()}\n{log}")
        lowered = {}
        for expr in expressions:
            name = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)),
                   f"nvrtcGetLoweredName({expr})")
            lowered[expr] = name.value.decode()
        cubin = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin)), "nvrtcGetCUBINSize")
        return lowered, log, cubin.value
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
