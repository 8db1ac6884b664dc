"""torch.nn.LSTM state dicts: round trip without torch, and numerical parity where torch is installed."""

import numpy as np
import pytest

import gpu_lstm as gl


def test_state_dict_round_trip_and_bias_sum():
    a = gl.LSTM(3, 4, 2, dtype="float64", device="cpu", seed=1)
    sd = a.torch_state_dict()
    assert set(sd) == {f"{w}_l{k}" for k in range(2) for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    assert sd["weight_ih_l0"].shape == (16, 3) and sd["weight_ih_l1"].shape == (16, 4)
    sd["bias_hh_l0"] = np.full(16, 0.25)
    b = gl.LSTM(3, 4, 2, dtype="float64", device="cpu", seed=2)
    b.load_torch_state_dict(sd)
    np.testing.assert_array_equal(b.params["l0.b"], a.params["l0.b"] + 0.25)
    np.testing.assert_array_equal(b.params["l1.R"], a.params["l1.R"])


def test_bad_state_dict_leaves_the_model_untouched():
    m = gl.LSTM(3, 4, 1, dtype="float64", device="cpu", seed=1)
    before = {k: v.copy() for k, v in m.params.items()}
    sd = m.torch_state_dict()
    sd["weight_ih_l0"] = np.ones((16, 3))
    sd["weight_hh_l0"] = np.ones((16, 5))     # wrong shape, checked before anything is written
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\]: expected shape = \(16, 4\), got \(16, 5\)"):
        m.load_torch_state_dict(sd)
    del sd["bias_hh_l0"]
    with pytest.raises(KeyError, match="missing keys"):
        m.load_torch_state_dict(sd)
    for k in before:
        np.testing.assert_array_equal(m.params[k], before[k])


@pytest.mark.torch
@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_torch_nn_lstm(batch_first):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 5, num_layers=2, batch_first=batch_first).double()
    m = gl.LSTM(3, 5, 2, dtype="float64", device="cpu", batch_first=batch_first)
    m.load_torch_state_dict(ref.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 3) if batch_first else (6, 2, 3))
    h0, c0 = rng.standard_normal((2, 2, 5)), rng.standard_normal((2, 2, 5))
    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    yt, (hnt, cnt) = ref(xt, (h0t, c0t))
    y, (hn, cn) = m(x, (h0, c0))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(cn, cnt.detach().numpy(), rtol=1e-12, atol=1e-13)
    gy, gh, gc = rng.standard_normal(y.shape), rng.standard_normal(hn.shape), rng.standard_normal(cn.shape)
    ((yt * torch.tensor(gy)).sum() + (hnt * torch.tensor(gh)).sum() + (cnt * torch.tensor(gc)).sum()).backward()
    dx, (dh0, dc0) = m.backward(gy, (gh, gc))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dh0, h0t.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dc0, c0t.grad.numpy(), rtol=1e-11, atol=1e-12)
    for k in range(2):
        np.testing.assert_allclose(m.grads[f"l{k}.W"], ref.state_dict(keep_vars=True)[f"weight_ih_l{k}"].grad.numpy(), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(m.grads[f"l{k}.R"], getattr(ref, f"weight_hh_l{k}").grad.numpy(), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(m.grads[f"l{k}.b"], getattr(ref, f"bias_ih_l{k}").grad.numpy(), rtol=1e-11, atol=1e-12)


@pytest.mark.torch
def test_torch_state_dict_gives_tensors_that_torch_loads():
    torch = pytest.importorskip("torch")
    m = gl.LSTM(3, 5, 2, dtype="float64", device="cpu", seed=1, bidirectional=True, proj_size=2)
    sd = m.torch_state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    ref = torch.nn.LSTM(3, 5, 2, bidirectional=True, proj_size=2).double()
    ref.load_state_dict(sd, strict=True)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    np.testing.assert_allclose(ref(torch.from_numpy(x))[0].detach().numpy(), m(x)[0], rtol=1e-12, atol=1e-13)
    assert all(isinstance(v, np.ndarray) for v in m.torch_state_dict(as_tensors=False).values())


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_16_bit_tensors_cross_to_and_from_torch_without_a_copy(name):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    from gpu_lstm.interop import _to_gl, _to_torch
    t = torch.randn(4, 3).to(getattr(torch, name))
    a = _to_gl(t)
    assert a.dtype.name == name and a.ctypes.data == t.data_ptr()   # bfloat16: an ml_dtypes view
    back = _to_torch(a)
    assert back.dtype == t.dtype and back.data_ptr() == t.data_ptr() and torch.equal(back, t)


def test_load_torch_state_dict_names_a_module_or_a_ragged_value():
    """Passing the module was "TypeError: 'LSTM' object is not iterable"; a ragged list value numpy's
    "setting an array element with a sequence", naming no key."""
    torch = pytest.importorskip("torch")
    m = gl.LSTM(2, 3, device="cpu", seed=0)
    t = torch.nn.LSTM(2, 3)
    before = {k: v.copy() for k, v in m.params.items()}
    with pytest.raises(TypeError, match=r"state_dict: expected a mapping .*\(pass module\.state_dict\(\), not the module\)"):
        m.load_torch_state_dict(t)
    with pytest.raises(TypeError, match="state_dict: expected a mapping .*got NoneType"):
        m.load_torch_state_dict(None)
    sd = dict(t.state_dict(), weight_ih_l0=[[1.0], [1.0, 2.0]])
    with pytest.raises(TypeError, match=r"state_dict\['weight_ih_l0'\]: expected a tensor or array"):
        m.load_torch_state_dict(sd)
    assert all(np.array_equal(m.params[k], v) for k, v in before.items())


def test_torch_lstm_function_checks_in_torch_terms():
    """A float32 tensor on a float64 model got a hint to call .astype (NumPy's); a NumPy array was an
    AttributeError ('detach')."""
    torch = pytest.importorskip("torch")
    from gpu_lstm.interop import torch_lstm_function
    f = torch_lstm_function(gl.LSTM(3, 4, dtype="float64", device="cpu", seed=0))
    with pytest.raises(TypeError, match=r"x: expected torch\.float64 \(the LSTM's dtype\), got torch\.float32; "
                                        r"convert with \.to\(torch\.float64\)"):
        f(torch.zeros(5, 2, 3))
    with pytest.raises(TypeError, match="x: expected a torch tensor, got ndarray"):
        f(np.zeros((5, 2, 3)))
    y, h, c = f(torch.zeros(5, 2, 3, dtype=torch.float64))
    assert y.shape == (5, 2, 4)
