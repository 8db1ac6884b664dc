"""Worker of tests/test_torch_ddp.py (a module of its own so spawned processes can import it)."""

import os
from datetime import timedelta

import torch

B = 8
LENGTHS = [7, 3, 5, 7, 1, 6, 2, 4]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        import gpu_lstm.torch as glt
        self.lstm = glt.LSTM(3, 5, 2, bidirectional=True, proj_size=3, dtype=torch.float64)
        self.head = torch.nn.Linear(6, 1, dtype=torch.float64)

    def forward(self, x, lengths):
        out, (h, _) = self.lstm(x, lengths=lengths)
        return self.head(out.sum(0)) + h.sum(0).sum(-1, keepdim=True)


def make_model():
    torch.manual_seed(0)
    return Net()


def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, B, 3, dtype=torch.float64, generator=g)
    return x, torch.randn(B, 1, dtype=torch.float64, generator=g), torch.tensor(LENGTHS)


def gradients(model, x, y, lengths):
    """Mean-squared-error gradients of every parameter of ``model`` (DDP-wrapped or not)."""
    loss = torch.nn.functional.mse_loss(model(x, lengths), y)
    loss.backward()
    inner = model.module if hasattr(model, "module") else model
    return {n: p.grad.clone() for n, p in inner.named_parameters()}


def shard_gradients(rank, world):
    """This rank's gradients through DDP on its shard of the batch, and a weak reference to the DDP
    wrapper, which is dead once this returns (see worker)."""
    import weakref
    ddp = torch.nn.parallel.DistributedDataParallel(make_model())
    x, y, lengths = batch()
    s = slice(rank * B // world, (rank + 1) * B // world)     # this rank's shard
    return gradients(ddp, x[:, s], y[s], lengths[s]), weakref.ref(ddp)


def worker(rank, world, port, out_file):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from gpu_lstm.distributed import _import_before_the_group
    _import_before_the_group()      # else gloo's threads outlive the teardown (see there)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        grads, wrapper = shard_gradients(rank, world)
        # The DDP wrapper must be dead before the group is destroyed, as in the library's ranks: else
        # a deadlock in the teardown, about one run in 40 (see gpu_lstm.distributed._run_rank).
        assert wrapper() is None, "the DDP wrapper outlived shard_gradients (a reference cycle?)"
        torch.save(grads, f"{out_file}.{rank}")
        torch.distributed.barrier()      # no rank tears the group down while another still uses it
    finally:
        torch.distributed.destroy_process_group()


def gloo_threads():
    """Names of this process's threads that gloo started (Linux: /proc/self/task/*/comm)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:       # the thread ended while we looked
            pass
    return sorted(n for n in names if "gloo" in n)


def gloo_threads_after_teardown(grace_s=2.0):
    """gloo_threads() once those the teardown joined have left /proc: the kernel wakes a thread's
    joiner before it reaps the thread, so a thread just joined can still be listed for a moment (seen
    once in 300 ranks). A thread the teardown did not join (gloo's loops poll forever) is still listed
    after grace_s."""
    import time
    end = time.monotonic() + grace_s
    while (names := gloo_threads()) and time.monotonic() < end:
        time.sleep(0.01)
    return names


def train_and_report_threads(rank, world, port, out_file):
    """One rank of ``gpu-lstm train --ddp`` (gpu_lstm.distributed._worker); writes the gloo threads alive
    during training and after the rank's teardown, which must have joined them: a gloo thread still
    alive when the interpreter finalizes can abort the process when it frees a finished collective."""
    import io
    import json

    from gpu_lstm import distributed
    torch.set_num_threads(1)
    seen = {}
    inner = distributed.train

    def train(**kwargs):
        seen["during"] = gloo_threads()
        return inner(**kwargs)

    distributed.train = train
    kwargs = dict(task="adding", steps=2, T=5, B=4, hidden=3, layers=2, dtype="float64", device="cpu",
                  log_every=1, stream=io.StringIO())
    distributed._worker(rank, world, port, "gloo", kwargs)
    seen["after"] = gloo_threads_after_teardown()
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump(seen, f)


def fail_and_report_threads(rank, world, port, out_file):
    """One rank of ``gpu-lstm train --ddp`` whose training raises right after its DDP wrapper is built
    (in the optimizer's construction); writes the error and the gloo threads alive after the rank's
    teardown, which must have joined them although the error's traceback holds the training's frames
    (until the process exits, in a real run)."""
    import json

    from gpu_lstm import distributed
    torch.set_num_threads(1)

    def failing_optimizer(name, params, lr):
        raise RuntimeError("optimizer failed")

    distributed._optimizer = failing_optimizer
    kwargs = dict(task="adding", steps=2, T=5, B=4, hidden=3, layers=2, dtype="float64", device="cpu")
    try:
        distributed._worker(rank, world, port, "gloo", kwargs)
        seen = {"error": None, "after": gloo_threads_after_teardown()}
    except RuntimeError as e:
        # Looked at while the error (and its traceback) is alive, as it is in a process until it exits.
        seen = {"error": str(e), "after": gloo_threads_after_teardown()}
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump(seen, f)
