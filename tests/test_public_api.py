"""The public API: reachable from the top level, typed (py.typed), and documented in numpydoc style
(a Parameters section when there are parameters, Returns when something is returned)."""

import inspect
import os

import pytest

import gpu_lstm as gl
from gpu_lstm import checkpoint, interop, plotting, progress, sampling, tasks, training

MODULES = [checkpoint, training, sampling, tasks, plotting, progress]


def _public():
    seen = {}
    for name in gl.__all__:
        obj = getattr(gl, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            seen[f"gl.{name}"] = obj
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                seen.setdefault(f"{mod.__name__}.{name}", obj)
    seen["gpu_lstm.interop.torch_lstm_function"] = interop.torch_lstm_function
    out = []
    for qual, obj in seen.items():
        if inspect.isclass(obj):
            if issubclass(obj, Exception):
                continue
            out.append((qual, obj, obj.__init__, obj.__doc__))
            for mname, m in vars(obj).items():
                if inspect.isfunction(m) and not mname.startswith("_"):
                    out.append((f"{qual}.{mname}", obj, m, m.__doc__))
        else:
            out.append((qual, None, obj, obj.__doc__))
    return out


PUBLIC = _public()


def test_the_training_pieces_are_reachable_from_the_top_level():
    for name in ("SequenceModel", "Dense", "mse_loss", "softmax_cross_entropy", "SGD", "Adam", "AdamW",
                 "clip_grad_norm", "save_checkpoint", "load_checkpoint", "read_checkpoint", "CheckpointError"):
        assert name in gl.__all__ and hasattr(gl, name), name


def test_package_is_marked_typed():
    assert os.path.exists(os.path.join(os.path.dirname(gl.__file__), "py.typed"))


@pytest.mark.parametrize("qual, cls, fn, doc", PUBLIC, ids=[p[0] for p in PUBLIC])
def test_typed_and_documented(qual, cls, fn, doc):
    sig = inspect.signature(fn)
    params = [p for n, p in sig.parameters.items() if n != "self"]
    missing = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    assert not missing, f"{qual}: parameters without a type hint: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{qual}: no return type hint"
    assert doc and doc.strip(), f"{qual}: no docstring"
    if params:
        assert "Parameters\n" in doc, f"{qual}: no numpydoc Parameters section"
    returns = sig.return_annotation not in (None, "None") and fn.__name__ != "__init__"
    if returns:
        assert "Returns\n" in doc, f"{qual}: no numpydoc Returns section"
