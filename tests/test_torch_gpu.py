"""gpu_lstm.torch.LSTM on CUDA tensors against torch.nn.LSTM (cuDNN) and against itself on the CPU.
Marked `gpu`; skipped without torch with CUDA, cupy, and a CUDA device. Not yet run on a GPU machine.

Run there with `python -m pytest -m gpu tests/test_torch_gpu.py -v`."""

import pytest

torch = pytest.importorskip("torch")
from gpu_lstm.backend import gpu_available  # noqa: E402

_ok, _why = gpu_available()
pytestmark = [pytest.mark.gpu, pytest.mark.torch,
              pytest.mark.skipif(not (_ok and torch.cuda.is_available()),
                                 reason=f"needs torch with CUDA and cupy with a device: {_why}")]
F64 = torch.float64


def _pair(**kw):
    import gpu_lstm.torch as glt
    torch.manual_seed(0)
    ref = torch.nn.LSTM(8, 16, 2, dtype=F64, device="cuda", **kw)
    m = glt.LSTM(8, 16, 2, dtype=F64, device="cuda", **kw)
    m.load_state_dict(ref.state_dict())
    return ref, m


@pytest.mark.parametrize("kw", [{}, {"bidirectional": True, "proj_size": 4}, {"batch_first": True}])
def test_cuda_parity_with_torch(kw):
    ref, m = _pair(**kw)
    x = torch.randn(5, 6, 8, dtype=F64, device="cuda")
    outs = []
    for model in (ref, m):
        xi = x.clone().requires_grad_()
        y, (h, c) = model(xi)
        (y.sin().sum() + h.square().sum() + c.sum()).backward()
        outs.append([y.detach(), h.detach(), c.detach(), xi.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*outs):
        assert a.device.type == "cuda" and b.device.type == "cuda"
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_cuda_matches_cpu_module_and_runs_on_a_side_stream():
    _, m = _pair(bidirectional=True)
    x = torch.randn(7, 3, 8, dtype=F64)
    import copy
    cpu = copy.deepcopy(m).cpu()
    y_cpu = cpu(x)[0]
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = m(x.cuda())[0]
    torch.cuda.synchronize()
    torch.testing.assert_close(y.cpu(), y_cpu.detach(), rtol=1e-10, atol=1e-12)


def test_cuda_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    _, m = _pair()
    x = torch.randn(5, 4, 8, dtype=F64, device="cuda")
    eager = m(x)[0].square().sum()
    compiled = torch.compile(m, fullgraph=True)(x)[0].square().sum()
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tdtype", ["bfloat16", "float16"])
def test_16_bit_tensors_cross_without_a_copy(tdtype):
    """torch bf16/fp16 CUDA tensors to gpu_lstm arrays and back share memory (bfloat16 through an
    int16 view, since CuPy is not relied on to hold bfloat16). Not yet run on a GPU."""
    import cupy
    from gpu_lstm.interop import _to_gl, _to_torch
    t = torch.randn(4, 3, device="cuda").to(getattr(torch, tdtype))
    a = _to_gl(t)
    assert a.data.ptr == t.data_ptr() and a.dtype == (cupy.uint16 if tdtype == "bfloat16" else cupy.float16)
    back = _to_torch(a)
    assert back.dtype == t.dtype and back.data_ptr() == t.data_ptr()
    import gpu_lstm as gl
    m = gl.LSTM(3, 5, device="gpu", dtype=tdtype, seed=0)
    y, _ = m(t.reshape(4, 1, 3))                  # the model's asarray: DLPack, zero-copy
    assert torch.equal(_to_torch(y).cpu().float(), torch.from_numpy(m.to_numpy(y).astype("float32")))
