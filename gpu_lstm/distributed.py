"""Data-parallel training with torch.distributed: ``gpu-lstm train TASK --ddp`` (or the CLI under
``torchrun``).

The model is ``gpu_lstm.torch.LSTM`` plus a ``torch.nn.Linear`` head, wrapped in
``torch.nn.parallel.DistributedDataParallel``: torch all-reduces (averages) the gradients, bucketed
and overlapped with the backward as it always does; NCCL on GPUs, gloo on CPUs. Nothing here
communicates on its own.

Data: every rank draws the same global batch of B samples (same seeded generator) and keeps its own
contiguous shard of B / world_size samples (for the char LM: its own B / world_size of the B parallel
text streams). With equal shards the average of the ranks' mean losses is the mean loss over the whole
batch, so a run on N processes follows the single-process run on the whole batch (to rounding).
Rank 0 alone logs, evaluates and writes ``checkpoint.pt`` (torch.save of the model and optimizer
state dicts) and ``summary.json``; the logged loss is the all-reduced mean over ranks.

Launch: under ``torchrun --nproc_per_node N`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT come from
the environment), or ``--ddp`` alone, which starts ``--nproc`` processes itself (default: one per
visible GPU with ``--device gpu``, else 2 CPU processes) on a free localhost port.
"""

import importlib
import inspect
import json
import os
import socket
import sys
import time
from datetime import timedelta

import numpy as np

# torch's optimizers update the Parameters in their own dtype: 16-bit runs would need the float32 master
# weights (and float16 loss scaling) of the single-process runs, which this loop does not have.
DTYPES = ("float32", "float64")


def check_batch_shards(B, world):
    """Every rank gets B / world samples: B must be a multiple of the number of processes.

    Parameters
    ----------
    B : int
        The global batch size.
    world : int
        The number of processes.
    """
    if B % world:
        raise ValueError(f"B: expected a multiple of the number of processes ({world}) so that every process "
                         f"gets an equal shard, got {B}")


def _checked(options, world):
    """Every option of a run (a dict of :func:`train`'s arguments) against its range, before anything
    is built; ``world`` is the number of processes. Returns (T, B, hidden, lr) with the task's defaults
    (:func:`gpu_lstm.training.task_defaults`) in place of those left as None. Only None means "not
    given": 0 goes on to the range checks, which reject it."""
    from .training import _check_run_options, task_defaults
    defaults = task_defaults(options["task"])      # ValueError naming task for an unknown one
    T, B, hidden, lr = (defaults[k] if options[k] is None else options[k] for k in ("T", "B", "hidden", "lr"))
    if options["device"] not in ("cpu", "gpu"):
        raise ValueError(f"device: expected 'cpu' or 'gpu' (run() resolves 'auto'), got {options['device']!r}")
    if options["dtype"] not in DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64' for a --ddp run, got {options['dtype']!r} "
                         "(torch's optimizers would update 16-bit Parameters directly, without the float32 "
                         "master weights of the single-process runs)")
    # "cpu": whether a rank sees its GPU is torch's question (run() asks it), not CuPy's.
    _check_run_options(options["steps"], T, B, hidden, options["layers"], lr, options["clip"],
                       options["optimizer"], "cpu", options["dtype"], options["seed"], options["log_every"])
    check_batch_shards(B, world)
    return T, B, hidden, lr


def under_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(task, hidden, layers, dtype, device, V=None):
    from torch import nn

    from .torch import LSTM

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            I, O = (2, 1) if task == "adding" else (V, V)
            self.lstm = LSTM(I, hidden, layers, batch_first=False, dtype=dtype, device=device)
            self.head = nn.Linear(hidden, O, dtype=dtype, device=device)

        def forward(self, x, hx=None):
            y, state = self.lstm(x, hx)
            return self.head(y[-1] if task == "adding" else y), state

    return Net()


def _optimizer(name, params, lr):
    import torch
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    return cls(params, lr=lr)


def train(task, steps=200, T=None, B=None, hidden=None, layers=1, lr=None, clip=1.0, optimizer="adam",
          device="cpu", dtype="float32", seed=0, out_dir=None, log_every=100, stream=None, text=None):
    """One rank's training loop (the process group is set up by :func:`run`).

    Without a process group it trains alone on the whole batch. The options are those of
    :func:`gpu_lstm.training.train_adding` / :func:`gpu_lstm.training.train_charlm`, checked the same
    way; the model is :class:`gpu_lstm.torch.LSTM` with a torch linear head and a torch optimizer.

    Parameters
    ----------
    task : str
        'adding' or 'charlm'.
    steps : int
        Optimizer steps.
    T : int, optional
        Sequence length (adding) or truncated-BPTT chunk (charlm); None: the task's default
        (:func:`gpu_lstm.training.task_defaults`). So for B, hidden and lr.
    B : int, optional
        The global batch, a multiple of the number of processes; each rank trains on its shard.
    hidden : int, optional
        LSTM size H.
    layers : int
        Stacked LSTM layers.
    lr : float, optional
        Learning rate, > 0.
    clip : float
        Global-norm gradient clipping; 0 turns it off.
    optimizer : {'adam', 'adamw', 'sgd'}
    device : {'cpu', 'gpu'}
        'gpu': this rank's GPU (``LOCAL_RANK``), NCCL; 'cpu': gloo.
    dtype : {'float32', 'float64'}
    seed : int
        Seeds the model (the same on every rank) and the data.
    out_dir : str, optional
        Rank 0 writes checkpoint.pt and summary.json here; None writes nothing.
    log_every : int
        Progress line (rank 0) every this many steps.
    stream : file-like, optional
        Progress output; stderr by default.
    text : str, optional
        charlm only: a UTF-8 text file to train on instead of the shipped one.

    Returns
    -------
    dict
        On every rank: sizes, ``world_size``, timings and ``history`` ((step, all-reduced mean loss)
        for every step); on rank 0 also ``test_mse`` and ``baseline_mse`` (adding) or ``test_bpc`` and
        ``uniform_bpc`` (charlm), and ``checkpoint`` when ``out_dir`` is given.
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from . import tasks as tk
    from .progress import Progress

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    T, B, hidden, lr = _checked(dict(task=task, steps=steps, T=T, B=B, hidden=hidden, layers=layers, lr=lr,
                                     clip=clip, optimizer=optimizer, device=device, dtype=dtype, seed=seed,
                                     log_every=log_every), world)
    shard = slice(rank * (B // world), (rank + 1) * (B // world))
    tdtype = getattr(torch, dtype)      # a name of DTYPES (checked above), which torch shares
    if device == "gpu":
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    rng = np.random.default_rng(seed)
    V, vocab = None, None
    if task == "charlm":
        text = tk.load_corpus() if text is None else tk.load_text(text)
        vocab = tk.CharVocab(text)
        ids = vocab.encode(text)
        split = int(0.9 * len(ids))
        train_ids, test_ids = ids[:split], ids[split:]
        V = len(vocab)
        batches = tk.StreamBatches(train_ids, T, B)
    torch.manual_seed(seed)                 # same initial weights everywhere (DDP broadcasts rank 0's too)
    net = _build(task, hidden, layers, tdtype, dev, V)
    model = net
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = _optimizer(optimizer, model.parameters(), lr)
    eye = torch.eye(V, dtype=tdtype, device=dev) if V else None
    progress = Progress(steps, log_every, stream) if rank == 0 else None
    history, state, tokens = [], None, 0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if task == "adding":
            x, y = tk.adding_batch(rng, T, B, dtype)
            x = torch.from_numpy(x[:, shard]).to(dev)
            y = torch.from_numpy(y[shard]).to(dev)
        else:
            xi, yi, reset = batches.next()
            x = eye[torch.from_numpy(xi[:, shard]).to(dev)]
            y = torch.from_numpy(yi[:, shard]).to(dev)
            if reset:
                state = None
        opt.zero_grad()
        pred, new_state = model(x, state)
        if task == "adding":
            loss = F.mse_loss(pred, y)
        else:
            loss = F.cross_entropy(pred.reshape(-1, V), y.reshape(-1))
            state = tuple(s.detach() for s in new_state)     # truncated BPTT across chunks
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        logged = loss.detach().clone()
        if distributed:
            dist.all_reduce(logged)
            logged /= world
        value = float(logged) / (np.log(2) if task == "charlm" else 1.0)
        history.append((step, value))
        tokens += T * B
        if progress is not None and progress.due(step):
            progress.show(step, value, tokens)
    wall = time.perf_counter() - t0
    summary = {"task": task, "device": str(dev), "world_size": world, "steps": steps, "T": T, "B": B,
               "hidden": hidden, "layers": layers, "train_seconds": wall,
               "tokens_per_second": tokens / wall, "history": history}
    if rank == 0:
        net.eval()
        with torch.no_grad():
            if task == "adding":
                xt, yt = tk.adding_batch(np.random.default_rng(seed + 10_000), T, 1000, dtype)
                pred, _ = net(torch.from_numpy(xt).to(dev))
                summary["test_mse"] = float(F.mse_loss(pred, torch.from_numpy(yt).to(dev)))
                summary["baseline_mse"] = float(((yt - 1.0) ** 2).mean())
            else:
                n = min(len(test_ids) - 1, 20_000)
                pred, _ = net(eye[torch.from_numpy(test_ids[:n, None]).to(dev)])
                nats = F.cross_entropy(pred.reshape(-1, V), torch.from_numpy(test_ids[1:n + 1]).to(dev))
                summary["test_bpc"] = float(nats) / np.log(2)
                summary["uniform_bpc"] = float(np.log2(V))
        if out_dir:
            # Atomic like the single-process runs (gpu_lstm/checkpoint.py): a kill leaves the old file.
            from .checkpoint import write_atomically
            from ._preflight import remove_stale
            os.makedirs(out_dir, exist_ok=True)
            # A single-process run's files would mix two runs in one folder.
            remove_stale(out_dir, ("summary.json", "checkpoint.npz", "loss.png"))
            ckpt = os.path.join(out_dir, "checkpoint.pt")
            state = {"model": net.state_dict(), "optimizer": opt.state_dict(),
                     "extra": {"task": task, "vocab": vocab.chars if vocab else None, "hidden": hidden,
                               "layers": layers, "dtype": dtype}}
            summary["checkpoint"] = write_atomically(ckpt, lambda f: torch.save(state, f))
            text = json.dumps(summary, indent=1).encode()
            write_atomically(os.path.join(out_dir, "summary.json"), lambda f: f.write(text))
    return summary


_TRAIN_SIGNATURE = inspect.signature(train)


def _import_before_the_group():
    """Import torch._dynamo before any process group exists. DistributedDataParallel's constructor
    imports it, and imported after the group was made (torch 2.13) it keeps references to the group
    that destroy_process_group does not drop (measured: the import alone adds 10, none of them from a
    Python container): the group's gloo threads then outlive the rank, and one that frees a finished
    collective's tensor while the interpreter finalizes aborts the process ("terminate called without
    an active exception"; about one torchrun run in 25 under load). Made after the import, the group
    is freed by destroy_process_group, which joins its threads."""
    importlib.import_module("torch._dynamo")


def _worker(rank, world, port, backend, kwargs):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _run_rank(backend, kwargs)


def _run_rank(backend, kwargs):
    """One rank: join the group, train, tear the group down.

    The group must be freed by destroy_process_group, whose handle on it releases the GIL first. If
    train's DDP wrapper were still alive then, its Reducer would hold the last reference and free the
    group later holding the GIL; ~ProcessGroupGloo then joins gloo threads, one of which may be waiting
    for the GIL to free a finished collective: a deadlock. train's wrapper dies when train returns; when
    train raises, the error's traceback keeps train's frames (the wrapper among their locals) until the
    process exits, so their locals are cleared first (the traceback's lines are kept)."""
    import traceback

    import torch.distributed as dist
    _import_before_the_group()
    dist.init_process_group(backend, timeout=timedelta(seconds=120))
    try:
        summary = train(**kwargs)
        # Every rank reaches this point before any tears the group down: rank 0 hosts the store, and a
        # rank still talking to it when it goes aborts ("terminate called without an active exception").
        dist.barrier()
        return summary
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        dist.destroy_process_group()


def _preflight(kwargs, world):
    """Before any process starts: every option's range, the batch's split over the ``world`` processes,
    the text file, the output folder (writable, not a file), as in the single-process runs, so no error
    can come after the training (or from inside a spawned process)."""
    from . import tasks as tk
    from ._preflight import prepare_output
    # train's own signature supplies the defaults and rejects unknown options (TypeError naming them).
    options = _TRAIN_SIGNATURE.bind(**kwargs)
    options.apply_defaults()
    _checked(options.arguments, world)
    if kwargs.get("text") is not None:
        tk.load_text(kwargs["text"])
    if kwargs.get("out_dir"):
        kwargs["out_dir"] = prepare_output(kwargs["out_dir"])


def run(nproc=None, **kwargs):
    """Entry point of ``gpu-lstm train --ddp``: joins torchrun's process group when launched by
    torchrun, else starts ``nproc`` processes here. Every option is checked before any process starts.

    Parameters
    ----------
    nproc : int, optional
        Processes to start when not under torchrun; None: one per visible GPU (``device='gpu'``) or 2.
    **kwargs
        :func:`train`'s options; ``device='auto'`` becomes 'gpu' when torch sees CUDA, else 'cpu'.

    Returns
    -------
    dict or None
        Rank 0's summary (None on the other ranks).
    """
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    if not dist.is_available():
        raise RuntimeError("--ddp: this torch build has no torch.distributed")
    device = kwargs.get("device", "cpu")
    if device == "auto":
        device = kwargs["device"] = "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("--device gpu: torch sees no CUDA device")
    backend = "nccl" if device == "gpu" else "gloo"
    if under_torchrun():
        _preflight(kwargs, int(os.environ["WORLD_SIZE"]))
        summary = _run_rank(backend, kwargs)
        return summary if int(os.environ["RANK"]) == 0 else None
    if nproc is None:
        nproc = torch.cuda.device_count() if device == "gpu" else 2
    _preflight(kwargs, nproc)
    if nproc == 1:
        return train(**kwargs)
    out = kwargs.get("out_dir")
    mp.spawn(_worker, args=(nproc, free_port(), backend, kwargs), nprocs=nproc, join=True)
    if out and os.path.exists(os.path.join(out, "summary.json")):
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)
    return None


def main(argv=None):
    """``python -m gpu_lstm.distributed TASK [options]``: the CLI's train --ddp, for torchrun.

    Parameters
    ----------
    argv : list of str, optional
        ``gpu-lstm train`` arguments; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        The exit status.
    """
    from .cli import main as cli_main
    return cli_main(["train", *(argv if argv is not None else sys.argv[1:]), "--ddp"])


if __name__ == "__main__":
    sys.exit(main())
