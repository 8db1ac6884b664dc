"""gpu_lstm.torch.LSTM against torch.nn.LSTM (float64, CPU): outputs, states, every gradient, packed
sequences, a training loop, gradcheck, several forwards in flight, torch.compile, module behaviour."""

import copy
import io
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import gpu_lstm.torch as glt  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

pytestmark = pytest.mark.torch
F64 = torch.float64


def _pair(seed=0, I=3, H=5, L=2, **kw):
    """torch.nn.LSTM and gpu_lstm.torch.LSTM with the same weights (same init from the same seed)."""
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(I, H, L, dtype=F64, **kw)
    torch.manual_seed(seed)
    m = glt.LSTM(I, H, L, dtype=F64, **kw)
    for (n, p), (k, q) in zip(ref.state_dict().items(), m.state_dict().items()):
        assert n == k and torch.equal(p, q), n
    return ref, m


def _close(a, b, tol=1e-12, what=""):
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = max(1.0, b.abs().max().item() if b.numel() else 0.0)
    assert err <= tol * scale, f"{what}: {err:.3e}"


def _run(model, x, hx, weights):
    """Outputs, and gradients of a random linear loss over every output."""
    for p in model.parameters():
        p.grad = None
    packed = hasattr(x, "batch_sizes")
    for t in ([] if packed else [x]) + list(hx or ()):
        t.grad = None
    y, (h, c) = model(x, hx)
    data = y.data if hasattr(y, "batch_sizes") else y
    loss = (data * weights[0][:data.numel()].view_as(data)).sum() + (h * weights[1][:h.numel()].view_as(h)).sum() \
        + (c * weights[2][:c.numel()].view_as(c)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    if not packed:
        grads["input"] = x.grad.clone()
    if hx is not None:
        grads["h0"], grads["c0"] = hx[0].grad.clone(), hx[1].grad.clone()
    return data.detach(), h.detach(), c.detach(), grads


CASES = {
    "1 layer": dict(L=1),
    "2 layers": dict(L=2),
    "bidirectional": dict(L=2, bidirectional=True),
    "proj_size": dict(L=2, proj_size=3),
    "bi+proj": dict(L=2, bidirectional=True, proj_size=2),
    "no bias": dict(L=2, bias=False),
    "batch_first": dict(L=2, batch_first=True, bidirectional=True),
}


@pytest.mark.parametrize("with_hx", [False, True], ids=["no-hx", "hx"])
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_torch(case, with_hx):
    kw = dict(CASES[case])
    ref, m = _pair(**kw)
    L = kw.pop("L")
    D = 2 if kw.get("bidirectional") else 1
    P = kw.get("proj_size") or 5
    T, B = 6, 4
    g = torch.Generator().manual_seed(1)
    shape = (B, T, 3) if kw.get("batch_first") else (T, B, 3)
    x = torch.randn(shape, dtype=F64, generator=g, requires_grad=True)
    hx = None
    if with_hx:
        hx = (torch.randn(L * D, B, P, dtype=F64, generator=g).requires_grad_(),
              torch.randn(L * D, B, 5, dtype=F64, generator=g).requires_grad_())
    w = [torch.randn(1000, dtype=F64, generator=g) for _ in range(3)]
    a, b = _run(ref, x, hx, w), _run(m, x, hx, w)
    for name, u, v in zip(("output", "h_n", "c_n"), a[:3], b[:3]):
        assert u.shape == v.shape, name
        _close(v, u, 1e-13, name)
    assert set(a[3]) == set(b[3])
    for name in a[3]:
        _close(b[3][name], a[3][name], 1e-12, name)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequence_parity(batch_first, enforce_sorted):
    ref, m = _pair(L=2, bidirectional=True, batch_first=batch_first)
    lengths = torch.tensor([5, 2, 6, 3]) if not enforce_sorted else torch.tensor([6, 5, 3, 2])
    g = torch.Generator().manual_seed(2)
    padded = torch.randn((4, 6, 3) if batch_first else (6, 4, 3), dtype=F64, generator=g)
    hx = (torch.randn(4, 4, 5, dtype=F64, generator=g).requires_grad_(),
          torch.randn(4, 4, 5, dtype=F64, generator=g).requires_grad_())
    w = [torch.randn(1000, dtype=F64, generator=g) for _ in range(3)]
    outs = []
    for model in (ref, m):
        x = padded.clone().requires_grad_()
        for t in hx:
            t.grad = None
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
        y, _ = model(packed, hx)
        assert torch.equal(y.batch_sizes, packed.batch_sizes)
        for attr in ("sorted_indices", "unsorted_indices"):
            u, v = getattr(y, attr), getattr(packed, attr)
            assert (u is None and v is None) or torch.equal(u, v), attr
        res = _run(model, packed, hx, w)
        res[3]["input"] = x.grad.clone()
        outs.append(res)
    for name, u, v in zip(("output", "h_n", "c_n"), outs[0][:3], outs[1][:3]):
        _close(v, u, 1e-13, name)
    for name in outs[0][3]:
        _close(outs[1][3][name], outs[0][3][name], 1e-12, name)


def test_unbatched_input_matches_torch():
    ref, m = _pair(L=2)
    x = torch.randn(5, 3, dtype=F64)
    hx = (torch.randn(2, 5, dtype=F64), torch.randn(2, 5, dtype=F64))
    for args in ((x,), (x, hx)):
        (y1, (h1, c1)), (y2, (h2, c2)) = ref(*args), m(*args)
        assert y1.shape == y2.shape and h1.shape == h2.shape
        _close(y2.detach(), y1.detach(), 1e-13)
        _close(c2.detach(), c1.detach(), 1e-13)


def test_adam_training_loop_gives_torch_losses():
    ref, m = _pair(L=2, batch_first=True)
    heads = []
    for _ in range(2):
        torch.manual_seed(5)
        heads.append(torch.nn.Linear(5, 1, dtype=F64))
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(8, 7, 3, dtype=F64, generator=g), torch.randn(8, 1, dtype=F64, generator=g))
            for _ in range(4)]
    losses = []
    for model, head in zip((ref, m), heads):
        opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=1e-2)
        run = []
        for _ in range(3):
            for x, target in data:
                opt.zero_grad()
                y, _ = model(x)
                loss = torch.nn.functional.mse_loss(head(y[:, -1]), target)
                loss.backward()
                opt.step()
                run.append(loss.item())
        losses.append(run)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-11)
    assert losses[0][-1] < losses[0][0]


@pytest.mark.parametrize("kw", [dict(), dict(bidirectional=True, proj_size=2),
                                dict(peephole=True, learn_initial_state=True, forget_bias=1.0)],
                         ids=["plain", "bi+proj", "peephole+learned-state"])
def test_gradcheck(kw):
    torch.manual_seed(0)
    m = glt.LSTM(2, 3, 2, dtype=F64, **kw)
    D, P = (2 if kw.get("bidirectional") else 1), kw.get("proj_size") or 3
    x = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
    hx = None if kw.get("learn_initial_state") else (torch.randn(2 * D, 2, P, dtype=F64, requires_grad=True),
                                                     torch.randn(2 * D, 2, 3, dtype=F64, requires_grad=True))
    names = [n for n, _ in m.named_parameters()]

    def f(x, *params_and_state):
        params = dict(zip(names, params_and_state[:len(names)]))
        state = params_and_state[len(names):] or None
        y, (h, c) = torch.func.functional_call(m, params, (x, state))
        return y, h, c

    inputs = (x, *[p.detach().clone().requires_grad_() for p in m.parameters()], *(hx or ()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_two_forwards_then_one_backward():
    ref, m = _pair(L=2, bidirectional=True)
    g = torch.Generator().manual_seed(4)
    xa, xb = torch.randn(5, 3, 3, dtype=F64, generator=g), torch.randn(4, 2, 3, dtype=F64, generator=g)
    grads = []
    for model in (ref, m):
        ya, (ha, _) = model(xa)
        yb, (hb, _) = model(xb)       # the first forward's state must survive this one
        (ya.square().sum() + 2 * yb.sum() + ha.sum() * hb.sum()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        _close(grads[1][n], grads[0][n], 1e-12, n)


def test_retain_graph_backward_twice_adds_up():
    _, m = _pair(L=1)
    x = torch.randn(4, 2, 3, dtype=F64)
    y, _ = m(x)
    y.sum().backward(retain_graph=True)
    once = m.weight_hh_l0.grad.clone()
    y.sum().backward()
    _close(m.weight_hh_l0.grad, 2 * once, 1e-14)


def test_optimizer_step_between_forward_and_backward_is_rejected():
    _, m = _pair(L=1)
    y, _ = m(torch.randn(4, 2, 3, dtype=F64))
    with torch.no_grad():
        m.weight_ih_l0.add_(1.0)       # in place: the saved weights changed, as for any torch op
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_tapes_are_freed_with_the_graph():
    from gpu_lstm.torch import _ops
    _, m = _pair(L=1)
    before = len(_ops._TAPES)
    y, _ = m(torch.randn(4, 2, 3, dtype=F64))
    assert len(_ops._TAPES) == before + 1
    y.sum().backward()
    del y
    assert len(_ops._TAPES) == before
    with torch.no_grad():
        m(torch.randn(4, 2, 3, dtype=F64))
    out = m(torch.randn(4, 2, 3, dtype=F64))
    assert len(_ops._TAPES) == before + 1
    del out                             # graph dropped without a backward
    assert len(_ops._TAPES) == before


def test_state_dict_loads_both_ways_strictly():
    torch.manual_seed(1)
    ref = torch.nn.LSTM(3, 5, 2, bidirectional=True, proj_size=2, dtype=F64)
    m = glt.LSTM(3, 5, 2, bidirectional=True, proj_size=2, dtype=F64)
    m.load_state_dict(ref.state_dict(), strict=True)
    ref2 = torch.nn.LSTM(3, 5, 2, bidirectional=True, proj_size=2, dtype=F64)
    ref2.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(4, 2, 3, dtype=F64)
    _close(m(x)[0].detach(), ref(x)[0].detach(), 1e-13)
    _close(ref2(x)[0].detach(), ref(x)[0].detach(), 0)


def test_dropout_train_eval_and_seed():
    kw = dict(dropout=0.5, seed=3)
    a, b = glt.LSTM(3, 5, 3, dtype=F64, **kw), glt.LSTM(3, 5, 3, dtype=F64, **kw)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 2, 3, dtype=F64)
    torch.manual_seed(11)
    ya = a(x)[0]
    torch.manual_seed(11)
    yb = b(x)[0]
    _close(ya.detach(), yb.detach(), 0)                  # same seed and torch generator: same masks
    assert (a(x)[0] - ya).abs().max() > 0                # next masks differ
    a.eval()
    ref = torch.nn.LSTM(3, 5, 3, dtype=F64, dropout=0.5).eval()
    sd = a.state_dict()
    assert set(sd) == set(ref.state_dict())              # torch.nn.LSTM's keys only
    ref.load_state_dict(sd)
    a.load_state_dict(ref.state_dict(), strict=True)     # and torch's state_dict loads strictly
    _close(a(x)[0].detach(), ref(x)[0].detach(), 1e-13)  # eval: no dropout, torch's numbers


def test_to_dtype_zero_grad_hooks_pickle_and_torch_save():
    torch.manual_seed(0)
    m = glt.LSTM(3, 4, 2, batch_first=True)
    assert m.weight_ih_l0.dtype == torch.float32
    x = torch.randn(2, 5, 3)
    y32 = m(x)[0]
    m.to(torch.float64)
    assert all(p.dtype == F64 for p in m.parameters())
    y64 = m(x.double())[0]
    assert y64.dtype == F64 and (y64.float() - y32).abs().max() < 1e-5
    seen = []
    m.register_forward_hook(lambda mod, args, out: seen.append(out[0].shape))
    m.weight_hh_l1.register_hook(lambda g: seen.append("grad"))
    m(x.double())[0].sum().backward()
    assert seen == [(2, 5, 4), "grad"]
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    m = glt.LSTM(3, 4, 2, batch_first=True, dtype=F64)      # hooks above are lambdas: not picklable
    y64 = m(x.double())[0]
    m2 = pickle.loads(pickle.dumps(m))
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m3 = torch.load(buf, weights_only=False)
    m4 = copy.deepcopy(m)
    for other in (m2, m3, m4):
        assert other._uid != m._uid
        _close(other(x.double())[0].detach(), y64.detach(), 0)


def test_no_grad_and_inference_mode():
    _, m = _pair(L=1)
    x = torch.randn(4, 2, 3, dtype=F64)
    with torch.no_grad():
        y1 = m(x)[0]
    with torch.inference_mode():
        y2 = m(x)[0]
    assert not y1.requires_grad
    _close(y2, y1, 0)


def test_bad_input_names_the_argument():
    m = glt.LSTM(3, 4, 2)
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32.*got torch.float64"):
        m(torch.zeros(2, 1, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"input: expected a 2-D \(unbatched\) or 3-D Tensor, got 4-D"):
        m(torch.zeros(2, 1, 3, 1))
    with pytest.raises(ValueError, match=r"input: expected 3 features on the last axis"):
        m(torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match=r"hx\[1\] \(c_0\): expected shape \(2, 1, 4\), got \(2, 1, 3\)"):
        m(torch.zeros(2, 1, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 1, 3)))
    with pytest.raises(TypeError, match="hx: expected a tuple"):
        m(torch.zeros(2, 1, 3), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[1, T=2\]"):
        m(torch.zeros(2, 2, 3), lengths=[1, 3])
    with pytest.raises(ValueError, match="proj_size: expected less than hidden_size"):
        glt.LSTM(3, 4, proj_size=4)
    with pytest.raises(TypeError, match="input: gpu_lstm computes in float32, float64, bfloat16 or float16, "
                                        "got torch.complex64"):
        glt.LSTM(3, 4, dtype=torch.complex64)(torch.zeros(2, 1, 3, dtype=torch.complex64))


@pytest.mark.parametrize("call, exc, message", [
    (lambda m, x: m(x, lengths=torch.tensor([1.9, 2.0])), TypeError,
     r"lengths: expected integers, got dtype torch.float32 \(values \[1.899.*, 2.0\]\)"),
    (lambda m, x: m(x, lengths=[2.0, 1.0]), TypeError, r"lengths: expected integers, got dtype torch.float32"),
    (lambda m, x: m(x, lengths="abc"), TypeError, r"lengths: expected a 1-D sequence of integers .*got 'abc'"),
    (lambda m, x: m(x, lengths=2), TypeError, r"lengths: expected a 1-D sequence of integers .*got 2 \(int\)"),
    (lambda m, x: m(x, (torch.zeros(2, 2, 4),)), ValueError,
     r"hx: expected a tuple \(h_0, c_0\) of 2 Tensors, got a tuple of length 1"),
    (lambda m, x: m(x, (torch.zeros(2, 2, 4), [1.0])), TypeError, r"hx\[1\] \(c_0\): expected a Tensor, got list"),
    (lambda m, x: glt.LSTM(3, 4, seed=-1), ValueError, r"seed: expected an int >= 0 or None, got -1"),
    (lambda m, x: glt.LSTM(3, 4, 2, dropout=0.5, seed=1.5), TypeError, r"seed: expected an int >= 0 or None, got 1.5"),
])
def test_bad_lengths_hx_and_seed_name_the_argument(call, exc, message):
    """lengths as floats were truncated silently; hx=(h0,) said 'expected a tuple, got tuple'; seed=-1
    failed only at the first forward, inside the op."""
    m = glt.LSTM(3, 4, 2)
    with pytest.raises(exc, match=message):
        call(m, torch.zeros(2, 2, 3))


def test_masks_follow_torch_generator_and_checkpoint_recomputes_them():
    """Each training forward draws its masks' Philox call number from torch's generator: the same
    torch.manual_seed gives the same masks, and torch.utils.checkpoint (which restores the generator
    before recomputing the forward) gets the plain run's gradients instead of new masks'."""
    from torch.utils.checkpoint import checkpoint
    kw = dict(dropout=0.5, zoneout_h=0.2, zoneout_c=0.1, seed=7, dtype=F64)
    x = torch.randn(8, 2, 3, dtype=F64)
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        m = glt.LSTM(3, 5, 2, **kw)
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)
        y = checkpoint(lambda a: m(a)[0], xi, use_reentrant=False) if use_checkpoint else m(xi)[0]
        (y ** 2).sum().backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for g_plain, g_ckpt in zip(*grads):
        _close(g_ckpt, g_plain, 0)
    torch.manual_seed(0)
    m = glt.LSTM(3, 5, 2, **kw)
    torch.manual_seed(6)
    assert (m(x)[0] - m(x)[0]).abs().max() > 0           # a new draw each forward
    meta = glt.LSTM(3, 5, 2, dropout=0.5, device="meta")      # no core on meta tensors: shapes only
    assert meta(torch.randn(2, 1, 3, device="meta"))[0].shape == (2, 1, 5)


def test_lengths_keyword_matches_packed_sequence():
    _, m = _pair(L=2, bidirectional=True)
    x = torch.randn(6, 3, 3, dtype=F64)
    lengths = torch.tensor([4, 6, 2])
    y, (h, c) = m(x, lengths=lengths)
    yp, (hp, cp) = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    from torch.nn.utils.rnn import pad_packed_sequence
    _close(y.detach(), pad_packed_sequence(yp)[0].detach(), 0)
    _close(h.detach(), hp.detach(), 0)


def _eager_then_compiled(m, x):
    """One loss and backward through `m` eagerly, then through torch.compile(fullgraph) of it.

    The loss sums in x's dtype widened to at least float32, so a bfloat16 model is
    compared on the same float32 sum both ways. Returns (eager loss, eager x.grad,
    eager parameter grads by name, compiled loss); the compiled grads are left in
    x.grad and the parameters' .grad.
    """
    acc = torch.promote_types(x.dtype, torch.float32)

    def step(model):
        y, (h, c) = model(x)
        return y.to(acc).square().sum() + h.to(acc).sum() + c.to(acc).sum()

    eager = step(m)
    eager.backward()
    g_eager = {n: p.grad.clone() for n, p in m.named_parameters()}
    gx = x.grad.clone()
    m.zero_grad()
    x.grad = None
    out = step(torch.compile(m, fullgraph=True, backend="aot_eager"))
    out.backward()
    return eager, gx, g_eager, out


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    _, m = _pair(L=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 5, 3, dtype=F64, requires_grad=True)
    eager, gx, g_eager, out = _eager_then_compiled(m, x)
    _close(out.detach(), eager.detach(), 0)
    _close(x.grad, gx, 0)
    for n, p in m.named_parameters():
        _close(p.grad, g_eager[n], 0, n)


def test_custom_op_registration():
    from gpu_lstm.torch import _ops
    _, m = _pair(L=1)
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    for mask_call in (None, torch.tensor([3], dtype=torch.int64)):
        args = (x, None, None, list(m.parameters()), None, mask_call, m._uid, m._config, True, True)
        torch.library.opcheck(_ops.lstm, args, test_utils=("test_schema", "test_autograd_registration",
                                                            "test_faketensor"))


@pytest.mark.inductor
def test_compile_inductor_fullgraph_training_step():
    """The default backend (Inductor, C++ codegen on the CPU) around the LSTM op: ~20 s."""
    import shutil
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("Inductor on the CPU needs a C++ compiler")
    torch._dynamo.reset()
    _, m = _pair(L=2, batch_first=True)
    torch.manual_seed(5)
    head = torch.nn.Linear(5, 1, dtype=F64)
    x = torch.randn(3, 5, 3, dtype=F64)

    def step(x):
        y, (h, c) = m(x)
        return torch.tanh(head(y)).square().sum() + h.sum()

    eager = step(x)
    eager.backward()
    g_eager = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    out = torch.compile(step, fullgraph=True)(x)
    out.backward()
    _close(out.detach(), eager.detach(), 1e-13)
    for n, p in m.named_parameters():
        _close(p.grad, g_eager[n], 1e-13, n)


@pytest.mark.parametrize("kw", [dict(L=2, bidirectional=True), dict(L=2, proj_size=3, batch_first=True),
                                dict(L=1, bias=False)])
def test_steady_state_calls_rebuild_no_plan(monkeypatch, kw):
    """The core's plans are bound to memory, not to Python objects: the fresh views of the Parameters,
    the bias sum and the gradient buffers are the same memory every call, so after the first call no
    plan is rebuilt (on a GPU: no graph recaptured), through optimizer steps, and results stay equal
    to torch.nn.LSTM."""
    from gpu_lstm import plan
    counts = {"forward": 0, "backward": 0}
    for name, what in (("rebind", "forward"), ("_build_backward", "backward")):
        orig = getattr(plan.Plan, name)

        def counted(self, *a, _orig=orig, _what=what, **k):
            counts[_what] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(plan.Plan, name, counted)
    kw = dict(kw)
    ref, m = _pair(**kw)
    kw.pop("L")
    T, B = 5, 3
    g = torch.Generator().manual_seed(7)
    opts = [torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) for model in (ref, m)]
    for step in range(6):
        x = torch.randn((B, T, 3) if kw.get("batch_first") else (T, B, 3), dtype=F64, generator=g,
                        requires_grad=True)
        w = [torch.randn(1000, dtype=F64, generator=g) for _ in range(3)]
        a, b = _run(ref, x, None, w), _run(m, x, None, w)
        for u, v in zip(a[:3], b[:3]):
            _close(v, u, 1e-12)
        for name in a[3]:
            _close(b[3][name], a[3][name], 1e-11, name)
        for opt in opts:
            opt.step()
        if step == 0:
            assert counts == {"forward": 1, "backward": 1}   # the first call builds, once
    assert counts == {"forward": 1, "backward": 1}
    core = next(iter(m._engine.cores.values()))
    assert core._saved is None and core._algo == "plan"


# ---- bfloat16 / float16 ------------------------------------------------------------------------------
LOW = {"bfloat16": torch.bfloat16, "float16": torch.float16}
U32 = 2.0 ** -24


def _low_pair(name, I, H, L, seed=0, **kw):
    """A 16-bit gpu_lstm.torch.LSTM and a float64 torch.nn.LSTM with the same (rounded) weights and the
    same effective bias: the module's core holds ONE 16-bit bias, fl(bias_ih + bias_hh), so the
    reference gets bias_hh = fl(bias_ih + bias_hh) - bias_ih (exact in float64) and only the rounding
    inside the computation is compared, as in docs/precision.md "Expected error against float64"."""
    pytest.importorskip("ml_dtypes")
    torch.manual_seed(seed)
    m = glt.LSTM(I, H, L, dtype=LOW[name], **kw)
    ref = torch.nn.LSTM(I, H, L, dtype=F64, **kw)
    sd = {k: v.to(F64) for k, v in m.state_dict().items()}
    for k in list(sd):
        if k.startswith("bias_hh"):
            b_ih = getattr(m, k.replace("bias_hh", "bias_ih")).detach()
            summed = (b_ih + getattr(m, k).detach()).to(F64)     # torch's 16-bit add: one rounding
            sd[k] = summed - b_ih.to(F64)
    ref.load_state_dict(sd, strict=True)
    return m, ref


def _relf(a, b):
    a, b = a.detach().to(F64), b.detach().to(F64)
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300)).item()


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_16_bit_module_against_float64_torch(name):
    """Outputs, states and every gradient of a bfloat16/float16 module against torch.nn.LSTM in float64
    with the same rounded weights, within docs/precision.md's first-order bounds: forward 3 u + K u32,
    gradients 5 u + K u32 (u = 2^-8 bfloat16, 2^-11 float16; K = T B, the longest float32 reduction,
    the weight gradients'). The parameter gradients, float32 in the core, are rounded once more to the
    Parameters' dtype on return: one more u for them (6 u + K u32); dx, dh0, dc0 are already 16-bit
    outputs of the core (within 5 u + K u32)."""
    from gpu_lstm.backend import lowp
    I, H, L, T, B = 16, 64, 2, 30, 8
    m, ref = _low_pair(name, I, H, L, bidirectional=True)
    dt, u, K = LOW[name], lowp.unit_roundoff(name), T * B
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g).to(dt)
    hx = (torch.randn(2 * L, B, H, generator=g).to(dt), torch.randn(2 * L, B, H, generator=g).to(dt))
    w = [torch.randn(T, B, 2 * H, generator=g).to(dt), torch.randn(2 * L, B, H, generator=g).to(dt),
         torch.randn(2 * L, B, H, generator=g).to(dt)]
    outs = []
    for model, cast in ((m, lambda t: t), (ref, lambda t: t.to(F64))):
        xi = cast(x).requires_grad_()
        hi = tuple(cast(t).requires_grad_() for t in hx)
        y, (h, c) = model(xi, hi)
        assert y.dtype == h.dtype == c.dtype == xi.dtype
        (y * cast(w[0])).sum().backward(inputs=[xi, *hi, *model.parameters()], retain_graph=True)
        (h * cast(w[1]) + c * cast(w[2])).sum().backward(inputs=[xi, *hi, *model.parameters()])
        grads = {"x": xi.grad, "h0": hi[0].grad, "c0": hi[1].grad}
        grads.update({n: p.grad for n, p in model.named_parameters()})
        outs.append((y, h, c, grads))
    (y, h, c, gr), (y64, h64, c64, gr64) = outs
    tol_fwd, tol_bwd = 3 * u + K * U32, 5 * u + K * U32
    for what, a, b in (("y", y, y64), ("h_n", h, h64), ("c_n", c, c64)):
        assert _relf(a, b) <= tol_fwd, (what, _relf(a, b), tol_fwd)
    assert _relf(y, y64) > u / 64          # the 16-bit rounding happened (not a float32 run)
    for k in gr:
        assert gr[k].dtype == dt, k
        tol = tol_bwd if k in ("x", "h0", "c0") else tol_bwd + u
        assert _relf(gr[k], gr64[k]) <= tol, (k, _relf(gr[k], gr64[k]), tol)


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_16_bit_tensors_cross_without_a_copy(name):
    """CPU tensors reach the core as NumPy views of their memory: float16 directly, bfloat16 through an
    int16 view as ml_dtypes.bfloat16; outputs come back the same way."""
    pytest.importorskip("ml_dtypes")
    from gpu_lstm.torch import _ops
    t = torch.randn(4, 3).to(LOW[name])
    a = _ops._view(t)
    assert a.dtype.name == name and a.ctypes.data == t.data_ptr() and a.shape == (4, 3)
    back = _ops._tensor(a)
    assert back.dtype == LOW[name] and back.data_ptr() == t.data_ptr() and torch.equal(back, t)


def test_bfloat16_adam_training_steps():
    """torch.optim.Adam on the bfloat16 module's Parameters: the first step moves each element by
    -lr sign(g) rounded to bfloat16 (Adam's first update is g / (|g| + eps) lr), the loss falls."""
    m, _ = _low_pair("bfloat16", 3, 16, 1)
    torch.manual_seed(2)
    head = torch.nn.Linear(16, 1, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 8, 3, generator=g).to(torch.bfloat16)
    target = torch.randn(8, 1, generator=g).to(torch.bfloat16)
    params = list(m.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for step in range(8):
        opt.zero_grad()
        y, _ = m(x)
        loss = (head(y[-1]).float() - target.float()).square().mean()
        loss.backward()
        if step == 0:
            before = [p.detach().clone() for p in m.parameters()]
            grads = [p.grad.clone() for p in m.parameters()]
        opt.step()
        if step == 0:
            for p, p0, gp in zip(m.parameters(), before, grads):
                assert gp.dtype == torch.bfloat16 and torch.isfinite(gp).all()
                moved = p.detach() != p0
                assert moved.any()
                assert torch.equal(torch.sign(p.detach() - p0)[moved], -torch.sign(gp)[moved])
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_bfloat16_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    m, _ = _low_pair("bfloat16", 3, 5, 2, batch_first=True, bidirectional=True)
    x = torch.randn(3, 5, 3).to(torch.bfloat16).requires_grad_()
    eager, gx, g_eager, out = _eager_then_compiled(m, x)
    assert torch.equal(out.detach(), eager.detach()) and torch.equal(x.grad, gx)
    for n, p in m.named_parameters():
        assert p.grad.dtype == torch.bfloat16 and torch.equal(p.grad, g_eager[n]), n


# ---- review findings: where the drop-in differed from torch.nn.LSTM ------------------------------------
@pytest.mark.parametrize("kw", [dict(dropout=0.5), dict(zoneout_h=0.2)])
def test_masks_seed_does_not_shift_torchs_generator(kw):
    """With dropout or zoneout and no seed, the mask seed was drawn from torch's generator before the
    weights: under the same torch.manual_seed the weights (and every layer built after) differed from
    torch.nn.LSTM's."""
    torch.manual_seed(0)
    ours = glt.LSTM(3, 4, 2, dtype=F64, **kw)
    after_ours = torch.rand(3)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, 2, dtype=F64, dropout=kw.get("dropout", 0.0))
    after_ref = torch.rand(3)
    for name, p in ref.named_parameters():
        assert torch.equal(getattr(ours, name), p), name
    assert torch.equal(after_ours, after_ref)


def test_options_changed_after_construction_take_effect_or_are_refused():
    """batch_first/dropout set after construction were ignored (a frozen config): h_n came back (1, 4, 5)
    for (2, 4, 3) batch-first input; dropout set later drew no masks."""
    ref, m = _pair(L=1)
    m.batch_first = ref.batch_first = True
    x = torch.randn(2, 4, 3, dtype=F64)
    y, (h, _) = m(x)
    y_ref, (h_ref, _) = ref(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-13)
    m.zoneout_h = 0.5            # takes effect: training draws masks now
    torch.manual_seed(1)
    a = m(x)[0]
    torch.manual_seed(2)
    b = m(x)[0]
    assert not torch.equal(a, b)                              # masks are drawn now
    m.hidden_size = 7
    with pytest.raises(ValueError, match=r"hidden_size: changed from 5 to 7 after construction"):
        m(x)
    m.hidden_size = 5
    m.zoneout_h = 1.5
    with pytest.raises(ValueError, match="zoneout_h: expected a probability in"):
        m(x)


def test_parameters_of_another_dtype_or_layout():
    """A float32 bias in a float64 module was used silently (torch raises); a non-contiguous weight,
    valid in torch, failed with gpu_lstm's internal names ('params['l0.W']: expected a C-contiguous')."""
    ref, m = _pair(L=1)
    x = torch.randn(4, 2, 3, dtype=F64)
    with torch.no_grad():
        for mod in (m, ref):
            mod.weight_ih_l0.set_(mod.weight_ih_l0.t().contiguous().t())
    assert not m.weight_ih_l0.is_contiguous()
    y, _ = m(x)
    torch.testing.assert_close(y, ref(x)[0], rtol=0, atol=1e-13)
    y.sum().backward()
    assert m.weight_ih_l0.grad.shape == m.weight_ih_l0.shape
    m.bias_hh_l0.data = m.bias_hh_l0.data.float()
    with pytest.raises(TypeError, match=r"bias_hh_l0: expected dtype torch\.float64 .*got torch\.float32"):
        m(x)


def test_flatten_parameters_and_all_weights_exist():
    """Common torch.nn.LSTM calls were AttributeErrors."""
    ref, m = _pair(L=2, bidirectional=True, proj_size=2)
    m.flatten_parameters()
    assert [[tuple(w.shape) for w in layer] for layer in m.all_weights] == \
        [[tuple(w.shape) for w in layer] for layer in ref.all_weights]


def test_unbatched_errors_show_what_was_passed():
    """Messages showed the internally batched shapes: 'expected (1, 1, 4) ..., got (4, 1)'."""
    m = glt.LSTM(7, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"hx\[0\] \(h_0\): expected shape \(1, 4\) \(unbatched\), got \(4,\)"):
        m(torch.randn(5, 7, dtype=F64), (torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64)))
    with pytest.raises(ValueError, match=r"input: expected 7 features on the last axis, got shape \(5, 3\)"):
        m(torch.randn(5, 3, dtype=F64))


def test_empty_lengths_say_how_many_are_expected():
    m = glt.LSTM(3, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"lengths: expected 2 lengths \(one per sample\), got 0"):
        m(torch.randn(4, 2, 3, dtype=F64), lengths=[])


def test_options_set_to_numpy_scalars_after_construction():
    """np.bool_/np.float32 values passed the check, then every forward failed in json.dumps."""
    _, m = _pair(L=1)
    m.batch_first = np.bool_(True)
    m.zoneout_h = np.float32(0.25)
    y, _ = m(torch.randn(2, 4, 3, dtype=F64))
    assert y.shape == (2, 4, 5) and m.batch_first is True and m.zoneout_h == 0.25


def test_one_layer_dropout_warns_once_from_the_users_line():
    import warnings
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        glt.LSTM(3, 4, dropout=0.5, dtype=F64)(torch.randn(2, 1, 3, dtype=F64))
    ours = [w for w in seen if "has no effect with num_layers=1" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__, [(w.filename, str(w.message)) for w in ours]
