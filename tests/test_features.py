"""Bidirectional, variable lengths, dropout, peepholes, projection, return_cells, forget_bias,
learnable initial states: float64 gradient checks on the NumPy path and through the host-built CUDA
kernels, an independent reference, and torch parity where torch has the feature."""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.compare import compare_paths
from gpu_lstm.gates import PEEPHOLE_ORDER
from gpu_lstm.gradcheck import lstm_gradient_check

TOL = 1e-6
CONFIGS = {
    "bidirectional": dict(bidirectional=True),
    "projection": dict(proj_size=2),
    "peephole": dict(peephole=True),
    "dropout": dict(dropout=0.4),
    "learned-state": dict(learn_initial_state=True),
    "forget-bias": dict(forget_bias=1.0),
    "bi+proj+peep": dict(bidirectional=True, proj_size=3, peephole=True),
    "bi+dropout+proj": dict(bidirectional=True, dropout=0.3, proj_size=2),
    "zoneout": dict(zoneout_h=0.3, zoneout_c=0.5),
    "zoneout+proj+peep": dict(zoneout_h=0.2, zoneout_c=0.4, proj_size=2, peephole=True),
}
LENGTHS = np.array([5, 2, 4])     # unsorted, one full length


def _devices():
    from gpu_lstm.backend import host_backend
    return ["cpu", "host"] if host_backend.compiler() is not None else ["cpu"]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_gradient_check(device, name, lengths):
    lstm = gl.LSTM(3, 4, 2, dtype="float64", device=device, seed=3, **CONFIGS[name])
    rows = lstm_gradient_check(lstm, T=5, B=3, lengths=lengths)
    assert {n for n, _ in rows} >= set(lstm.params)
    for n, err in rows:
        assert err < TOL, f"{n}: {err:.2e}"


def test_gradient_check_learned_state_is_used_without_hc():
    lstm = gl.LSTM(3, 4, 2, dtype="float64", device="cpu", seed=1, learn_initial_state=True, bidirectional=True)
    rows = dict(lstm_gradient_check(lstm, T=4, B=3, with_state=False))
    assert "l1_reverse.h0" in rows and "l0.c0" in rows
    assert all(err < TOL for err in rows.values())
    assert np.abs(lstm.grads["l0.h0"]).max() > 0     # really used, really trained


@pytest.mark.parametrize("name", ["bidirectional", "bi+proj+peep", "bi+dropout+proj", "zoneout+proj+peep"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_host_kernels_match_numpy_with_options(name, lengths):
    if "host" not in _devices():
        pytest.skip("no host C++ compiler")
    for dtype, tol in (("float64", 1e-12), ("float32", 5e-6)):
        rows = compare_paths(3, 5, 2, T=5, B=3, dtype=dtype, seed=2, device="host", reference="cpu",
                             lengths=lengths, return_cells=True, backward_calls=2, **CONFIGS[name])
        for n, err in rows:
            assert err < tol, f"{n} ({dtype}): {err:.2e}"


def test_independent_reference_with_peepholes_and_projection():
    """Peepholes (rows i, f, o) and projection written out step by step, with no shared code."""
    I, H, P, T, B = 3, 5, 2, 4, 2
    m = gl.LSTM(I, H, 1, dtype="float64", device="cpu", seed=4, peephole=True, proj_size=P)
    assert PEEPHOLE_ORDER == ("i", "f", "o")
    W, R, b, Pw, Whr = (m.params[f"l0.{k}"] for k in ("W", "R", "b", "P", "Whr"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h, c, ys, cs = np.zeros((B, P)), np.zeros((B, H)), [], []
    for t in range(T):
        z = x[t] @ W.T + h @ R.T + b
        i = sig(z[:, :H] + Pw[0] * c)
        f = sig(z[:, H:2 * H] + Pw[1] * c)
        g = np.tanh(z[:, 2 * H:3 * H])
        c = g * i + c * f
        o = sig(z[:, 3 * H:] + Pw[2] * c)
        h = (o * np.tanh(c)) @ Whr.T
        ys.append(h)
        cs.append(c)
    y, (h_n, c_n), cells = m(x, return_cells=True)
    np.testing.assert_allclose(y, np.stack(ys), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cells, np.stack(cs), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c_n[0], c, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_zoneout_against_an_independent_reference(mode):
    """c(t) = d_c c(t-1) + (1 - d_c) c~(t), h(t) = d_h h(t-1) + (1 - d_h) h~(t), with the masks the
    forward drew (training) or their expectation (evaluation)."""
    I, H, T, B = 3, 4, 6, 2
    m = gl.LSTM(I, H, 1, dtype="float64", device="cpu", seed=2, zoneout_h=0.3, zoneout_c=0.6)
    getattr(m, mode)()
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y, (h_n, c_n) = m(x)
    dh_mask, dc_mask = m._saved.dirs[0][0].zoneout
    if mode == "train":   # Philox masks, recomputed where used: materialise them for the reference
        dh_mask, dc_mask = dh_mask.array(), dc_mask.array()
        assert 0 < dc_mask.mean() < 1 and set(np.unique(dh_mask)) == {0.0, 1.0}
    W, R, b = (m.params[f"l0.{k}"] for k in ("W", "R", "b"))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h, c, ys = np.zeros((B, H)), np.zeros((B, H)), []
    for t in range(T):
        z = x[t] @ W.T + h @ R.T + b
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c_new = g * i + c * f
        h_new = o * np.tanh(c_new)
        d_h = dh_mask[t] if mode == "train" else 0.3
        d_c = dc_mask[t] if mode == "train" else 0.6
        c = d_c * c + (1 - d_c) * c_new
        h = d_h * h + (1 - d_h) * h_new
        ys.append(h)
    np.testing.assert_allclose(y, np.stack(ys), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c_n[0], c, rtol=1e-12, atol=1e-14)
    plain = gl.LSTM(I, H, 1, dtype="float64", device="cpu", seed=2)
    assert not np.allclose(plain(x)[0], y)     # zoneout really changes the computation


def test_lengths_semantics():
    m = gl.LSTM(3, 4, 2, dtype="float64", device="cpu", seed=0, bidirectional=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 3))
    lengths = np.array([6, 2, 4])
    y, (h_n, c_n), cells = m(x, lengths=lengths, return_cells=True)
    for b, n in enumerate(lengths):
        assert not y[n:, b].any() and not cells[n:, b].any()     # zero past each length
        yb, (hb, cb) = m(x[:n, b:b + 1])                          # the sample alone, unpadded
        np.testing.assert_allclose(y[:n, b], yb[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n[:, b], hb[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c_n[:, b], cb[:, 0], rtol=1e-12, atol=1e-14)
    # padding contributes nothing: changing padded inputs or their dy changes no gradient
    m(x, lengths=lengths)
    dy = rng.standard_normal(y.shape)
    dx1, _ = m.backward(dy)
    g1 = {k: v.copy() for k, v in m.grads.items()}
    m.zero_grad()
    x2, dy2 = x.copy(), dy.copy()
    x2[2:, 1] = 1e3
    dy2[2:, 1] = -7.0
    m(x2, lengths=lengths)
    dx2, _ = m.backward(dy2)
    for k in g1:
        np.testing.assert_allclose(m.grads[k], g1[k], rtol=1e-12, atol=1e-14)
    assert not dx2[2:, 1].any()
    np.testing.assert_allclose(dx2[:2], dx1[:2], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lengths, exc, match", [
    ([0, 2, 3], ValueError, r"lengths: expected values in \[1, T=4\], got min 0"),
    ([5, 2, 3], ValueError, r"lengths: expected values in \[1, T=4\], got min 2 and max 5"),
    ([2, 3], ValueError, r"lengths: expected one length per sample, shape \(3,\), got shape \(2\)"),
    ([1.0, 2.0, 3.0], TypeError, "lengths: expected integers"),
])
def test_bad_lengths(lengths, exc, match):
    m = gl.LSTM(2, 3, device="cpu", dtype="float64")
    with pytest.raises(exc, match=match):
        m(np.zeros((4, 3, 2)), lengths=np.array(lengths))


def test_dropout_is_seeded_and_off_in_eval():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, 3))
    a = gl.LSTM(3, 8, 3, dropout=0.5, device="cpu", dtype="float64", seed=7)
    b = gl.LSTM(3, 8, 3, dropout=0.5, device="cpu", dtype="float64", seed=7)
    c = gl.LSTM(3, 8, 3, dropout=0.5, device="cpu", dtype="float64", seed=8)
    c.set_params(a.params)
    ya, yb, yc = a(x)[0], b(x)[0], c(x)[0]
    np.testing.assert_array_equal(ya, yb)                      # same seed: bitwise the same
    assert not np.allclose(ya, yc)                             # same weights, other masks
    assert not np.array_equal(a(x)[0], ya)                     # a fresh mask each forward
    mask = a._saved.masks[1].array()
    assert set(np.unique(mask)) <= {0.0, 2.0} and 0.3 < (mask == 0).mean() < 0.7
    plain = gl.LSTM(3, 8, 3, device="cpu", dtype="float64", seed=7)
    np.testing.assert_allclose(a.eval()(x)[0], plain(x)[0], rtol=1e-14)   # eval: no dropout
    assert a.train().training


def test_forget_bias_and_options_validation():
    m = gl.LSTM(3, 4, 2, forget_bias=1.0, device="cpu", seed=0, bidirectional=True)
    for k in ("l0.b", "l1_reverse.b"):
        np.testing.assert_array_equal(m.params[k][4:8], 1.0)
        assert np.abs(m.params[k][:4]).max() <= 0.5
    with pytest.raises(ValueError, match="proj_size: expected less than hidden_size = 4, got 4"):
        gl.LSTM(3, 4, proj_size=4, device="cpu")
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\)"):
        gl.LSTM(3, 4, dropout=1.0, device="cpu")
    with pytest.raises(ValueError, match=r"zoneout_c: expected a probability in \[0, 1\)"):
        gl.LSTM(3, 4, zoneout_c=1.5, device="cpu")
    with pytest.raises(ValueError, match="forget_bias: expected None when bias=False"):
        gl.LSTM(3, 4, bias=False, forget_bias=1.0, device="cpu")
    with pytest.raises(ValueError, match="no peephole"):
        gl.LSTM(3, 4, peephole=True, device="cpu").torch_state_dict()


def test_shapes_and_names_bidirectional_projection():
    m = gl.LSTM(3, 6, 2, bidirectional=True, proj_size=2, device="cpu", seed=0)
    assert m.params["l1.W"].shape == (24, 4) and m.params["l0_reverse.R"].shape == (24, 2)
    assert m.params["l1_reverse.Whr"].shape == (2, 6)
    y, (h, c) = m(np.zeros((5, 3, 3), np.float32))
    assert y.shape == (5, 3, 4) and h.shape == (4, 3, 2) and c.shape == (4, 3, 6)
    with pytest.raises(ValueError, match=r"dy: expected shape \(T, B, 2\*P\) = \(5, 3, 4\)"):
        m.backward(np.zeros((5, 3, 2), np.float32))
    with pytest.raises(ValueError, match=r"hc\[0\] \(h\): expected shape \(num_layers \* 2, B, P\) = \(4, 3, 2\)"):
        m(np.zeros((5, 3, 3), np.float32), (np.zeros((2, 3, 2), np.float32), np.zeros((4, 3, 6), np.float32)))


@pytest.mark.torch
@pytest.mark.parametrize("opts", [dict(bidirectional=True), dict(proj_size=3), dict(bidirectional=True, proj_size=2)],
                         ids=["bi", "proj", "bi+proj"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "packed"])
def test_torch_parity(opts, use_lengths):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    T, B, I, H, L = 6, 4, 3, 5, 2
    ref = torch.nn.LSTM(I, H, L, **opts).double()
    m = gl.LSTM(I, H, L, dtype="float64", device="cpu", **opts)
    m.load_torch_state_dict(ref.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([3, 6, 1, 4]) if use_lengths else None
    xt = torch.tensor(x, requires_grad=True)
    if use_lengths:
        packed, (hnt, cnt) = ref(pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False))
        yt, _ = pad_packed_sequence(packed, total_length=T)
    else:
        yt, (hnt, cnt) = ref(xt)
    y, (hn, cn) = m(x, lengths=lengths)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(hn, hnt.detach().numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(cn, cnt.detach().numpy(), rtol=1e-11, atol=1e-12)
    gy, gh, gc = (rng.standard_normal(a.shape) for a in (y, hn, cn))
    ((yt * torch.tensor(gy)).sum() + (hnt * torch.tensor(gh)).sum() + (cnt * torch.tensor(gc)).sum()).backward()
    dx, _ = m.backward(gy, (gh, gc))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-11)
    tg = {k: v.grad.numpy() for k, v in ref.named_parameters()}
    ours = {}
    for key, (name, _) in m._torch_names().items():
        ours[key] = m.grads[name]
    for key, g in tg.items():
        np.testing.assert_allclose(ours[key], g, rtol=1e-10, atol=1e-11, err_msg=key)


@pytest.mark.torch
def test_torch_autograd_function_wrapper():
    torch = pytest.importorskip("torch")
    from gpu_lstm.interop import torch_lstm_function
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, 2).double()
    m = gl.LSTM(3, 4, 2, dtype="float64", device="cpu")
    m.load_torch_state_dict(ref.state_dict())
    f = torch_lstm_function(m)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    y, h, c = f(x, h0, c0)
    (y.sin().sum() + h.square().sum() + c.sum()).backward()
    grads = [t.grad.clone() for t in (x, h0, c0)]
    for t in (x, h0, c0):
        t.grad = None
    yr, (hr, cr) = ref(x, (h0, c0))
    (yr.sin().sum() + hr.square().sum() + cr.sum()).backward()
    for ours, theirs in zip(grads, (x.grad, h0.grad, c0.grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.grads["l1.R"], ref.weight_hh_l1.grad.numpy(), rtol=1e-10, atol=1e-12)
    m.zero_grad()                        # two forwards, then their backwards in either order
    y1, _, _ = f(x)
    y2, _, _ = f(2 * x)
    y2.sum().backward()
    y1.sum().backward()
    m2 = gl.LSTM(3, 4, 2, dtype="float64", device="cpu")
    m2.load_torch_state_dict(ref.state_dict())
    for xx in (x, 2 * x):
        m2(xx.detach().numpy())
        m2.backward(np.ones((5, 2, 4)))
    np.testing.assert_allclose(m.grads["l0.W"], m2.grads["l0.W"], rtol=1e-13, atol=1e-15)


def test_dropout_with_one_layer_warns_as_torch_does():
    """dropout > 0 with num_layers=1 changed nothing, silently (torch.nn.LSTM warns)."""
    with pytest.warns(UserWarning, match="dropout=0.5 has no effect with num_layers=1"):
        gl.LSTM(3, 4, dropout=0.5, device="cpu")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gl.LSTM(3, 4, 2, dropout=0.5, device="cpu")
        gl.LSTM(3, 4, device="cpu")
