"""benchmarks/stub_cuda.py: the C stubs that let the real CuPy run without a GPU for the
host-overhead benchmark. Checked here without CuPy: signatures parsed exactly, the generated
extension compiles, its capsules carry the very signature strings Cython's import compares, and the
device model behaves (aligned host memory, real copies, per-stream capture flags, attributes)."""

import ctypes
import importlib.util
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import stub_cuda  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

# Capsule names exactly as CuPy 14.2's runtime/driver modules carry them.
CAPIS = {
    "runtime": {
        "malloc": "intptr_t (size_t, int __pyx_skip_dispatch)",
        "free": "PyObject *(intptr_t, int __pyx_skip_dispatch)",
        "memcpyAsync": "PyObject *(intptr_t, intptr_t, size_t, int, intptr_t, int __pyx_skip_dispatch)",
        "memsetAsync": "PyObject *(intptr_t, int, size_t, intptr_t, int __pyx_skip_dispatch)",
        "streamBeginCapture": "PyObject *(intptr_t, int __pyx_skip_dispatch, struct __pyx_opt_args_13cupy_backends_4cuda_3api_7runtime_streamBeginCapture *__pyx_optional_args)",
        "streamEndCapture": "intptr_t (intptr_t, int __pyx_skip_dispatch)",
        "streamIsCapturing": "int (intptr_t, int __pyx_skip_dispatch)",
        "deviceGetAttribute": "int (int, int, int __pyx_skip_dispatch)",
        "eventElapsedTime": "float (intptr_t, intptr_t, int __pyx_skip_dispatch)",
        "memcpy2D": "PyObject *(intptr_t, size_t, intptr_t, size_t, size_t, size_t, cudaMemcpyKind, int __pyx_skip_dispatch)",
        "_ensure_context": "PyObject *(void)",
        "getChannelDesc": "cudaChannelFormatDesc (intptr_t)",      # struct return: left real
        "_is_hip_environment": "int",                              # a variable: left alone
        "eventQuery": "PyObject *(intptr_t, int __pyx_skip_dispatch)",
        "pointerGetAttributes": "struct __pyx_obj_13cupy_backends_4cuda_3api_7runtime_PointerAttributes *(intptr_t, int __pyx_skip_dispatch)",
        "getDeviceProperties": "PyObject *(int, int __pyx_skip_dispatch)",
    },
    "driver": {
        "launchKernel": "PyObject *(intptr_t, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, intptr_t, intptr_t, intptr_t, int __pyx_skip_dispatch)",
        "funcGetAttribute": "int (int, intptr_t, int __pyx_skip_dispatch)",
        "ctxCreate": "intptr_t (CUdevice, int __pyx_skip_dispatch)",
    },
}


def test_parse_exact_signatures():
    assert stub_cuda._parse(CAPIS["runtime"]["malloc"]) == ("intptr_t", [("size_t", "value"), ("int", "skip")])
    ret, params = stub_cuda._parse(CAPIS["runtime"]["streamBeginCapture"])
    assert ret == "PyObject *" and [k for _, k in params] == ["value", "skip", "opt"]
    assert stub_cuda._parse(CAPIS["runtime"]["_ensure_context"]) == ("PyObject *", [])
    assert stub_cuda._parse(CAPIS["runtime"]["memcpy2D"])[1][6] == ("int", "value")   # cudaMemcpyKind
    assert stub_cuda._parse(CAPIS["runtime"]["getChannelDesc"]) is None
    assert stub_cuda._parse(CAPIS["runtime"]["pointerGetAttributes"])[0] == "PyObject *"   # a cdef class instance
    assert stub_cuda._parse(CAPIS["runtime"]["_is_hip_environment"]) is None
    assert stub_cuda._parse("int (SomeUnknownType, int __pyx_skip_dispatch)") is None


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    out = tmp_path_factory.mktemp("stub") / ("_gl_stub_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    stub_cuda._compile(stub_cuda.generate(CAPIS), out, [f"-I{sysconfig.get_paths()['include']}"])
    spec = importlib.util.spec_from_file_location("_gl_stub_cuda", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_capsules_carry_the_signature_strings(stub):
    ctypes.pythonapi.PyCapsule_GetName.restype = ctypes.c_char_p
    ctypes.pythonapi.PyCapsule_GetName.argtypes = [ctypes.py_object]
    caps = stub.capsules()
    want = {(m, n): sig for m, d in CAPIS.items() for n, sig in d.items() if stub_cuda._parse(sig)}
    assert set(caps) == set(want)
    for key, cap in caps.items():
        assert ctypes.pythonapi.PyCapsule_GetName(cap).decode() == want[key]


def test_device_model(stub):
    p = stub.runtime__malloc(1000)
    assert p and p % 256 == 0
    src = np.arange(250, dtype=np.float32)
    stub.runtime__memcpyAsync(p, src.ctypes.data, src.nbytes, 1, 0)
    back = np.zeros_like(src)
    stub.runtime__memcpyAsync(back.ctypes.data, p, src.nbytes, 2, 0)
    np.testing.assert_array_equal(back, src)
    stub.runtime__memsetAsync(p, 0, src.nbytes, 0)
    stub.runtime__memcpyAsync(back.ctypes.data, p, src.nbytes, 2, 0)
    assert not back.any()
    stub.runtime__free(p)
    s1, s2 = 0x1234500, 0x1234600
    stub.runtime__streamBeginCapture(s1, 0)          # a mode argument is accepted and ignored
    assert stub.runtime__streamIsCapturing(s1) == 1 and stub.runtime__streamIsCapturing(s2) == 0
    g = stub.runtime__streamEndCapture(s1)
    assert g and stub.runtime__streamIsCapturing(s1) == 0
    assert stub.driver__launchKernel(1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0) is None
    assert stub.runtime__eventElapsedTime(1, 2) == 0.0
    stub.set_attributes({16: 132}, {4: 40})
    assert stub.runtime__deviceGetAttribute(16, 0) == 132 and stub.runtime__deviceGetAttribute(17, 0) == 0
    assert stub.driver__funcGetAttribute(4, 1) == 40
    with pytest.raises(TypeError, match="malloc: 1 positional arguments"):
        stub.runtime__malloc()
    with pytest.raises(TypeError, match="free: 1 positional arguments"):
        stub.runtime__free(p, 5)                           # no optional arguments: extra ones refused
    with pytest.raises(TypeError):
        stub.runtime__free("x")                            # converted and checked before the call
    with pytest.raises(MemoryError):
        stub.runtime__malloc(2 ** 62)                      # a failed allocation raises, never returns 0
    assert stub.runtime__eventQuery(1) == 0                # cudaSuccess: Event.done is True
    with pytest.raises(RuntimeError, match="callback 0 not set up"):
        stub.runtime__pointerGetAttributes(p)
    stub.set_callbacks(lambda ptr: ("attributes of", ptr), lambda dev: {"device": dev})
    assert stub.runtime__pointerGetAttributes(4096) == ("attributes of", 4096)
    assert stub.runtime__getDeviceProperties(0) == {"device": 0}
    with pytest.raises(OverflowError):
        stub.runtime__deviceGetAttribute(2 ** 32 + 16, 0)   # never truncated to attribute 16
    with pytest.raises(TypeError, match="two callables"):
        stub.set_callbacks(1, 2)
    calls = stub.counts()
    assert calls[("runtime", "malloc")] == 2 and calls[("runtime", "memcpyAsync")] == 3
    assert calls[("driver", "launchKernel")] == 1 and calls[("driver", "ctxCreate")] == 0


def test_a_capi_without_callback_or_capture_entries_still_builds(tmp_path):
    """-Wall -Werror: helpers no entry of a given CuPy uses must not break the build."""
    src = stub_cuda.generate({"runtime": {"malloc": CAPIS["runtime"]["malloc"]}})
    out = tmp_path / ("_gl_stub_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    stub_cuda._compile(src, out, [f"-I{sysconfig.get_paths()['include']}"])
    assert out.exists() and not list(tmp_path.glob("*.c")) and not list(tmp_path.glob("*.tmp"))


def test_the_capsules_are_callable_c_functions(stub):
    """What CuPy's compiled code does with a capsule: call its pointer with the C signature."""
    ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
    ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    caps = stub.capsules()
    sig = CAPIS["runtime"]["deviceGetAttribute"]
    fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int)(
        ctypes.pythonapi.PyCapsule_GetPointer(caps["runtime", "deviceGetAttribute"], sig.encode()))
    stub.set_attributes({16: 132}, {})
    assert fn(16, 0, 0) == 132
    sig = CAPIS["runtime"]["malloc"]
    alloc = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_size_t, ctypes.c_int)(
        ctypes.pythonapi.PyCapsule_GetPointer(caps["runtime", "malloc"], sig.encode()))
    assert alloc(64, 0) % 256 == 0


def test_the_build_folder_is_this_users_only(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setattr(stub_cuda, "BUILD", shared)
    with pytest.raises(RuntimeError, match="writable by nobody else"):
        stub_cuda._private_dir(shared / "x")
    mine = tmp_path / "mine"
    monkeypatch.setattr(stub_cuda, "BUILD", mine)
    stub_cuda._private_dir(mine / "k")
    assert (mine / "k").is_dir() and (mine.stat().st_mode & 0o077) == 0


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm")
def test_fake_cublas_exports_versioned_symbols(tmp_path):
    lib = tmp_path / "libcublas.so.13"
    vmap = tmp_path / "v.map"
    vmap.write_text("libcublas.so.13 { global: *; };\n")
    stub_cuda._compile(stub_cuda.generate_cublas({"cublasSaxpy_v2"}), lib,
                       ["-Wl,-soname,libcublas.so.13", f"-Wl,--version-script={vmap}"])
    syms = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    for name in ("cublasSaxpy_v2", *stub_cuda.CUBLAS_EXTRA):
        assert f"{name}@@libcublas.so.13" in syms
    c = ctypes.CDLL(str(lib))
    h = ctypes.c_void_p()
    assert c.cublasCreate_v2(ctypes.byref(h)) == 0 and h.value
    names = stub_cuda.cublas_names({"cublasSaxpy_v2"})
    assert c.gl_cublas_count(names.index("cublasCreate_v2")) == 1
    assert c.gl_cublas_count(names.index("cublasSgemm_v2")) == 0
