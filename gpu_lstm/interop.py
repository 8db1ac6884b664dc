"""Use a gpu_lstm LSTM inside a PyTorch model: a ``torch.autograd.Function`` around forward/backward.

For a drop-in ``torch.nn.LSTM`` (torch Parameters, torch's return shapes, PackedSequence,
torch.compile, DDP) use :class:`gpu_lstm.torch.LSTM` instead; this lower-level wrapper stays for code
that owns a ``gpu_lstm.LSTM`` and steps it with gpu_lstm's own optimizers.

    import torch, gpu_lstm as gl
    from gpu_lstm.interop import torch_lstm_function

    lstm = gl.LSTM(32, 64, 2, dtype="float32", device="gpu")
    f = torch_lstm_function(lstm)
    x = torch.randn(50, 8, 32, device="cuda", requires_grad=True)
    y, h_n, c_n = f(x)                      # torch tensors; on the GPU no copy either way (DLPack)
    loss = y.square().mean()
    loss.backward()                         # x.grad from gpu_lstm's BPTT
    # lstm.grads now holds dW, dR, db: step them with gpu_lstm.optim, or copy them to torch

How it works: ``forward`` hands the tensors to gpu_lstm (zero-copy views through DLPack on the GPU,
NumPy views on the CPU), runs the LSTM, and wraps the outputs as tensors the same way; ``backward``
runs gpu_lstm's BPTT with the incoming gradients and returns dx, dh0, dc0. The LSTM's own parameters
are not torch Parameters: their gradients accumulate in ``lstm.grads`` (call ``lstm.zero_grad()``).
Each forward detaches its tape (``LSTM.detach_tape``) into the autograd context, so any number of
forwards may precede their backwards; the gradient is taken at the parameters' values at backward
time (do not step the optimizer in between).
"""

from typing import Any, Callable


def _to_gl(t):
    """A torch tensor as a gpu_lstm array, zero-copy where possible. bfloat16 goes through an int16
    view (``tensor.view(torch.int16)``, same memory): CuPy is not relied on to take kDLBfloat through
    DLPack, and a GPU bfloat16 model holds uint16 bit patterns anyway; on the CPU the int16 view
    becomes an ml_dtypes.bfloat16 NumPy view."""
    if t is None:
        return None
    import torch
    t = t.detach()
    bf16 = t.dtype == torch.bfloat16
    if bf16:
        t = t.contiguous().view(torch.int16)
    if t.is_cuda:
        import cupy
        a = cupy.from_dlpack(t.contiguous())
        return a.view(cupy.uint16) if bf16 else a
    a = t.contiguous().numpy()
    if bf16:
        from .backend.lowp import dtype_of
        a = a.view(dtype_of("bfloat16"))
    return a


def _to_torch(a):
    """A gpu_lstm array as a torch tensor without a copy: CuPy uint16 arrays (a GPU bfloat16 model's
    bit patterns) and ml_dtypes.bfloat16 NumPy arrays come back as torch.bfloat16 through an int16
    view; float16 and the rest go through DLPack / NumPy as they are."""
    import torch
    if hasattr(a, "__cuda_array_interface__"):
        if a.dtype.name == "uint16":
            import cupy
            return torch.from_dlpack(a.view(cupy.int16)).view(torch.bfloat16)
        return torch.from_dlpack(a)
    if a.dtype.name == "bfloat16":
        import numpy as np
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def torch_lstm_function(lstm: Any) -> Callable:
    """Wrap an LSTM as a differentiable torch function.

    Parameters
    ----------
    lstm : gpu_lstm.LSTM

    Returns
    -------
    callable
        ``f(x, h0=None, c0=None) -> (y, h_n, c_n)`` on torch tensors, differentiable in x, h0 and c0.
    """
    import torch

    class LSTMFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h0, c0):
            hc = None if h0 is None else (_to_gl(h0), _to_gl(c0))
            y, (h_n, c_n) = lstm(_to_gl(x), hc)
            ctx.tape = lstm.detach_tape()     # this forward's state, freed with the graph
            ctx.has_state = h0 is not None
            return _to_torch(y), _to_torch(h_n), _to_torch(c_n)

        @staticmethod
        def backward(ctx, dy, dh_n, dc_n):
            dx, (dh0, dc0) = lstm.backward(_to_gl(dy), (_to_gl(dh_n), _to_gl(dc_n)), tape=ctx.tape)
            if not ctx.has_state:
                return _to_torch(dx), None, None
            return _to_torch(dx), _to_torch(dh0), _to_torch(dc0)

    want = getattr(torch, lstm.dtype.name)      # float32, float64, bfloat16, float16 share their names

    def f(x, h0=None, c0=None):
        if (h0 is None) != (c0 is None):
            raise ValueError("h0, c0: give both or neither")
        # Checked here in torch's terms: the core's own message would suggest NumPy's .astype.
        for name, t in (("x", x), ("h0", h0), ("c0", c0)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch tensor, got {type(t).__name__}")
            if t.dtype != want:
                raise TypeError(f"{name}: expected {want} (the LSTM's dtype), got {t.dtype}; convert with "
                                f".to({want})")
        return LSTMFunction.apply(x, h0, c0)

    return f
