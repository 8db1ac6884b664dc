"""Real tasks shipped with the package, and the training loop the CLI runs on them.

* The adding problem (Hochreiter and Schmidhuber, 1997; the two-marker form of Le et al., 2015): each
  step carries a value in [0, 1) and a marker; exactly two steps are marked, one in each half, and the
  target is the sum of their values. Predicting the mean (1.0) gives MSE = Var = 2/12 ~ 0.167.
* Character-level language modelling on the books of Genesis and Exodus from the King James Version
  (1611, public domain; text taken from Debian's bible-kjv-text 4.38, verse numbers removed), shipped
  as gpu_lstm/data/kjv_genesis_exodus.txt.gz (366 KB of text). The last 10 % is held out.
"""

import gzip
import json
import os
import sys
import time
from importlib import resources

import numpy as np

from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .losses import mse_loss, nats_to_bits, softmax_cross_entropy
from .model import SequenceModel
from .optim import OPTIMIZERS, clip_grad_norm, mixed_precision  # noqa: F401

CORPUS = "kjv_genesis_exodus.txt.gz"


# ---- data ---------------------------------------------------------------------------------------------
def adding_batch(rng, T, B, dtype="float32"):
    """x (T, B, 2): [value, marker]; y (B, 1): the sum of the two marked values."""
    values = rng.uniform(0.0, 1.0, (T, B))
    first = rng.integers(0, T // 2, B)
    second = rng.integers(T // 2, T, B)
    markers = np.zeros((T, B))
    markers[first, np.arange(B)] = 1.0
    markers[second, np.arange(B)] = 1.0
    x = np.stack([values, markers], axis=-1).astype(dtype)
    y = (values[first, np.arange(B)] + values[second, np.arange(B)])[:, None].astype(dtype)
    return x, y


def load_corpus():
    """The shipped English text as a str."""
    data = resources.files("gpu_lstm").joinpath("data", CORPUS).read_bytes()
    return gzip.decompress(data).decode("utf-8")


class CharVocab:
    """Characters <-> integer ids, in sorted order so a vocabulary is reproducible from its string."""

    def __init__(self, chars):
        self.chars = "".join(sorted(set(chars)))
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"text: characters not in the vocabulary: {unknown!r}")
        return np.array([self.index[ch] for ch in text], dtype=np.int64)

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)


def one_hot(ids, V, dtype, xp=np):
    """(...) int ids -> (..., V) one-hot, built where ``xp`` puts it."""
    return xp.eye(V, dtype=dtype)[xp.asarray(ids)]


class StreamBatches:
    """Truncated-BPTT batches over one long id sequence: B parallel contiguous streams read T steps
    at a time, so the (h, c) carried from chunk k is the right state for chunk k+1."""

    def __init__(self, ids, T, B):
        n = (len(ids) - 1) // B
        if n < T:
            raise ValueError(f"text too short for B={B} streams of T={T} steps")
        self.inputs = ids[: n * B].reshape(B, n).T          # (n, B)
        self.targets = ids[1: n * B + 1].reshape(B, n).T    # next character
        self.T, self.n, self.pos = T, n, 0

    def next(self):
        """(x ids (T, B), y ids (T, B), reset): reset is True when the streams wrapped around."""
        reset = False
        if self.pos + self.T > self.n:
            self.pos, reset = 0, True
        s = slice(self.pos, self.pos + self.T)
        self.pos += self.T
        return self.inputs[s], self.targets[s], reset


# ---- training loop --------------------------------------------------------------------------------------
class Progress:
    """One status line: redrawn in place on a terminal (at most 5 times a second), printed every
    ``every`` steps otherwise. Reading the loss syncs with the GPU, so it is only read when shown."""

    def __init__(self, total, every, stream=None):
        self.total, self.every = total, max(1, every)
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = self.last = time.perf_counter()

    def due(self, step):
        if step == self.total:
            return True
        if self.tty:
            return time.perf_counter() - self.last > 0.2
        return step % self.every == 0

    def show(self, step, loss, tokens):
        self.last = now = time.perf_counter()
        width = 24
        done = int(width * step / self.total)
        bar = "#" * done + "." * (width - done)
        line = (f"[{bar}] step {step}/{self.total}  loss {loss:.4f}  "
                f"{tokens / max(now - self.t0, 1e-9):,.0f} tokens/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if step == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def fit(model, optimizer, next_batch, loss_fn, steps, clip=1.0, log_every=100, stream=None,
        transform=None):
    """The training loop shared by the tasks.

    ``next_batch(state) -> (x, target, state)`` supplies device arrays and the (h, c) to start from
    (None, or the state returned by the previous forward for truncated BPTT). ``loss_fn(pred, target)
    -> (loss, dpred)``. ``transform(loss) -> number`` maps the logged loss (e.g. nats to bits).
    Returns (history [(step, loss)], seconds, tokens).
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


def make_optimizer(model, name, lr, weight_decay=0.0):
    kwargs = {"lr": lr}
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    # float32/float64: the optimizer itself; bfloat16/float16: float32 master weights (+ loss scaling)
    return mixed_precision(name, model.params, model.grads, model.dtype, **kwargs)


def save_plot(history, path, title, ylabel):
    """Loss-curve PNG if matplotlib is installed; returns the path or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    steps, losses = zip(*history)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train_adding(steps=2000, T=100, B=64, hidden=64, layers=1, lr=1e-2, clip=1.0, optimizer="adam",
                 device="auto", dtype="float32", seed=0, out_dir="runs/adding", log_every=100, stream=None):
    """Train on the adding problem; returns a summary dict (held-out MSE, paths, timings)."""
    rng = np.random.default_rng(seed)
    model = SequenceModel(2, hidden, 1, layers, head="last", dtype=dtype, device=device, seed=seed)
    opt = make_optimizer(model, optimizer, lr)
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
    os.makedirs(out_dir, exist_ok=True)
    ckpt = save_checkpoint(os.path.join(out_dir, "checkpoint.npz"), model, opt,
                           extra={"task": "adding", "T": T, "test_mse": test_mse})
    plot = save_plot(history, os.path.join(out_dir, "loss.png"), f"adding problem, T={T}", "train MSE")
    return {"task": "adding", "device": model.device, "steps": steps, "T": T, "B": B, "hidden": hidden,
            "layers": layers, "train_seconds": wall, "tokens_per_second": tokens / wall,
            "baseline_mse": baseline, "test_mse": test_mse, "checkpoint": ckpt, "plot": plot,
            "history": history}


def train_charlm(steps=2000, T=64, B=32, hidden=256, layers=1, lr=3e-3, clip=1.0, optimizer="adam",
                 device="auto", dtype="float32", seed=0, out_dir="runs/charlm", log_every=100,
                 sample_length=300, stream=None):
    """Train a character model on the shipped text; returns held-out bits per character and a sample."""
    text = load_corpus()
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    split = int(0.9 * len(ids))
    train_ids, test_ids = ids[:split], ids[split:]
    V = len(vocab)
    model = SequenceModel(V, hidden, V, layers, head="all", dtype=dtype, device=device, seed=seed)
    opt = make_optimizer(model, optimizer, lr)
    xp = model.xp
    batches = StreamBatches(train_ids, T, B)

    def next_batch(state):
        xi, yi, reset = batches.next()
        # Carry (h, c) from the previous chunk of the same streams: truncated BPTT.
        return one_hot(xp.asarray(xi), V, model.dtype, xp), xp.asarray(yi), None if reset else state

    def loss_fn(logits, targets):   # ids come from our own vocabulary: no per-step range check (sync)
        return softmax_cross_entropy(logits, targets, check_targets=False)

    history, wall, tokens = fit(model, opt, next_batch, loss_fn, steps, clip, log_every,
                                stream, transform=nats_to_bits)
    test_bpc = evaluate_bpc(model, test_ids, V)
    os.makedirs(out_dir, exist_ok=True)
    ckpt = save_checkpoint(os.path.join(out_dir, "checkpoint.npz"), model, opt,
                           extra={"task": "charlm", "vocab": vocab.chars, "test_bpc": test_bpc})
    plot = save_plot(history, os.path.join(out_dir, "loss.png"), "char LM (KJV Genesis-Exodus)",
                     "train bits/char")
    text_sample = sample_text(model, vocab, sample_length, seed=seed, prime="And God said")
    return {"task": "charlm", "device": model.device, "steps": steps, "T": T, "B": B, "hidden": hidden,
            "layers": layers, "train_seconds": wall, "tokens_per_second": tokens / wall,
            "test_bpc": test_bpc, "uniform_bpc": float(np.log2(V)), "checkpoint": ckpt, "plot": plot,
            "sample": text_sample, "history": history}


def evaluate_bpc(model, ids, V, T=128, streams=16):
    """Bits per character of ``ids`` under the model, in eval mode. The text is read as ``streams``
    contiguous parallel streams with the state carried along each, so only ~len/streams sequential
    steps are needed; each stream's first characters are predicted without earlier context."""
    xp = model.xp
    streams = max(1, min(streams, (len(ids) - 1) // 2))
    batches = StreamBatches(ids, 1, streams)
    n = batches.n
    model.eval()
    state, total, count = None, 0.0, 0
    for s in range(0, n, T):
        xi, yi = batches.inputs[s: s + T], batches.targets[s: s + T]          # (t, streams)
        logits, state = model(one_hot(xp.asarray(xi), V, model.dtype, xp), state)
        loss, _ = softmax_cross_entropy(logits, xp.asarray(yi))
        total += float(loss) * yi.size
        count += yi.size
    model.train()
    return nats_to_bits(total / max(count, 1))


def sample_text(model, vocab, length, seed=0, prime="\n", temperature=0.8):
    """Generate ``length`` characters after ``prime``, one step at a time with the state carried."""
    xp, V = model.xp, len(vocab)
    rng = np.random.default_rng(seed)
    model.eval()
    logits, state = model(one_hot(xp.asarray(vocab.encode(prime)[:, None]), V, model.dtype, xp))
    out = []
    last = np.asarray(model.lstm._be.to_numpy(logits[-1, 0]), dtype=np.float64)
    for _ in range(length):
        z = last / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        nxt = int(rng.choice(V, p=p))
        out.append(nxt)
        logits, state = model(one_hot(xp.asarray(np.array([[nxt]])), V, model.dtype, xp), state)
        last = np.asarray(model.lstm._be.to_numpy(logits[-1, 0]), dtype=np.float64)
    model.train()
    return prime + vocab.decode(out)


def model_from_checkpoint(path, device="auto"):
    """Rebuild the model saved by the trainers and load its parameters: (model, meta)."""
    meta, _ = read_checkpoint(path)
    cfg = dict(meta["config"])
    model = SequenceModel(cfg.pop("input_size"), cfg.pop("hidden_size"), cfg.pop("output_size"),
                          cfg.pop("num_layers"), device=device, **cfg)
    load_checkpoint(path, model)
    return model, meta


def summary_json(summary):
    s = {k: v for k, v in summary.items() if k != "history"}
    return json.dumps(s, indent=2)
