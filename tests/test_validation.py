"""Bad input gets a clear exception naming the argument, the expected and the received value."""

import numpy as np
import pytest

import gpu_lstm as gl


@pytest.fixture
def lstm():
    return gl.LSTM(3, 4, 2, dtype="float32", device="cpu", seed=0)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(input_size=0, hidden_size=4), ValueError, "input_size: expected a positive integer, got 0"),
    (dict(input_size=3, hidden_size=-2), ValueError, "hidden_size: expected a positive integer, got -2"),
    (dict(input_size=3.0, hidden_size=4), TypeError, r"input_size: expected a positive integer, got 3\.0"),
    (dict(input_size=3, hidden_size="4"), TypeError, "hidden_size"),
    (dict(input_size=True, hidden_size=4), TypeError, "input_size"),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError, "num_layers"),
    (dict(input_size=3, hidden_size=4, dtype="complex64"), TypeError, "dtype: expected 'float32', 'float64', 'bfloat16' or 'float16', got 'complex64'"),
    (dict(input_size=3, hidden_size=4, dtype="int32"), TypeError, "dtype"),
    (dict(input_size=3, hidden_size=4, device="tpu"), ValueError, "device: expected one of"),
    (dict(input_size=3, hidden_size=4, bias="yes"), TypeError, "bias: expected True or False"),
    (dict(input_size=3, hidden_size=4, seed=1.5), TypeError, "seed"),
])
def test_constructor_arguments(kwargs, exc, match):
    kwargs.setdefault("device", "cpu")
    with pytest.raises(exc, match=match):
        gl.LSTM(**kwargs)


def test_wrong_rank(lstm):
    with pytest.raises(ValueError, match=r"x: expected a 3-D array \(T, B, I\), got 2-D with shape \(5, 3\)"):
        lstm(np.zeros((5, 3), np.float32))


def test_wrong_feature_size(lstm):
    with pytest.raises(ValueError, match=r"x: expected input size I = 3 .* got shape \(5, 2, 4\)"):
        lstm(np.zeros((5, 2, 4), np.float32))


def test_wrong_dtype(lstm):
    with pytest.raises(TypeError, match="x: expected dtype float32, got float64"):
        lstm(np.zeros((5, 2, 3)))
    with pytest.raises(TypeError, match="x: expected dtype float32, got int64"):
        lstm(np.zeros((5, 2, 3), dtype=np.int64))


def test_mismatched_state_shapes(lstm):
    x = np.zeros((5, 2, 3), np.float32)
    good = np.zeros((2, 2, 4), np.float32)
    with pytest.raises(ValueError, match=r"hc\[0\] \(h\): expected shape \(num_layers, B, H\) = \(2, 2, 4\), got \(1, 2, 4\)"):
        lstm(x, (np.zeros((1, 2, 4), np.float32), good))
    with pytest.raises(ValueError, match=r"hc\[1\] \(c\): expected shape .* = \(2, 2, 4\), got \(2, 3, 4\)"):
        lstm(x, (good, np.zeros((2, 3, 4), np.float32)))
    with pytest.raises(ValueError, match=r"hc\[1\] \(c\): expected a 3-D array"):
        lstm(x, (good, np.zeros((2, 4), np.float32)))
    with pytest.raises(TypeError, match=r"hc: expected a pair \(h, c\)"):
        lstm(x, good)
    with pytest.raises(TypeError, match=r"hc\[0\] \(h\): expected dtype float32, got float64"):
        lstm(x, (np.zeros((2, 2, 4)), good))


def test_backward_before_forward(lstm):
    with pytest.raises(ValueError, match="backward: called before forward"):
        lstm.backward(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(gl.BackwardBeforeForwardError):
        lstm.backward()


def test_dy_of_the_wrong_shape(lstm):
    lstm(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected shape \(T, B, H\) = \(5, 2, 4\), got \(5, 2, 3\)"):
        lstm.backward(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match="dy: expected dtype float32, got float64"):
        lstm.backward(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match=r"dhc\[0\] \(h\)"):
        lstm.backward(None, (np.zeros((2, 1, 4), np.float32), np.zeros((2, 2, 4), np.float32)))


def test_batch_first_messages_name_batch_first_axes():
    m = gl.LSTM(3, 4, batch_first=True, device="cpu", dtype="float64")
    with pytest.raises(ValueError, match=r"\(B, T, I\)"):
        m(np.zeros((2, 3)))
    m(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match=r"dy: expected shape \(B, T, H\) = \(2, 5, 4\)"):
        m.backward(np.zeros((5, 2, 4)))


def test_set_params_checks_names_and_shapes(lstm):
    with pytest.raises(KeyError, match=r"values: expected a subset of the parameter names .* got unknown name"):
        lstm.set_params({"l9.W": np.zeros((16, 3))})
    with pytest.raises(ValueError, match=r"l0.W: expected shape = \(16, 3\), got \(16, 4\)"):
        lstm.set_params({"l0.W": np.zeros((16, 4))})


def test_gpu_request_without_gpu_is_a_clear_error(monkeypatch):
    import gpu_lstm.backend as backend
    monkeypatch.setattr(backend, "gpu_available", lambda: (False, "cupy not importable (test)"))
    with pytest.raises(RuntimeError, match="device='gpu' requested but cupy not importable"):
        gl.LSTM(3, 4, device="gpu")


def test_env_var_forces_auto(monkeypatch):
    monkeypatch.setenv("GPU_LSTM_DEVICE", "cpu")
    assert gl.LSTM(3, 4, device="auto").device == "cpu"
    monkeypatch.setenv("GPU_LSTM_DEVICE", "quantum")
    with pytest.raises(ValueError, match="GPU_LSTM_DEVICE"):
        gl.LSTM(3, 4, device="auto")
