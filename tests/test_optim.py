"""Each optimizer against a step computed by hand; clipping by global norm and by value."""

import numpy as np
import pytest

from gpu_lstm.optim import SGD, Adam, AdamW, clip_grad_norm, clip_grad_value, global_grad_norm


def _setup():
    p = {"a": np.array([1.0, -2.0]), "b": np.array([[0.5]])}
    g = {"a": np.array([0.1, 0.4]), "b": np.array([[-1.0]])}
    return p, g


def test_sgd_plain_and_momentum_by_hand():
    p, g = _setup()
    SGD(p, g, lr=0.1).step()
    np.testing.assert_allclose(p["a"], [1.0 - 0.01, -2.0 - 0.04], rtol=1e-15)
    p, g = _setup()
    opt = SGD(p, g, lr=0.1, momentum=0.9, weight_decay=0.01)
    opt.step()
    v1 = np.array([0.1, 0.4]) + 0.01 * np.array([1.0, -2.0])
    a1 = np.array([1.0, -2.0]) - 0.1 * v1
    np.testing.assert_allclose(p["a"], a1, rtol=1e-15)
    opt.step()
    v2 = 0.9 * v1 + (np.array([0.1, 0.4]) + 0.01 * a1)
    np.testing.assert_allclose(p["a"], a1 - 0.1 * v2, rtol=1e-15)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_adam_two_steps_by_hand(cls):
    p, g = _setup()
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.1
    opt = cls(p, g, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    x, gr = np.array([1.0, -2.0]), np.array([0.1, 0.4])
    m = v = np.zeros(2)
    for t in (1, 2):
        opt.step()
        geff = gr + wd * x if cls is Adam else gr
        if cls is AdamW:
            x = x * (1 - lr * wd)
        m = b1 * m + (1 - b1) * geff
        v = b2 * v + (1 - b2) * geff ** 2
        x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(p["a"], x, rtol=1e-14)


def test_optimizer_argument_checks():
    p, g = _setup()
    with pytest.raises(ValueError, match="betas"):
        Adam(p, g, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="lr"):
        SGD(p, g, lr=-1)
    with pytest.raises(ValueError, match="keys"):
        SGD(p, {"a": g["a"]})
    with pytest.raises(ValueError, match="shape"):
        SGD(p, {"a": g["a"], "b": np.zeros(3)})


def test_clip_grad_norm():
    _, g = _setup()
    norm = np.sqrt(0.01 + 0.16 + 1.0)
    assert abs(float(global_grad_norm(g)) - norm) < 1e-15
    before = {k: v.copy() for k, v in g.items()}
    returned = clip_grad_norm(g, 0.5)
    assert abs(float(returned) - norm) < 1e-15
    assert abs(float(global_grad_norm(g)) - 0.5) < 1e-5
    np.testing.assert_allclose(g["a"] / before["a"], g["b"].ravel()[0] / before["b"].ravel()[0])  # direction kept
    small = {"a": np.array([0.1])}
    clip_grad_norm(small, 10.0)
    assert small["a"][0] == 0.1


def test_clip_grad_value():
    _, g = _setup()
    clip_grad_value(g, 0.2)
    np.testing.assert_array_equal(g["a"], [0.1, 0.2])
    np.testing.assert_array_equal(g["b"], [[-0.2]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls, kw", [
    ("Adam", dict(lr=3e-3)), ("Adam", dict(lr=1e-2, weight_decay=0.1)), ("AdamW", dict(lr=1e-2, weight_decay=0.05)),
    ("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01))])
def test_fused_optimizer_kernels_equal_the_numpy_optimizer_bitwise(dtype, cls, kw):
    """The host build of cuda/optim_kernels.cuh performs the NumPy expressions' operations in the same
    order and precision (no FMA contraction on the host), so three steps agree bit for bit. On a GPU
    FMA contraction may differ by an ulp per step (tests/test_gpu.py)."""
    from gpu_lstm import optim
    from gpu_lstm.backend import host_backend
    from cpu_kernel_support import unavailable
    if host_backend.compiler() is None:
        unavailable("no host C++ compiler")
    host = host_backend.HostKernelBackend(dtype)
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((7, 5)).astype(dtype), "b": rng.standard_normal(13).astype(dtype)}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    ref = getattr(optim, cls)(params, grads, **kw)
    p2 = {k: v.copy() for k, v in params.items()}
    fused = getattr(optim, cls)(p2, grads, **kw)
    for _ in range(3):
        for k in grads:
            grads[k][...] = rng.standard_normal(grads[k].shape)
        ref.step()
        fused.step_count += 1
        for k in p2:
            st = fused.state[k]
            if cls == "SGD":
                host.sgd_step(p2[k], grads[k], st.get("velocity"),
                              {"lr": fused.lr, "mu": fused.momentum, "wd": fused.weight_decay,
                               "l2": bool(fused.weight_decay)})
            else:
                host.adam_step(p2[k], grads[k], st["m"], st["v"], optim.adam_constants(fused))
    for k in params:
        np.testing.assert_array_equal(p2[k], params[k])
        for s in ref.slots:
            np.testing.assert_array_equal(fused.state[k][s], ref.state[k][s])


@pytest.mark.parametrize("eps, error, match", [
    (-6.0, ValueError, "eps: expected a finite number >= 0, got -6.0"),
    (float("nan"), ValueError, "eps: expected a finite number >= 0, got nan"),
    ("a", TypeError, "eps: expected a real number"),
])
def test_clip_grad_norm_checks_eps(eps, error, match):
    """eps=-6 turned [3, 4] into [-3, -4] (norm + eps = -1): the update went uphill."""
    g = np.array([3.0, 4.0])
    with pytest.raises(error, match=match):
        clip_grad_norm([g], 1.0, eps=eps)
    assert np.array_equal(g, [3.0, 4.0])


@pytest.mark.parametrize("clip", ["norm", "value"])
def test_clipping_refuses_integer_and_read_only_gradients(clip):
    """clip_grad_norm zeroed integer gradients (the scale cast to int); clip_grad_value raised numpy's
    casting error naming nothing."""
    f = (lambda g: clip_grad_norm(g, 1.0)) if clip == "norm" else (lambda g: clip_grad_value(g, 1.5))
    a = np.array([3, 4])
    with pytest.raises(TypeError, match=r"grads\[0\]: expected a float array, got dtype int64"):
        f([a])
    assert np.array_equal(a, [3, 4])
    ro = np.array([3.0, 4.0])
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\['b'\]: expected a writable array"):
        f({"a": np.array([3.0, 4.0]), "b": ro})


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_optimizer_refuses_parameters_it_could_not_update_whole(cls):
    """A read-only or integer parameter made step() fail after the others were updated (and the
    step count and moments advanced): half an update, and numpy's error naming nothing."""
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['b'\]: expected a writable array"):
        cls({"a": np.ones(3), "b": ro}, {"a": np.ones(3), "b": np.ones(3)}, lr=0.1)
    with pytest.raises(TypeError, match=r"params\['b'\]: expected a float array, got dtype int64"):
        cls({"a": np.ones(3), "b": np.ones(3, np.int64)}, {"a": np.ones(3), "b": np.ones(3, np.int64)}, lr=0.1)


def test_adam_state_dict_slots_are_checked():
    """A negative second moment was loaded and the next step made the parameters NaN; torch tensors
    and ragged lists failed with errors naming nothing."""
    torch = pytest.importorskip("torch")
    p, g = {"a": np.ones(3)}, {"a": np.ones(3)}
    opt = Adam(p, g, lr=0.1)
    opt.step()
    sd = opt.state_dict()
    before = {k: v.copy() for k, v in opt.state["a"].items()}
    bad_v = dict(sd, state={"a": dict(sd["state"]["a"], v=-np.ones(3))})
    with pytest.raises(ValueError, match=r"sd\['state'\]\['a'\]\['v'\]: expected values >= 0"):
        opt.load_state_dict(bad_v)
    nan_m = dict(sd, state={"a": dict(sd["state"]["a"], m=np.full(3, np.nan))})
    with pytest.raises(ValueError, match=r"sd\['state'\]\['a'\]\['m'\]: expected finite values"):
        opt.load_state_dict(nan_m)
    ragged = dict(sd, state={"a": dict(sd["state"]["a"], m=[[1.0], [1.0, 2.0]])})
    with pytest.raises(TypeError, match=r"sd\['state'\]\['a'\]\['m'\]: expected an array of real numbers"):
        opt.load_state_dict(ragged)
    assert all(np.array_equal(opt.state["a"][k], v) for k, v in before.items())
    tensors = dict(sd, state={"a": {k: torch.from_numpy(v.copy()) for k, v in sd["state"]["a"].items()}})
    opt.load_state_dict(tensors)
    assert all(np.array_equal(opt.state["a"][k], v) for k, v in before.items())
