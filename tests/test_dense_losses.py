"""Gradient checks (float64 central differences) for the prediction layer, the losses and the model."""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm.dense import Dense
from gpu_lstm.gradcheck import numeric_gradient, relative_error
from gpu_lstm.losses import mse_loss, softmax_cross_entropy
from gpu_lstm.model import SequenceModel

TOL = 1e-6


@pytest.mark.parametrize("activation", ["identity", "sigmoid", "tanh", "softmax"])
@pytest.mark.parametrize("lead", [(5,), (3, 4)])   # last step only (B, H) or every step (T, B, H)
def test_dense_gradients(activation, lead):
    rng = np.random.default_rng(0)
    d = Dense(6, 4, activation, dtype="float64", device="cpu", seed=1)
    h = rng.standard_normal(lead + (6,))
    gy = rng.standard_normal(lead + (4,))
    loss = lambda: float((d(h) * gy).sum())  # noqa: E731
    d(h)
    dh = d.backward(gy)
    assert dh.shape == h.shape
    assert relative_error(dh, numeric_gradient(loss, h, 1e-6)) < TOL
    for k in ("W", "b"):
        assert relative_error(d.grads[k], numeric_gradient(loss, d.params[k], 1e-6)) < TOL, k


def test_dense_softmax_rows_sum_to_one_and_errors():
    d = Dense(3, 5, "softmax", dtype="float64", device="cpu", seed=0)
    y = d(np.random.default_rng(0).standard_normal((7, 3)) * 100)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-14)
    with pytest.raises(ValueError, match="activation"):
        Dense(3, 5, "relu6")
    with pytest.raises(ValueError, match="in_features = 3"):
        d(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"dy: expected shape = \(7, 5\)"):
        d.backward(np.zeros((7, 4)))


@pytest.mark.parametrize("masked", [False, True])
def test_mse_gradient(masked):
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    mask = (rng.uniform(size=(4, 3)) > 0.4).astype(float) if masked else None
    loss, grad = mse_loss(pred, target, mask)
    f = lambda: float(mse_loss(pred, target, mask)[0])  # noqa: E731
    assert relative_error(grad, numeric_gradient(f, pred, 1e-6)) < TOL
    expected = ((pred - target) ** 2 * (1 if mask is None else mask)).sum() / (pred.size if mask is None else mask.sum())
    assert abs(float(loss) - expected) < 1e-14
    with pytest.raises(ValueError, match="target: expected shape"):
        mse_loss(pred, target[:2])


def test_softmax_cross_entropy_value_gradient_and_ignore_index():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 4, 6))
    targets = rng.integers(0, 6, (3, 4))
    targets[0, 1] = targets[2, 3] = -100
    loss, grad = softmax_cross_entropy(logits, targets)
    valid = targets != -100
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, np.where(valid, targets, 0)[..., None], -1)[..., 0][valid].mean()
    assert abs(float(loss) - expected) < 1e-13
    f = lambda: float(softmax_cross_entropy(logits, targets)[0])  # noqa: E731
    assert relative_error(grad, numeric_gradient(f, logits, 1e-6)) < TOL
    assert not grad[0, 1].any() and not grad[2, 3].any()


def test_softmax_cross_entropy_is_stable_and_checks_targets():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4]])
    with np.errstate(over="raise", invalid="raise"):
        loss, grad = softmax_cross_entropy(logits, np.array([1, 2]))
    assert np.isfinite(grad).all()
    assert abs(float(loss) - 1e4 / 2) < 1e-9
    with pytest.raises(ValueError, match=r"values must be in \[0, 3\)"):
        softmax_cross_entropy(logits, np.array([3, 0]))
    with pytest.raises(TypeError, match="integer"):
        softmax_cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"targets: expected shape \(2\)"):
        softmax_cross_entropy(logits, np.array([0, 1, 2]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_xent_host_kernel_matches_numpy(dtype):
    from gpu_lstm.backend import host_backend
    from gpu_lstm.backend.numpy_backend import NumpyBackend
    from cpu_kernel_support import unavailable
    if host_backend.compiler() is None:
        unavailable("no host C++ compiler")
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((37, 11)) * np.array([1.0] * 30 + [1e3] * 7)[:, None]).astype(dtype)
    t = rng.integers(0, 11, 37).astype(np.int64)
    t[[0, 5]] = -100
    inv = np.array(1 / 35, dtype=dtype)
    outs = []
    for be in (NumpyBackend(dtype), host_backend.HostKernelBackend(dtype)):
        rows, grad = np.empty(37, dtype), np.empty((37, 11), dtype)
        be.softmax_xent(z, t, -100, inv, rows, grad)
        outs.append((rows, grad))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(outs[1][0], outs[0][0], **tol)
    np.testing.assert_allclose(outs[1][1], outs[0][1], **tol)


@pytest.mark.parametrize("head", ["all", "last"])
@pytest.mark.parametrize("options", [{}, dict(bidirectional=True, proj_size=3)], ids=["plain", "bi+proj"])
@pytest.mark.parametrize("lengths", [None, np.array([5, 3])], ids=["full", "lengths"])
def test_whole_model_gradient_check(head, options, lengths):
    rng = np.random.default_rng(4)
    m = SequenceModel(3, 4, 5, 2, head=head, dtype="float64", device="cpu", seed=0, **options)
    x = rng.standard_normal((5, 2, 3))
    targets = rng.integers(0, 5, (5, 2) if head == "all" else (2,))
    if head == "all" and lengths is not None:
        targets[3:, 1] = -100          # padded targets are ignored by the loss

    def loss():
        return float(softmax_cross_entropy(m(x, lengths=lengths)[0], targets)[0])

    m.zero_grad()
    out, _ = m(x, lengths=lengths)
    m.backward(softmax_cross_entropy(out, targets)[1])
    # h = 1e-4: some gradients here are ~1e-5 (the first layer seen through a last-step head), and
    # with h = 1e-6 the float64 rounding noise of the difference quotient (~eps |L| / h = 1e-10)
    # would already be 1e-5 of them; the O(h^2) truncation error at 1e-4 is far below the tolerance.
    for k, p in m.params.items():
        assert relative_error(m.grads[k], numeric_gradient(loss, p, 1e-4)) < TOL, k
    m.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        m.backward(out)


def test_gradient_flow_diagnostics():
    rng = np.random.default_rng(5)
    lstm = gl.LSTM(3, 4, 2, dtype="float64", device="cpu", seed=0)
    lstm.track_gradient_flow = True
    x = rng.standard_normal((6, 2, 3))
    y, (h, c) = lstm(x)
    dy = np.zeros_like(y)
    dy[-1] = rng.standard_normal(dy[-1].shape)   # error only at the end: flows backwards in time
    dh_n, dc_n = rng.standard_normal(h.shape), rng.standard_normal(c.shape)
    _, (_, dc0) = lstm.backward(dy, (dh_n, dc_n))
    flow = lstm.gradient_flow
    assert set(flow) == {"l0", "l1"} and flow["l1"]["dh"].shape == (6,) and flow["l1"]["dc"].shape == (6,)
    # delta-h(T-1) of the top layer is dy(T-1) + dh_n, eq. (14) with nothing after the last step.
    assert abs(flow["l1"]["dh"][-1] - np.linalg.norm(dy[-1] + dh_n[1])) < 1e-12
    # delta-c(0) from the diagnostics times f(0) is what the fused backward returned as dc0.
    f0 = lstm._saved.dirs[0][0].gates[0][:, gl.gates.gate_slice("f", 4)]
    assert abs(flow["l0"]["dc"][0] - np.linalg.norm(dc0[0] / f0)) < 1e-12


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gradient_flow_of_a_16_bit_model_is_summed_in_float32(dtype):
    """A 16-bit model's delta-h is 16-bit: its per-step norms are formed from float32 squares summed in
    float32, so they equal the float64 norms of the stored delta-h to the float32 sum's error
    ((B H + 2) u32 relative); summed in 16 bits they would be off by about u (2^-8 for bfloat16)."""
    pytest.importorskip("ml_dtypes")
    T, B, H = 7, 16, 64
    lstm = gl.LSTM(5, H, 1, dtype=dtype, device="cpu", seed=0)
    lstm.track_gradient_flow = True
    rng = np.random.default_rng(6)
    y, _ = lstm(rng.standard_normal((T, B, 5)).astype(lstm.dtype))
    lstm.backward(rng.standard_normal(y.shape).astype(lstm.dtype))
    flow = lstm.gradient_flow["l0"]
    dh = lstm._scratch.dh.astype(np.float64)        # the layer's stored delta-h, 16-bit values
    expect = np.sqrt((dh * dh).sum(axis=(1, 2)))
    assert flow["dh"].dtype == np.float32 and flow["dc"].dtype == np.float32
    np.testing.assert_allclose(flow["dh"], expect, rtol=(B * H + 2) * 2.0 ** -24)
    assert np.all(np.isfinite(flow["dc"])) and np.all(flow["dc"] > 0)


@pytest.mark.parametrize("args, error, match", [
    (("x", 4), ValueError, r"name: expected one of 'i', 'f', 'g', 'o', got 'x'"),
    (("f", 0), ValueError, r"hidden_size: expected a positive integer, got 0"),
    (("f", 2.0), TypeError, r"hidden_size: expected a positive integer"),
])
def test_gate_slice_checks_its_arguments(args, error, match):
    with pytest.raises(error, match=match):
        gl.gates.gate_slice(*args)


def test_gate_slice_of_g():
    assert gl.gates.gate_slice("g", 3) == slice(6, 9)


def test_mse_mask_values_are_weights_not_squared_weights():
    """A mask value w weighted its element by w**2 (the masked difference was squared); now the loss
    is sum(w d^2) / sum(w), the same for 0/1 masks, and a uniform mask of any value is no mask."""
    rng = np.random.default_rng(3)
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    plain = float(mse_loss(pred, target)[0])
    for w in (2.0, 0.5):
        assert abs(float(mse_loss(pred, target, np.full((4, 3), w))[0]) - plain) < 1e-14
    weights = rng.uniform(0.1, 3.0, (4, 1))
    loss, grad = mse_loss(pred, target, weights)
    d = pred - target
    assert abs(float(loss) - (weights * d * d).sum() / (weights.sum() * 3)) < 1e-14
    f = lambda: float(mse_loss(pred, target, weights)[0])  # noqa: E731
    assert relative_error(grad, numeric_gradient(f, pred, 1e-6)) < TOL


@pytest.mark.parametrize("mask, match", [
    (-np.ones((2, 3, 1)), r"mask: expected finite weights >= 0 .*got values from -1.0"),
    (np.full((2, 3, 1), np.nan), r"mask: expected finite weights >= 0"),
    (np.ones((2, 3)), r"mask: expected 3 axes like pred \(2, 3, 4\) \(a \(T, B\) padding mask is mask\[\.\.\., None\]\), got "
                                          r"shape \(2, 3\)"),
])
def test_mse_mask_is_checked(mask, match):
    """A (T, B) padding mask on (T, B, O) predictions broadcast from the right, onto (B, O): a wrong
    loss without an error. Negative or NaN weights gave nonsense losses."""
    pred, target = np.ones((2, 3, 4)), np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=match):
        mse_loss(pred, target, mask)
    if mask.ndim == 3:
        mse_loss(pred, target, mask, check_mask=False)      # the check can be turned off (a GPU sync)


def test_mse_integer_predictions_are_refused():
    """int32 predictions gave an int32 gradient, truncated ([[0, 1, 2]] for [[0.67, 1.33, 2]])."""
    p = np.array([[1, 2, 3]], np.int32)
    with pytest.raises(TypeError, match="pred: expected a float array, got dtype int32"):
        mse_loss(p, np.zeros_like(p))


@pytest.mark.parametrize("ignore_index", [None, "x", 1.5, True])
def test_softmax_ignore_index_must_be_an_int(ignore_index):
    """ignore_index=None, 'x' or 1.5 was accepted and ignored nothing."""
    with pytest.raises(TypeError, match="ignore_index: expected an int"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), ignore_index=ignore_index)


@pytest.mark.parametrize("value", ["1.0", True, None, np.zeros(2)])
def test_nats_to_bits_refuses_what_is_not_a_number(value):
    from gpu_lstm.losses import nats_to_bits
    with pytest.raises(TypeError, match="loss_nats: expected a real number or a 0-d array"):
        nats_to_bits(value)


def test_nats_to_bits_takes_numpy_scalars_and_0d_arrays():
    from gpu_lstm.losses import nats_to_bits
    assert abs(nats_to_bits(np.float32(np.log(2))) - 1.0) < 1e-7 and nats_to_bits(np.array(0.0)) == 0.0


@pytest.mark.parametrize("activation", ["identity", "sigmoid", "softmax"])
def test_dense_output_and_input_can_be_changed_in_place_after_forward(activation):
    """forward returned the array it saved for backward and saved the caller's input as a view:
    `pred -= target; model.backward(pred)` (or changing h after forward) gave wrong gradients."""
    rng = np.random.default_rng(4)
    h, dy = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    grads = []
    for in_place in (False, True):
        d = Dense(3, 2, activation, dtype="float64", seed=0)
        x = h.copy()
        y = d(x)
        if in_place:
            y *= 7.0
            x[...] = 0.0
        dh = d.backward(dy)
        grads.append((dh, {k: v.copy() for k, v in d.grads.items()}))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    for k in grads[0][1]:
        np.testing.assert_array_equal(grads[0][1][k], grads[1][1][k])


def test_sequence_model_prediction_can_be_changed_in_place():
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 2))
    out = []
    for in_place in (False, True):
        m = SequenceModel(3, 4, 2, activation="sigmoid", dtype="float64", device="cpu", seed=0)
        pred, _ = m(x)
        if in_place:
            pred -= t
            dpred = pred
        else:
            dpred = pred - t
        m.backward(dpred)
        out.append({k: v.copy() for k, v in m.grads.items()})
    for k in out[0]:
        np.testing.assert_array_equal(out[0][k], out[1][k])


@pytest.mark.parametrize("batch_first", [False, True])
def test_head_last_needs_a_time_step(batch_first):
    """T = 0 with head='last' was an IndexError from inside the model."""
    m = SequenceModel(2, 3, 1, head="last", device="cpu", seed=0, batch_first=batch_first)
    x = np.zeros((2, 0, 2) if batch_first else (0, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"x: expected at least one time step for head='last'"):
        m(x)
    B = 2 if batch_first else 3                      # (B, T, I) or (T, B, I) with one step or more
    assert m(np.zeros((2, 3, 2), np.float32))[0].shape == (B, 1)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dtype="float64", backend="lstm32"), ValueError, "backend: expected one of dtype float64 .*got one of float32"),
    (dict(backend="cpu"), TypeError, "backend: expected another layer's backend"),
    (dict(seed=-1), ValueError, "seed: expected an int >= 0"),
    (dict(seed=1.5), TypeError, "seed: expected an int >= 0"),
    (dict(seed=True), TypeError, "seed: expected an int >= 0"),
])
def test_dense_checks_backend_and_seed(kwargs, error, match):
    """A float64 Dense on a float32 backend had float64 parameters but float32 gradients and outputs;
    backend='cpu' was an AttributeError; bad seeds raised numpy's errors naming nothing."""
    if kwargs.get("backend") == "lstm32":
        kwargs["backend"] = gl.LSTM(2, 3, dtype="float32", device="cpu")._be
    with pytest.raises(error, match=match):
        Dense(3, 2, **kwargs)


def test_sequence_model_state_errors_name_state():
    """state=(h,) was reported as 'hc: expected a pair (h, c) of arrays, got tuple'."""
    m = SequenceModel(2, 3, 1, device="cpu", seed=0)
    x = np.zeros((2, 1, 2), np.float32)
    _, (h, c) = m(x)
    with pytest.raises(TypeError, match="state: expected a pair .*got tuple of length 1"):
        m(x, (h,))
    m(x, (h, c))


def test_softmax_needs_a_class():
    """(B, 0) logits were numpy's "cannot reshape array of size 0"."""
    with pytest.raises(ValueError, match=r"logits: expected at least one class on the last axis, got shape \(2, 0\)"):
        softmax_cross_entropy(np.zeros((2, 0)), np.array([0, 0]))


def test_mse_weights_summing_below_one_are_still_a_weighted_mean():
    """The denominator was max(sum(w), 1): weights summing to 0.5 halved the loss."""
    loss, grad = mse_loss(np.array([[2.0]]), np.array([[0.0]]), np.array([[0.5]]))
    assert float(loss) == 4.0 and float(grad[0, 0]) == 4.0
    loss, grad = mse_loss(np.array([[2.0]]), np.array([[0.0]]), np.array([[0.0]]))
    assert float(loss) == 0.0 and float(grad[0, 0]) == 0.0          # nothing counted: 0, not NaN


def test_nats_to_bits_takes_a_0d_torch_tensor():
    torch = pytest.importorskip("torch")
    from gpu_lstm.losses import nats_to_bits
    assert abs(nats_to_bits(torch.tensor(float(np.log(2)))) - 1.0) < 1e-7
