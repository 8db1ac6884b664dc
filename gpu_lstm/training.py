"""The training loop and the two shipped training runs (the adding problem, a character model).

A run checks everything it can before its first step: option ranges, the output folder (created and
written to), the text, and whether the sizes fit in memory. What cannot be checked early, a disk that
fills up during the run, is handled when saving: the checkpoint then goes to a fresh folder under the
system's temporary directory, and the summary says where (``checkpoint``) and why (``save_error``).

Outputs of a run in ``out_dir``: ``checkpoint.npz`` (atomic), ``summary.json`` (atomic, written after
the checkpoint, with the same ``run_id`` as the checkpoint's metadata; the previous run's summary is
removed before the new checkpoint is written, so a kill between the two writes never leaves a summary
that describes another checkpoint), and ``loss.png`` with matplotlib.
"""

import inspect
import json
import os
import tempfile
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

import numpy as np

from . import _checks as ck
from ._preflight import check_fits_in_memory, prepare_output, remove_stale, training_bytes
from .backend import resolve_device
from .checkpoint import save_checkpoint, write_atomically
from .losses import mse_loss, nats_to_bits, softmax_cross_entropy
from .model import SequenceModel
from .optim import OPTIMIZERS, Optimizer, clip_grad_norm, mixed_precision
from .plotting import save_plot
from .progress import Progress
from .sampling import sample_text
from .tasks import CharVocab, StreamBatches, adding_batch, load_corpus, load_text, one_hot


def fit(model: SequenceModel, optimizer: Optimizer, next_batch: Callable, loss_fn: Callable, steps: int,
        clip: float = 1.0, log_every: int = 100, stream: Optional[TextIO] = None,
        transform: Optional[Callable] = None) -> Tuple[List[Tuple[int, float]], float, int]:
    """The training loop shared by the tasks.

    Parameters
    ----------
    model : SequenceModel
    optimizer : Optimizer
        Built on ``model.params`` and ``model.grads``.
    next_batch : callable
        ``next_batch(state) -> (x, target, state)`` supplies device arrays and the (h, c) to start
        from (None, or the state returned by the previous forward for truncated BPTT).
    loss_fn : callable
        ``loss_fn(pred, target) -> (loss, dpred)``.
    steps : int
        Optimizer steps.
    clip : float
        Clip the gradients to this global norm; 0 turns clipping off.
    log_every : int
        Progress line every this many steps (off a terminal).
    stream : file-like, optional
        Where the progress goes; stderr by default.
    transform : callable, optional
        ``transform(loss) -> float`` maps the logged loss (e.g. nats to bits).

    Returns
    -------
    history : list of (step, loss)
    seconds : float
        Wall time of the loop.
    tokens : int
        Time steps times batch size processed.
    """
    transform = transform or float
    progress = Progress(steps, log_every, stream)
    record_every = max(1, log_every // 4)
    history, tokens, state = [], 0, None
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, target, state = next_batch(state)
        model.zero_grad()
        pred, state = model(x, state)
        loss, dpred = loss_fn(pred, target)
        scale = getattr(optimizer, "scale_grad", None)      # mixed precision (optim.MixedPrecision)
        model.backward(dpred if scale is None else scale(dpred))
        finite = optimizer.unscale_() if scale is not None else True   # float16 loss scaling
        if clip and finite:
            clip_grad_norm(model.grads, clip)
        optimizer.step()                                    # skipped by MixedPrecision when not finite
        tokens += x.shape[0] * x.shape[1]
        record = step == 1 or step % record_every == 0 or step == steps
        show = progress.due(step)
        if record or show:
            value = transform(loss)
            if record:
                history.append((step, value))
            if show:
                progress.show(step, value, tokens)
    return history, time.perf_counter() - t0, tokens


def make_optimizer(model: SequenceModel, name: str, lr: float, weight_decay: float = 0.0) -> Optimizer:
    """An optimizer by name over the model's parameters.

    Parameters
    ----------
    model : SequenceModel
    name : str
        'adam', 'adamw' or 'sgd'.
    lr : float
    weight_decay : float

    Returns
    -------
    Optimizer
        The optimizer itself for float32/float64 models; for bfloat16/float16 models a
        :class:`gpu_lstm.optim.MixedPrecision` over float32 master weights, with loss scaling for float16.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    kwargs = {"lr": lr}
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    # float32/float64: the optimizer itself; bfloat16/float16: float32 master weights (+ loss scaling)
    return mixed_precision(name, model.params, model.grads, model.dtype, **kwargs)


def _check_run_options(steps, T, B, hidden, layers, lr, clip, optimizer, device, dtype, seed, log_every):
    """Every option's range, before anything is built (the API and the CLI share these checks)."""
    ck.positive_int("steps", steps)
    ck.positive_int("T", T)
    ck.positive_int("B", B)
    ck.positive_int("hidden", hidden)
    ck.positive_int("layers", layers)
    ck.positive_float("lr", lr)
    ck.nonnegative_float("clip", clip)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    resolve_device(device)
    ck.float_dtype(dtype)
    ck.seed("seed", seed)
    ck.positive_int("log_every", log_every)


def _save_run(out_dir, model, opt, extra, summary):
    """Checkpoint then summary, in an order that a kill cannot make disagree (module docstring); on
    an OSError (disk full, folder gone) the checkpoint is written to a rescue folder instead."""
    run_id = uuid.uuid4().hex
    summary["run_id"] = run_id
    summary_path = os.path.join(out_dir, "summary.json")
    path = os.path.join(out_dir, "checkpoint.npz")
    try:
        # checkpoint.pt is a data-parallel run's: left beside this run's files it would mix two runs.
        remove_stale(out_dir, ("summary.json", "checkpoint.pt"))
        summary["checkpoint"] = save_checkpoint(path, model, opt, extra={**extra, "run_id": run_id})
    except OSError as exc:
        try:
            rescue = tempfile.mkdtemp(prefix="gpu-lstm-rescue-")
            summary["checkpoint"] = save_checkpoint(os.path.join(rescue, "checkpoint.npz"), model, opt,
                                                    extra={**extra, "run_id": run_id})
        except OSError as exc2:
            raise type(exc)(f"could not write {path} ({exc.strerror or exc}) nor a copy under "
                                     f"{tempfile.gettempdir()} ({exc2.strerror or exc2}); the trained "
                                     f"model is lost") from None
        summary["save_error"] = (f"could not write {path} ({exc.strerror or exc}); the trained model "
                                 f"was saved to {summary['checkpoint']} instead")
        out_dir = rescue
        summary_path = os.path.join(rescue, "summary.json")
    text = summary_json(summary).encode()
    try:
        summary["summary"] = write_atomically(summary_path, lambda f: f.write(text))
    except OSError as exc:
        summary["summary"] = None
        summary["save_error"] = (summary.get("save_error", "") + f" could not write {summary_path} "
                                 f"({exc.strerror or exc})").strip()
    return out_dir


def _plot(history, out_dir, title, ylabel, summary):
    try:
        summary["plot"] = save_plot(history, os.path.join(out_dir, "loss.png"), title, ylabel)
    except OSError as exc:   # a plot is not worth losing the run for
        summary["plot"] = None
        summary["plot_error"] = f"loss.png not written: {exc.strerror or exc}"
    if summary["plot"] is None:      # no new plot: an earlier run's would pass for this one's
        try:
            remove_stale(out_dir, ("loss.png",))
        except OSError:
            pass


def train_adding(steps: int = 2000, T: int = 100, B: int = 64, hidden: int = 64, layers: int = 1,
                 lr: float = 1e-2, clip: float = 1.0, optimizer: str = "adam", device: str = "auto",
                 dtype: str = "float32", seed: int = 0, out_dir: str = "runs/adding", log_every: int = 100,
                 stream: Optional[TextIO] = None) -> Dict[str, Any]:
    """Train on the adding problem (T steps, two marked values to add).

    Parameters
    ----------
    steps : int
        Optimizer steps.
    T : int
        Sequence length, >= 2.
    B : int
        Batch size.
    hidden : int
        LSTM size H.
    layers : int
        Stacked LSTM layers.
    lr : float
        Learning rate, > 0.
    clip : float
        Global-norm gradient clipping; 0 turns it off.
    optimizer : {'adam', 'adamw', 'sgd'}
    device : {'auto', 'cpu', 'gpu'}
    dtype : {'float32', 'float64', 'bfloat16', 'float16'}
        16-bit models train with float32 master weights (and loss scaling for float16), as
        :func:`make_optimizer` builds them.
    seed : int
        Seeds the model and the data.
    out_dir : str
        Where checkpoint.npz, summary.json and loss.png go; checked writable before the first step.
    log_every : int
    stream : file-like, optional
        Progress output; stderr by default.

    Returns
    -------
    dict
        The summary: ``test_mse``, ``baseline_mse``, timings, ``checkpoint``, ``summary``, ``plot``,
        ``run_id``, ``history``, and ``save_error`` when the checkpoint had to go elsewhere.
    """
    _check_run_options(steps, T, B, hidden, layers, lr, clip, optimizer, device, dtype, seed, log_every)
    if T < 2:
        raise ValueError(f"T: expected at least 2 steps for the adding problem (one marker per half), got {T}")
    itemsize = ck.float_dtype(dtype).itemsize
    check_fits_in_memory(training_bytes(2, hidden, 1, layers, T, max(B, 1000), itemsize),
                         "hidden, layers, B, T")
    rng = np.random.default_rng(seed)
    model = SequenceModel(2, hidden, 1, layers, head="last", dtype=dtype, device=device, seed=seed)
    opt = make_optimizer(model, optimizer, lr)
    out_dir = prepare_output(out_dir)     # after the model: a missing GPU leaves no empty folder behind
    xp = model.xp
    x_test, y_test = adding_batch(np.random.default_rng(seed + 10_000), T, 1000, dtype)
    x_test, y_test = xp.asarray(x_test), xp.asarray(y_test)

    def evaluate():
        model.eval()
        pred, _ = model(x_test)
        model.train()
        return float(mse_loss(pred, y_test)[0])

    baseline = float(((y_test - 1.0) ** 2).mean())

    def next_batch(state):
        x, y = adding_batch(rng, T, B, dtype)
        return xp.asarray(x), xp.asarray(y), None     # independent sequences: no state carried

    history, wall, tokens = fit(model, opt, next_batch, mse_loss, steps, clip, log_every, stream)
    test_mse = evaluate()
    summary = {"task": "adding", "device": model.device, "steps": steps, "T": T, "B": B, "hidden": hidden,
               "layers": layers, "train_seconds": wall, "tokens_per_second": tokens / wall,
               "baseline_mse": baseline, "test_mse": test_mse, "history": history}
    out_dir = _save_run(out_dir, model, opt, {"task": "adding", "T": T, "test_mse": test_mse}, summary)
    _plot(history, out_dir, f"adding problem, T={T}", "train MSE", summary)
    return summary


def train_charlm(steps: int = 2000, T: int = 64, B: int = 32, hidden: int = 256, layers: int = 1,
                 lr: float = 3e-3, clip: float = 1.0, optimizer: str = "adam", device: str = "auto",
                 dtype: str = "float32", seed: int = 0, out_dir: str = "runs/charlm", log_every: int = 100,
                 sample_length: int = 300, stream: Optional[TextIO] = None,
                 text: Optional[str] = None) -> Dict[str, Any]:
    """Train a character model; held-out bits per character and a sample.

    Parameters
    ----------
    steps : int
        Optimizer steps.
    T : int
        The truncated-BPTT chunk: steps per forward, the state carried between chunks.
    B : int
        The number of parallel streams read through the text.
    hidden : int
        LSTM size H.
    layers : int
        Stacked LSTM layers.
    lr : float
        Learning rate, > 0.
    clip : float
        Global-norm gradient clipping; 0 turns it off.
    optimizer : {'adam', 'adamw', 'sgd'}
    device : {'auto', 'cpu', 'gpu'}
    dtype : {'float32', 'float64', 'bfloat16', 'float16'}
        16-bit models train with float32 master weights (and loss scaling for float16), as
        :func:`make_optimizer` builds them.
    seed : int
        Seeds the model and the sample.
    out_dir : str
        Where checkpoint.npz, summary.json and loss.png go; checked writable before the first step.
    log_every : int
    stream : file-like, optional
        Progress output; stderr by default.
    sample_length : int
        Characters to sample after training.
    text : str, optional
        A UTF-8 text file to train on (``.gz`` accepted); the shipped KJV Genesis-Exodus when None.
        The last 10 % is held out; the first 90 % must hold at least B * T + 1 characters.

    Returns
    -------
    dict
        The summary: ``test_bpc``, ``uniform_bpc``, ``sample``, timings, ``checkpoint``, ``summary``,
        ``plot``, ``run_id``, ``history`` (and ``save_error``, see the module docstring).
    """
    _check_run_options(steps, T, B, hidden, layers, lr, clip, optimizer, device, dtype, seed, log_every)
    sample_length = ck.positive_int("sample_length", sample_length)
    corpus = load_corpus() if text is None else load_text(text)
    vocab = CharVocab(corpus)
    ids = vocab.encode(corpus)
    split = int(0.9 * len(ids))
    train_ids, test_ids = ids[:split], ids[split:]
    if len(test_ids) < 3:
        raise ValueError(f"text: expected at least 30 characters (10 % are held out), got {len(ids)}")
    batches = StreamBatches(train_ids, T, B)          # raises now if the text is too short
    # The sample starts from the corpus's own first words, so its characters are in the vocabulary.
    prime = "And God said" if text is None else corpus[:12]
    V = len(vocab)
    itemsize = ck.float_dtype(dtype).itemsize
    check_fits_in_memory(training_bytes(V, hidden, V, layers, max(T, 128), max(B, 16), itemsize),
                         "hidden, layers, B, T")
    model = SequenceModel(V, hidden, V, layers, head="all", dtype=dtype, device=device, seed=seed)
    opt = make_optimizer(model, optimizer, lr)
    out_dir = prepare_output(out_dir)     # after the model: a missing GPU leaves no empty folder behind
    xp = model.xp

    def next_batch(state):
        xi, yi, reset = batches.next()
        # Carry (h, c) from the previous chunk of the same streams: truncated BPTT. Host ids: one_hot
        # checks their range without a device synchronisation.
        return one_hot(xi, V, model.dtype, xp), xp.asarray(yi), None if reset else state

    def loss_fn(logits, targets):   # ids come from our own vocabulary: no per-step range check (sync)
        return softmax_cross_entropy(logits, targets, check_targets=False)

    history, wall, tokens = fit(model, opt, next_batch, loss_fn, steps, clip, log_every,
                                stream, transform=nats_to_bits)
    test_bpc = evaluate_bpc(model, test_ids, V)
    name = "KJV Genesis-Exodus" if text is None else os.path.basename(os.fspath(text))
    summary = {"task": "charlm", "text": name, "device": model.device, "steps": steps, "T": T, "B": B,
               "hidden": hidden, "layers": layers, "train_seconds": wall, "tokens_per_second": tokens / wall,
               "test_bpc": test_bpc, "uniform_bpc": float(np.log2(V)), "history": history}
    try:
        summary["sample"] = sample_text(model, vocab, sample_length, seed=seed, prime=prime)
    except (ValueError, TypeError) as exc:   # never lose the trained model to the sample
        summary["sample"] = f"(no sample: {exc})"
    out_dir = _save_run(out_dir, model, opt, {"task": "charlm", "vocab": vocab.chars, "test_bpc": test_bpc},
                        summary)
    _plot(history, out_dir, f"char LM ({name})", "train bits/char", summary)
    return summary


def task_defaults(task: str) -> Dict[str, Any]:
    """What a run of ``task`` uses for T, B, hidden and lr when they are not given.

    They are the defaults of :func:`train_adding` / :func:`train_charlm`, read from their signatures,
    so the command line and the data-parallel runs cannot drift from the single-process ones.

    Parameters
    ----------
    task : str
        'adding' or 'charlm'.

    Returns
    -------
    dict
        ``{'T': int, 'B': int, 'hidden': int, 'lr': float}``.
    """
    runs = {"adding": train_adding, "charlm": train_charlm}
    if not isinstance(task, str) or task not in runs:     # (a list is unhashable)
        raise ValueError(f"task: expected one of {sorted(runs)}, got {task!r}")
    signature = inspect.signature(runs[task]).parameters
    return {name: signature[name].default for name in ("T", "B", "hidden", "lr")}


def evaluate_bpc(model: SequenceModel, ids: np.ndarray, V: int, T: int = 128, streams: int = 16) -> float:
    """Bits per character of ``ids`` under the model, in eval mode.

    The text is read as ``streams`` contiguous parallel streams with the state carried along each, so
    only ~len/streams sequential steps are needed; each stream's first characters are predicted
    without earlier context.

    Parameters
    ----------
    model : SequenceModel
    ids : numpy.ndarray
        (N,) ids, N >= 3.
    V : int
        Vocabulary size.
    T : int
        Steps per forward.
    streams : int

    Returns
    -------
    float
    """
    xp = model.xp
    streams = max(1, min(streams, (len(ids) - 1) // 2))
    batches = StreamBatches(ids, 1, streams)
    n = batches.n
    model.eval()
    state, total, count = None, 0.0, 0
    for s in range(0, n, T):
        xi, yi = batches.inputs[s: s + T], batches.targets[s: s + T]          # (t, streams)
        logits, state = model(one_hot(xi, V, model.dtype, xp), state)
        loss, _ = softmax_cross_entropy(logits, xp.asarray(yi))
        total += float(loss) * yi.size
        count += yi.size
    model.train()
    return nats_to_bits(total / max(count, 1))


def summary_json(summary: Dict[str, Any]) -> str:
    """The summary as JSON, without the loss history.

    Parameters
    ----------
    summary : dict

    Returns
    -------
    str
    """
    s = {k: v for k, v in summary.items() if k != "history"}
    return json.dumps(s, indent=2)
