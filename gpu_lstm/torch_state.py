"""Mapping between gpu_lstm's parameter names and torch.nn.LSTM's state_dict.

This module never imports :mod:`gpu_lstm.lstm` (the LSTM imports it, lazily): it works on any object
with the LSTM's attributes, so the two modules do not depend on each other."""

import numpy as np

from . import _checks as ck
from ._arrays import to_numpy


def torch_names(m):
    """{torch name: (our name, shape)} for the parameters torch.nn.LSTM has."""
    if m.peephole or m.learn_initial_state:
        raise ValueError("torch.nn.LSTM has no peephole weights or learnable initial states; "
                         "this model cannot be mapped to its state_dict")
    names, shapes = {}, m.param_shapes()
    for k in range(m.num_layers):
        for d in range(m.num_directions):
            p, sfx = m._prefix(k, d), "_reverse" if d == 1 else ""
            names[f"weight_ih_l{k}{sfx}"] = (f"{p}.W", shapes[f"{p}.W"])
            names[f"weight_hh_l{k}{sfx}"] = (f"{p}.R", shapes[f"{p}.R"])
            if m.bias:
                names[f"bias_ih_l{k}{sfx}"] = (f"{p}.b", shapes[f"{p}.b"])
                names[f"bias_hh_l{k}{sfx}"] = (f"{p}.b", shapes[f"{p}.b"])
            if m.proj_size:
                names[f"weight_hr_l{k}{sfx}"] = (f"{p}.Whr", shapes[f"{p}.Whr"])
    return names


def load_torch_state_dict(m, state_dict):
    if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
        hint = " (pass module.state_dict(), not the module)" if hasattr(state_dict, "state_dict") else ""
        raise TypeError(f"state_dict: expected a mapping of torch names to tensors or arrays{hint}, got "
                        f"{type(state_dict).__name__}")
    expected = torch_names(m)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected} "
                       f"(expected those of torch.nn.LSTM({m.input_size}, {m.hidden_size}, "
                       f"num_layers={m.num_layers}, bias={m.bias}, "
                       f"bidirectional={m.bidirectional}, proj_size={m.proj_size}))")
    values = {}
    for key, (ours, shape) in expected.items():
        value = state_dict[key]
        if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU; bfloat16 through an int16 view
            from .interop import _to_gl
            value = _to_gl(value.detach().cpu())
        try:
            arr = np.asarray(to_numpy(value))
        except (TypeError, ValueError) as exc:     # a ragged list, an object NumPy cannot read
            raise TypeError(f"state_dict[{key!r}]: expected a tensor or array of real numbers, got "
                            f"{type(value).__name__} ({exc})") from None
        ck.real_array(f"state_dict[{key!r}]", arr)
        arr = arr.astype(np.float64)     # exact from torch's float types; rounded once by set_params
        ck.check_shape(f"state_dict[{key!r}]", arr, shape)
        # the two torch biases only ever appear summed in the gates: b = bias_ih + bias_hh
        values[ours] = values.get(ours, 0.0) + arr if key.startswith("bias_") else arr
    m.set_params(values)


def torch_state_dict(m, as_tensors=None):
    """{torch name: value}: torch CPU tensors when torch imports (``as_tensors=None``), else NumPy
    arrays; ``as_tensors=False`` forces NumPy. bias_ih holds b, bias_hh zeros."""
    if as_tensors is None or as_tensors:
        try:
            import torch
        except ImportError:
            if as_tensors:
                raise
            torch = None
    else:
        torch = None
    if torch is not None:
        from .interop import _to_torch   # bfloat16 through an int16 view (torch.from_numpy has none)
    sd = {}
    for key, (ours, _) in torch_names(m).items():
        value = m._be.to_numpy(m.params[ours]).copy()   # logical dtype: bfloat16, not its GPU bits
        value = np.zeros_like(value) if key.startswith("bias_hh") else value
        sd[key] = _to_torch(value) if torch is not None else value
    return sd
