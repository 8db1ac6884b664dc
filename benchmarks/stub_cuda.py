"""Real CuPy on a machine without a GPU: the CUDA entry points CuPy reaches are C no-ops.

Why: the host-overhead benchmark (issue 9) must count CuPy's own per-call host cost (Cython
wrappers, view creation, kernel argument packing, memory pool, stream/graph objects) as well as
ours, and that needs the real CuPy, not the test stand-in. Real CuPy cannot run without a driver:
``cupy_backends.cuda.api.runtime`` links the CUDA runtime statically and the runtime needs
libcuda. What makes it stubbable is how Cython modules call each other: ``cupy.cuda.memory``,
``cupy.cuda.function``, ``cupy.cuda.stream``, ``cupy.cuda.graph`` and the rest reach the runtime
and driver wrappers through C function pointers that they look up, once, at their own import, in
``runtime.__pyx_capi__`` / ``driver.__pyx_capi__`` (a dict of PyCapsules named by the C signature).
So, before the first ``import cupy``:

1. generate one C function per entry of those two dicts with the exact signature (parsed from the
   capsule names), whose body is a no-op or a small model of the device (host ``malloc`` for device
   memory, real ``memcpy``/``memset``, handles from a counter, per-stream capture flags, an H100's
   attributes), compile it as a Python extension with the C compiler, and put its capsules into the
   dicts (and its Python-callable twins on the modules, for callers that use the Python names);
2. load a generated ``libcublas.so.13`` whose every symbol that CuPy's cuBLAS wrapper imports returns
   CUBLAS_STATUS_SUCCESS (getters write plausible values), so that CuPy's ``cublas`` module and
   gpu_lstm's ctypes binding bind to it instead of the real library;
3. leave NVRTC real: kernels are really compiled (for sm_90), once, as on a GPU machine.

Left real (and so failing without a driver): the few entries that return a C struct by value
(texture and surface descriptors, cudaExtent/cudaPos makers), which gpu_lstm does not use. Not
modelled: a second stream joining a capture through an event (CUDA then marks it capturing too).

Then CuPy, gpu_lstm and their Python/Cython host paths run unchanged, and only the work that would
happen in the CUDA runtime, the driver and cuBLAS (kernel launch submission, about 2-5 us a call
on a real machine; cuBLAS's heuristics) is missing. Kernel bodies do not run: device values are
garbage. Use only to time host paths.

Needs: CuPy (``pip install cupy-cuda13x``, with ``nvidia-cuda-nvrtc``), a C compiler, Python headers.
Usage (before anything imports cupy)::

    import stub_cuda; stub_cuda.install()
    import cupy
"""

import ctypes
import hashlib
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tempfile

# Per user (the stubs are loaded into the process: nobody else may write them); GL_STUB_CUDA_BUILD overrides.
BUILD = pathlib.Path(os.environ.get("GL_STUB_CUDA_BUILD",
                                    pathlib.Path(tempfile.gettempdir()) / f"gl_stub_cuda-{os.getuid()}"))

# An H100 SXM's values for the attributes anything here reads; the rest are 0.
DEVICE_ATTRIBUTES = {
    "ComputeCapabilityMajor": 9, "ComputeCapabilityMinor": 0, "MultiProcessorCount": 132,
    "MaxThreadsPerBlock": 1024, "MaxBlockDimX": 1024, "MaxBlockDimY": 1024, "MaxBlockDimZ": 64,
    "MaxGridDimX": 2 ** 31 - 1, "MaxGridDimY": 65535, "MaxGridDimZ": 65535, "WarpSize": 32,
    "MaxSharedMemoryPerBlock": 49152, "MaxSharedMemoryPerBlockOptin": 232448,
    "MaxSharedMemoryPerMultiprocessor": 233472, "MaxRegistersPerBlock": 65536,
    "MaxRegistersPerMultiprocessor": 65536, "MaxThreadsPerMultiProcessor": 2048,
    "MaxBlocksPerMultiprocessor": 32, "CooperativeLaunch": 1, "ConcurrentKernels": 1,
    "L2CacheSize": 52428800, "UnifiedAddressing": 1, "MemoryPoolsSupported": 1, "AsyncEngineCount": 3,
    "ClockRate": 1980000, "MemoryClockRate": 2619000, "GlobalMemoryBusWidth": 5120,
    "TotalConstantMemory": 65536, "StreamPrioritiesSupported": 1, "ManagedMemory": 1,
}
# CUfunction_attribute values for every compiled kernel (plausible for this project's kernels).
FUNCTION_ATTRIBUTES = {0: 1024, 4: 40, 5: 90, 6: 90, 8: 49152}   # MAX_THREADS, NUM_REGS, PTX, BINARY, MAX_DYN_SMEM

_SCALARS = {"int": "int", "unsigned int": "unsigned int", "intptr_t": "intptr_t", "size_t": "size_t",
            "uintmax_t": "uintmax_t", "float": "float", "cudaMemcpyKind": "int", "CUdevice": "int",
            "PyObject *": "PyObject *"}

# Bodies that model the device; every other entry returns None / 0. Arguments are a0, a1, ...
_BODIES = {
    ("runtime", "getDeviceCount"): "return 1;",
    ("runtime", "getDevice"): "return 0;",
    ("runtime", "runtimeGetVersion"): "return 1000 * gl_cuda_major;",
    ("runtime", "driverGetVersion"): "return 1000 * gl_cuda_major;",
    ("runtime", "_getCUDAMajorVersion"): "return gl_cuda_major;",
    ("runtime", "deviceGetAttribute"): "return (a0 >= 0 && a0 < 512) ? gl_dev_attr[a0] : 0;",
    ("runtime", "malloc"): "return gl_alloc(a0);",
    ("runtime", "mallocAsync"): "return gl_alloc(a0);",
    ("runtime", "mallocManaged"): "return gl_alloc(a0);",
    ("runtime", "hostAlloc"): "return gl_alloc(a0);",
    ("runtime", "free"): "free((void *)a0); Py_RETURN_NONE;",
    ("runtime", "freeAsync"): "free((void *)a0); Py_RETURN_NONE;",
    ("runtime", "freeHost"): "free((void *)a0); Py_RETURN_NONE;",
    ("runtime", "memcpy"): "memcpy((void *)a0, (void *)a1, a2); Py_RETURN_NONE;",
    ("runtime", "memcpyAsync"): "memcpy((void *)a0, (void *)a1, a2); Py_RETURN_NONE;",
    ("runtime", "memset"): "memset((void *)a0, a1, a2); Py_RETURN_NONE;",
    ("runtime", "memsetAsync"): "memset((void *)a0, a1, a2); Py_RETURN_NONE;",
    ("runtime", "memGetInfo"): 'return Py_BuildValue("(nn)", (Py_ssize_t)80 << 30, (Py_ssize_t)80 << 30);',
    ("runtime", "streamCreate"): "return gl_handle();",
    ("runtime", "streamCreateWithFlags"): "return gl_handle();",
    ("runtime", "streamCreateWithPriority"): "return gl_handle();",
    ("runtime", "eventCreate"): "return gl_handle();",
    ("runtime", "eventCreateWithFlags"): "return gl_handle();",
    ("runtime", "deviceGetDefaultMemPool"): "return gl_handle();",
    ("runtime", "deviceGetMemPool"): "return gl_handle();",
    ("runtime", "graphInstantiate"): "return gl_handle();",
    ("runtime", "streamBeginCapture"): "gl_capture(a0, 1); Py_RETURN_NONE;",
    ("runtime", "streamEndCapture"): "gl_capture(a0, 0); return gl_handle();",
    ("runtime", "streamIsCapturing"): "return gl_is_capturing(a0);",
    ("runtime", "eventQuery"): "return PyLong_FromLong(0);",          # cudaSuccess: the work is done
    ("runtime", "streamQuery"): "return PyLong_FromLong(0);",
    ("runtime", "pointerGetAttributes"): 'return gl_callback(0, "n", (Py_ssize_t)a0);',
    ("runtime", "getDeviceProperties"): 'return gl_callback(1, "i", a0);',
    ("driver", "ctxGetCurrent"): "return 4096;",
    ("driver", "ctxGetDevice"): "return 0;",
    ("driver", "moduleLoad"): "return gl_handle();",
    ("driver", "moduleLoadData"): "return gl_handle();",
    ("driver", "moduleGetFunction"): "return gl_handle();",
    ("driver", "moduleGetGlobal"): "return gl_alloc(256);",
    ("driver", "funcGetAttribute"): "return (a0 >= 0 && a0 < 16) ? gl_func_attr[a0] : 0;",
    ("driver", "occupancyMaxActiveBlocksPerMultiprocessor"): "return 2;",
    ("driver", "occupancyMaxPotentialBlockSize"): 'return Py_BuildValue("(ii)", 264, 1024);',
}

_PRELUDE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <limits.h>

#define GL_MAYBE_UNUSED __attribute__((unused))   /* a CuPy version may lack every entry using one */

static int gl_dev_attr[512];
static int gl_cuda_major = 13;
/* C int / unsigned int from a Python int, OverflowError out of range (as Cython's conversion) */
static GL_MAYBE_UNUSED int gl_as_int(PyObject *o) {
    long v = PyLong_AsLong(o);
    if (!PyErr_Occurred() && (v < INT_MIN || v > INT_MAX)) PyErr_SetString(PyExc_OverflowError, "value out of range for C int");
    return (int)v;
}
static GL_MAYBE_UNUSED unsigned int gl_as_uint(PyObject *o) {
    unsigned long v = PyLong_AsUnsignedLong(o);
    if (!PyErr_Occurred() && v > UINT_MAX) PyErr_SetString(PyExc_OverflowError, "value out of range for C unsigned int");
    return (unsigned int)v;
}
/* Entries answered by Python callables (set_callbacks): 0 pointerGetAttributes, 1 getDeviceProperties */
static PyObject *gl_callbacks[2];
static GL_MAYBE_UNUSED PyObject *gl_callback(int i, const char *fmt, ...) {
    if (!gl_callbacks[i]) { PyErr_Format(PyExc_RuntimeError, "stub: callback %d not set up", i); return NULL; }
    va_list va;
    va_start(va, fmt);
    PyObject *args = Py_VaBuildValue(fmt, va);
    va_end(va);
    if (!args) return NULL;
    if (!PyTuple_Check(args)) { PyObject *t = PyTuple_Pack(1, args); Py_DECREF(args); args = t; if (!t) return NULL; }
    PyObject *r = PyObject_CallObject(gl_callbacks[i], args);
    Py_DECREF(args);
    return r;
}
static unsigned long long gl_calls[1024];   /* calls per entry, in gl_table order (counts()) */
static int gl_func_attr[16];
static intptr_t gl_next = 0x10000;
static intptr_t gl_capturing[64];
static GL_MAYBE_UNUSED intptr_t gl_handle(void) { gl_next += 0x100; return gl_next; }
static GL_MAYBE_UNUSED intptr_t gl_alloc(size_t n) {       /* device memory is host memory, 256-byte aligned */
    void *p = NULL;
    if (posix_memalign(&p, 256, n ? (n + 255) / 256 * 256 : 256)) { PyErr_NoMemory(); return 0; }
    return (intptr_t)p;
}
static GL_MAYBE_UNUSED void gl_capture(intptr_t stream, int on) {
    for (int i = 0; i < 64; i++) {
        if (on && gl_capturing[i] == 0) { gl_capturing[i] = stream ? stream : -1; return; }
        if (!on && gl_capturing[i] == (stream ? stream : -1)) { gl_capturing[i] = 0; return; }
    }
}
static GL_MAYBE_UNUSED int gl_is_capturing(intptr_t stream) {   /* cudaStreamCaptureStatus: 0 none, 1 active */
    for (int i = 0; i < 64; i++) if (gl_capturing[i] == (stream ? stream : -1)) return 1;
    return 0;
}
"""


def _parse(signature):
    """'RET (T1, T2, int __pyx_skip_dispatch, struct __pyx_opt_args_X *__pyx_optional_args)' ->
    (C return type, [(C type, kind)]) with kind 'value' | 'skip' | 'opt'; None when not a function
    or a type this module does not model (struct returns)."""
    m = re.fullmatch(r"(.+?)\s*\((.*)\)", signature)
    if not m:
        return None
    ret, args = m.group(1).strip(), m.group(2).strip()
    if ret.startswith("struct __pyx_obj_") and ret.endswith("*"):
        ret = "PyObject *"           # a cdef class instance: an object pointer, as PyObject * in the ABI
    if ret not in _SCALARS:
        return None
    params = []
    for a in ([] if args in ("", "void") else [s.strip() for s in args.split(",")]):
        if a == "int __pyx_skip_dispatch":
            params.append(("int", "skip"))
        elif a.startswith("struct __pyx_opt_args"):
            params.append(("void *", "opt"))
        elif a in _SCALARS:
            params.append((_SCALARS[a], "value"))
        elif a.startswith("struct __pyx_obj_"):
            params.append(("PyObject *", "value"))
        else:
            return None
    return _SCALARS[ret], params


_TO_PY = {"PyObject *": "{}", "int": "PyLong_FromLong({})", "unsigned int": "PyLong_FromUnsignedLong({})",
          "intptr_t": "PyLong_FromSsize_t({})", "size_t": "PyLong_FromSize_t({})",
          "uintmax_t": "PyLong_FromUnsignedLongLong({})", "float": "PyFloat_FromDouble({})"}
_FROM_PY = {"PyObject *": "{}", "int": "gl_as_int({})", "unsigned int": "gl_as_uint({})",
            "intptr_t": "(intptr_t)PyLong_AsSsize_t({})", "size_t": "(size_t)PyLong_AsSize_t({})",
            "uintmax_t": "(uintmax_t)PyLong_AsUnsignedLongLong({})", "float": "(float)PyFloat_AsDouble({})"}


def generate(capis):
    """C source of the stub extension for {module short name: {entry: capsule signature}}."""
    out, table, methods = [_PRELUDE], [], []
    for mod, entries in capis.items():
        for name, sig in entries.items():
            parsed = _parse(sig)
            if parsed is None:
                continue
            ret, params = parsed
            cname = f"gl_{mod}_{name}"
            decl = ", ".join(f"{t} a{i}" for i, (t, _) in enumerate(params)) or "void"
            body = _BODIES.get((mod, name)) or ("Py_RETURN_NONE;" if ret == "PyObject *" else "return 0;")
            out.append(f"static {ret} {cname}({decl}) {{ gl_calls[{len(table)}]++; {body} }}")
            # The Python twin: positional values, each converted and checked before the call; skip = 0;
            # optional arguments (Cython's __pyx_optional_args) accepted and ignored; no keywords.
            values = [i for i, (_, k) in enumerate(params) if k == "value"]
            has_opt = any(k == "opt" for _, k in params)
            count = (f"n < {len(values)}" if has_opt else f"n != {len(values)}")
            conv = "".join(f"    {params[i][0]} v{j} = {_FROM_PY[params[i][0]].format(f'args[{j}]')};\n"
                           f"    if (PyErr_Occurred()) return NULL;\n" for j, i in enumerate(values))
            call = ", ".join("0" if k == "skip" else "NULL" if k == "opt" else f"v{values.index(i)}"
                             for i, (t, k) in enumerate(params))
            out.append(
                f"static PyObject *py_{cname}(PyObject *self, PyObject *const *args, Py_ssize_t n) {{\n"
                f"    if ({count}) {{ PyErr_SetString(PyExc_TypeError, \"{name}: {len(values)} positional arguments\"); return NULL; }}\n"
                f"{conv}"
                f"    {ret} r = {cname}({call});\n"
                f"    if (PyErr_Occurred()) return NULL;\n"
                f"    return {_TO_PY[ret].format('r')};\n}}")
            table.append(f'    {{"{mod}", "{name}", "{sig}", (void *){cname}}},')
            methods.append(f'    {{"{mod}__{name}", (PyCFunction)(void(*)(void))py_{cname}, METH_FASTCALL, NULL}},')
    if len(table) > 1024:
        raise RuntimeError(f"{len(table)} entry points: raise gl_calls' size")
    out.append("static struct { const char *mod, *name, *sig; void *fn; } gl_table[] = {\n" + "\n".join(table)
               + "\n    {NULL, NULL, NULL, NULL}\n};")
    out.append(r"""
static PyObject *capsules(PyObject *self, PyObject *unused) {
    PyObject *d = PyDict_New();
    for (int i = 0; gl_table[i].mod; i++) {
        PyObject *key = Py_BuildValue("(ss)", gl_table[i].mod, gl_table[i].name);
        PyObject *cap = PyCapsule_New(gl_table[i].fn, gl_table[i].sig, NULL);
        PyDict_SetItem(d, key, cap);
        Py_DECREF(key); Py_DECREF(cap);
    }
    return d;
}
static PyObject *counts(PyObject *self, PyObject *unused) {   /* {(module, entry): calls} so far */
    PyObject *d = PyDict_New();
    for (int i = 0; gl_table[i].mod; i++) {
        PyObject *key = Py_BuildValue("(ss)", gl_table[i].mod, gl_table[i].name);
        PyObject *n = PyLong_FromUnsignedLongLong(gl_calls[i]);
        PyDict_SetItem(d, key, n);
        Py_DECREF(key); Py_DECREF(n);
    }
    return d;
}
static PyObject *set_callbacks(PyObject *self, PyObject *args) {   /* (pointer attributes, device properties) */
    PyObject *a, *b;
    if (!PyArg_ParseTuple(args, "OO", &a, &b)) return NULL;
    if (!PyCallable_Check(a) || !PyCallable_Check(b)) { PyErr_SetString(PyExc_TypeError, "set_callbacks: two callables"); return NULL; }
    PyObject *old0 = gl_callbacks[0], *old1 = gl_callbacks[1];
    Py_INCREF(a); Py_INCREF(b);
    gl_callbacks[0] = a; gl_callbacks[1] = b;
    Py_XDECREF(old0); Py_XDECREF(old1);
    Py_RETURN_NONE;
}
static PyObject *set_attributes(PyObject *self, PyObject *args) {
    PyObject *dev, *fn;
    if (!PyArg_ParseTuple(args, "OO|i", &dev, &fn, &gl_cuda_major)) return NULL;
    PyObject *k, *v; Py_ssize_t pos = 0;
    while (PyDict_Next(dev, &pos, &k, &v)) gl_dev_attr[PyLong_AsLong(k) & 511] = (int)PyLong_AsLong(v);
    pos = 0;
    while (PyDict_Next(fn, &pos, &k, &v)) gl_func_attr[PyLong_AsLong(k) & 15] = (int)PyLong_AsLong(v);
    Py_RETURN_NONE;
}
static PyMethodDef methods[] = {
    {"capsules", capsules, METH_NOARGS, NULL},
    {"counts", counts, METH_NOARGS, NULL},
    {"set_attributes", set_attributes, METH_VARARGS, NULL},
    {"set_callbacks", set_callbacks, METH_VARARGS, NULL},
""" + "\n".join(methods) + r"""
    {NULL, NULL, 0, NULL}
};
static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_gl_stub_cuda", NULL, -1, methods};
PyMODINIT_FUNC PyInit__gl_stub_cuda(void) { return PyModule_Create(&moddef); }
""")
    return "\n".join(out) + "\n"


_CUBLAS_GETTERS = {   # symbol: C body writing its out-parameter (all others: return 0)
    "cublasCreate_v2": "*(void **)a0 = (void *)0x7000; return 0;",
    "cublasGetVersion_v2": "*(int *)a1 = 130000; return 0;",
    "cublasGetPointerMode_v2": "*(int *)a1 = 0; return 0;",
    "cublasGetAtomicsMode": "*(int *)a1 = 0; return 0;",
    "cublasGetMathMode": "*(int *)a1 = 0; return 0;",
    "cublasGetStream_v2": "*(void **)a1 = 0; return 0;",
    "cublasGetProperty": "*(int *)a1 = 0; return 0;",
}


# What gpu_lstm's own ctypes binding (gpu_lstm/backend/cublas_capture.py) calls besides CuPy's imports.
CUBLAS_EXTRA = ("cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2",
                "cublasSetPointerMode_v2", "cublasSgemm_v2", "cublasDgemm_v2", "cublasGemmEx")


def cublas_names(symbols):
    """The stub cuBLAS's functions, in the order of its call counters."""
    return sorted(set(symbols) | set(CUBLAS_EXTRA))


def generate_cublas(symbols):
    names = cublas_names(symbols)
    lines = ["#include <stdint.h>", f"static unsigned long long gl_count[{len(names)}];",
             f"unsigned long long gl_cublas_count(int i) {{ return (i >= 0 && i < {len(names)}) ? gl_count[i] : 0; }}"]
    for i, s in enumerate(names):
        body = _CUBLAS_GETTERS.get(s, "return 0;")
        lines.append(f"int {s}(intptr_t a0, intptr_t a1, intptr_t a2, intptr_t a3) {{ gl_count[{i}]++; {body} }}")
    return "\n".join(lines) + "\n"


def _cublas_symbols(cublas_so):
    """The cuBLAS symbols (and their version node) that CuPy's wrapper imports."""
    out = subprocess.run(["nm", "-D", "--undefined-only", str(cublas_so)], capture_output=True, text=True,
                         check=True).stdout
    syms = re.findall(r"\bU (cublas\w+)@(libcublas\.so\.\d+)", out)
    if not syms:
        raise RuntimeError(f"no cuBLAS imports found in {cublas_so}")
    return {s for s, _ in syms}, syms[0][1]


def _compile(src, out, extra):
    """cc the C source ``src`` into ``out`` (written under a temporary name, then renamed: two
    processes building at once never load a half-written library)."""
    c = out.parent / f"{out.name}.{os.getpid()}.c"    # per process: a concurrent build never reads it half-written
    c.write_text(src)
    tmp = out.parent / f"{out.name}.{os.getpid()}.tmp"
    cc = os.environ.get("CC", "cc")
    try:
        res = subprocess.run([cc, "-O2", "-Wall", "-Werror", "-shared", "-fPIC", str(c), "-o", str(tmp), *extra],
                             capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"building {out.name} failed ({cc}):\n{res.stderr[-4000:]}")
        os.replace(tmp, out)
    finally:
        c.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def build():
    """Build (or reuse) the stub extension and the stub cuBLAS; returns (extension path, cuBLAS path)."""
    import cupy_backends.cuda.api.driver as drv
    import cupy_backends.cuda.api.runtime as rt
    ctypes.pythonapi.PyCapsule_GetName.restype = ctypes.c_char_p
    ctypes.pythonapi.PyCapsule_GetName.argtypes = [ctypes.py_object]
    capis = {short: {name: ctypes.pythonapi.PyCapsule_GetName(cap).decode()
                     for name, cap in mod.__pyx_capi__.items()}
             for short, mod in (("runtime", rt), ("driver", drv))}
    spec = importlib.util.find_spec("cupy_backends.cuda.libs.cublas")
    symbols, soname = _cublas_symbols(spec.origin)
    src, csrc = generate(capis), generate_cublas(symbols)
    key = hashlib.sha256((src + csrc + soname).encode()).hexdigest()[:16]
    d = BUILD / key
    ext, lib = d / ("_gl_stub_cuda" + sysconfig.get_config_var("EXT_SUFFIX")), d / soname
    lt = d / soname.replace("libcublas", "libcublasLt")   # CuPy preloads cuBLASLt by name first
    _private_dir(d)
    if not (ext.exists() and lib.exists() and lt.exists()):
        _compile(src, ext, [f"-I{sysconfig.get_paths()['include']}"])
        vmap = d / f"cublas.{os.getpid()}.map"
        vmap.write_text(f"{soname} {{ global: *; }};\n")
        try:
            _compile(csrc, lib, [f"-Wl,-soname,{soname}", f"-Wl,--version-script={vmap}"])
        finally:             # as _compile removes its own temporaries, also when it fails
            vmap.unlink(missing_ok=True)
        _compile("int gl_stub_cublaslt;\n", lt, [f"-Wl,-soname,{lt.name}"])
    return ext, lib, lt, symbols


def _private_dir(d):
    """Create ``d`` (and the build root) for this user only, or refuse one another user owns: the
    libraries in it are loaded into this process."""
    for p in (BUILD, d):
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = p.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise RuntimeError(f"stub build folder {p}: expected a folder of this user writable by nobody else, "
                               f"got owner uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}; set GL_STUB_CUDA_BUILD")


def install():
    """Build, then point CuPy's runtime/driver entry points and cuBLAS at the stubs. Call before any
    ``import cupy`` (modules that already bound the real entry points keep them: refused)."""
    if "cupy" in sys.modules or "cupy.cuda" in sys.modules:
        raise RuntimeError("stub_cuda.install() must run before cupy is imported")
    ext, lib, lt, symbols = build()
    for so in (lt, lib):   # loaded first, by soname: the loader and CuPy's library finder then reuse them
        handle = ctypes.CDLL(str(so), mode=ctypes.RTLD_GLOBAL)
    handle.gl_cublas_count.restype = ctypes.c_ulonglong
    names = cublas_names(symbols)
    spec = importlib.util.spec_from_file_location("_gl_stub_cuda", ext)
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    import cupy_backends.cuda.api._runtime_enum as enum
    import cupy_backends.cuda.api.driver as drv
    import cupy_backends.cuda.api.runtime as rt
    ids = {"ComputeCapabilityMajor": 75, "ComputeCapabilityMinor": 76}   # cudaDeviceAttr, not in the enum module
    cuda_major = int(lib.name.rsplit(".", 1)[1])   # libcublas.so.13 -> CUDA 13
    # cudaPointerAttributes of any pointer: device memory on device 0 (cudaMemoryTypeDevice = 2), what
    # CuPy asks of a __cuda_array_interface__ pointer
    stub.set_attributes({ids.get(k) or getattr(enum, "cudaDevAttr" + k): v for k, v in DEVICE_ATTRIBUTES.items()},
                        FUNCTION_ATTRIBUTES, cuda_major)
    stub.set_callbacks(lambda p: rt.PointerAttributes(0, p, 0, 2), _device_properties)
    mods = {"runtime": rt, "driver": drv}
    for (short, name), cap in stub.capsules().items():
        mod = mods[short]
        mod.__pyx_capi__[name] = cap
        if hasattr(mod, name):
            setattr(mod, name, getattr(stub, f"{short}__{name}"))
    _installed.update(stub=stub, cublas=handle, names=names)
    return stub


_installed = {}   # what install() loaded: the stub extension, the stub cuBLAS, its symbol order


def counts():
    """{(module, entry): calls so far} over the runtime, driver ('runtime', 'driver') and cuBLAS
    ('cublas') stubs, entries never called left out."""
    if not _installed:
        raise RuntimeError("stub_cuda.install() has not run")
    lib = _installed["cublas"]
    out = {k: n for k, n in _installed["stub"].counts().items() if n}
    out.update({("cublas", s): n for i, s in enumerate(_installed["names"]) if (n := lib.gl_cublas_count(i))})
    return out


def _device_properties(device, *_):
    a = DEVICE_ATTRIBUTES
    return {"name": b"NVIDIA H100 80GB HBM3 (stubbed: no device)", "major": a["ComputeCapabilityMajor"],
            "minor": a["ComputeCapabilityMinor"], "multiProcessorCount": a["MultiProcessorCount"],
            "totalGlobalMem": 80 << 30, "sharedMemPerBlock": a["MaxSharedMemoryPerBlock"],
            "sharedMemPerBlockOptin": a["MaxSharedMemoryPerBlockOptin"], "warpSize": 32,
            "maxThreadsPerBlock": 1024, "regsPerBlock": 65536, "cooperativeLaunch": 1,
            "l2CacheSize": a["L2CacheSize"], "clockRate": a["ClockRate"]}
