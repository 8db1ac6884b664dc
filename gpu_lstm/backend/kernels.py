"""Where the CUDA sources are, how they are compiled, and what they instantiate: one place for the GPU
runtime (CuPy RawModule), the NVRTC compile check and the host (g++) build, so all three compile the
same text with the same options.

Nothing is read or compiled at import; :func:`load_module` compiles on first use and caches the module
per device.
"""

import pathlib
import re

from ..gates import GATE_INDEX

KERNEL_FILE = "lstm_kernels.cu"
KERNEL_NAMES = ("lstm_cell_forward", "lstm_cell_backward", "seq_carry", "zoneout_mix", "zoneout_split",
                "dropout_apply", "sum_rows", "sum_rows_partial", "softmax_xent", "adam_step", "sgd_step",
                "grad_sumsq_partial", "grad_norm_finish", "grad_clip_coef", "grad_scale")
# Every file the kernel source is made of (lstm_kernels.cu and what it includes): the host build's
# cache key hashes them.
SOURCE_FILES = ("lstm_math.cuh", "lowp_types.cuh", "philox.cuh", "reduce_kernels.cuh", "optim_kernels.cuh",
                "clip_kernels.cuh", "lstm_kernels.cu")
# NumPy dtype name -> C++ template argument.
CTYPES = {"float32": "float", "float64": "double"}
# The 16-bit storage types (cuda/lowp_types.cuh; float arithmetic): every kernel but the optimizers
# (low-precision models keep float32 master weights, updated by the float kernels), plus narrow_copy
# (float32 -> storage) and widen_copy/add_rows (the plans' conversions and sums of 16-bit buffers). ml_dtypes.bfloat16 is named "bfloat16" by NumPy.
LOWP_CTYPES = {"bfloat16": "gl_bf16", "float16": "gl_half"}
LOWP_KERNEL_NAMES = (tuple(k for k in KERNEL_NAMES if k not in ("adam_step", "sgd_step"))
                     + ("narrow_copy", "widen_copy", "add_rows"))

_modules = {}   # (device id, dtype name) -> {kernel name: cupy RawKernel}


def cuda_dir():
    """The folder with the .cu/.cuh files: gpu_lstm/cuda in an installed wheel, ./cuda in a checkout."""
    here = pathlib.Path(__file__).resolve().parent.parent   # gpu_lstm/
    for candidate in (here / "cuda", here.parent / "cuda"):
        if (candidate / KERNEL_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"CUDA sources not found: looked for {KERNEL_FILE} in {here / 'cuda'} "
                            f"and {here.parent / 'cuda'} (is the package installed from a wheel that "
                            "force-includes cuda/?)")


def gate_defines():
    """-D options carrying the gate order of gpu_lstm.gates into the CUDA sources."""
    return tuple(f"-DGL_GATE_{name.upper()}={k}" for name, k in GATE_INDEX.items())


def compile_options():
    """NVRTC options used at run time (CuPy adds the architecture flag itself) and by the checks.

    No fast-math: the float32 path is tested against NumPy to 1e-5 relative, and the sigmoid's
    stability relies on IEEE exp semantics.
    """
    return gate_defines()


def inline_includes(path):
    """The text of ``path`` (a file in :func:`cuda_dir`) with its local ``#include "..."`` lines replaced
    by the files' text, recursively, each file once: a self-contained source, so CuPy's compile cache
    (keyed by source and options) sees every change to a header."""
    root = cuda_dir()

    def inline(p, seen):
        def repl(match):
            inc = root / match.group(1)
            if inc in seen:
                return ""
            seen.add(inc)
            return inline(inc, seen)
        return re.sub(r'^#include "([^"]+)"\s*$', repl, p.read_text(), flags=re.M)

    return inline(pathlib.Path(path), set())


def kernel_source():
    """lstm_kernels.cu with its local #include inlined (:func:`inline_includes`)."""
    return inline_includes(cuda_dir() / KERNEL_FILE)


def kernel_names(dtype_name):
    """The kernels instantiated for one dtype name."""
    return LOWP_KERNEL_NAMES if dtype_name in LOWP_CTYPES else KERNEL_NAMES


def ctype(dtype_name):
    """C++ template argument of a dtype name ('float32' -> 'float', 'bfloat16' -> 'gl_bf16')."""
    return CTYPES[dtype_name] if dtype_name in CTYPES else LOWP_CTYPES[dtype_name]


def name_expressions(dtypes=tuple(CTYPES)):
    """The template instantiations, e.g. 'lstm_cell_forward<float>' (the 16-bit ones with
    ``dtypes=tuple(LOWP_CTYPES)``)."""
    names = dict.fromkeys(n for d in dtypes for n in kernel_names(d))   # ordered union
    return tuple(f"{k}<{ctype(d)}>" for k in names for d in dtypes if k in kernel_names(d))


def load_module(device_id, dtype_name):
    """{kernel name: RawKernel} for one dtype on one device, compiled on first use and cached."""
    key = (device_id, dtype_name)
    if key not in _modules:
        import cupy
        with cupy.cuda.Device(device_id):
            dtypes = tuple(LOWP_CTYPES) if dtype_name in LOWP_CTYPES else tuple(CTYPES)
            module = cupy.RawModule(code=kernel_source(), options=compile_options(),
                                    name_expressions=name_expressions(dtypes))
            _modules[key] = {k: module.get_function(f"{k}<{ctype(dtype_name)}>") for k in kernel_names(dtype_name)}
    return _modules[key]
