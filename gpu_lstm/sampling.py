"""Text generation from a character model, and rebuilding a model from a trainer's checkpoint."""

import os
from typing import Any, Dict, Tuple

import numpy as np

from . import _checks as ck
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from .model import SequenceModel
from .tasks import CharVocab, one_hot


def sample_text(model: SequenceModel, vocab: CharVocab, length: int, seed: int = 0, prime: str = "\n",
                temperature: float = 0.8) -> str:
    """Generate characters after ``prime``, one step at a time with the state carried.

    Parameters
    ----------
    model : SequenceModel
        A character model (head='all', one-hot inputs and logits over ``vocab``), in either layout;
        it runs in eval mode and is left in the mode it was in.
    vocab : CharVocab
    length : int
        Characters to generate (>= 1).
    seed : int
        Seeds the sampling.
    prime : str
        At least one character, every one in ``vocab``: the text the model reads first.
    temperature : float
        Positive; below 1 samples more conservatively.

    Returns
    -------
    str
        ``prime`` followed by the ``length`` generated characters.
    """
    length = ck.positive_int("length", length)
    temperature = ck.positive_float("temperature", temperature)
    seed = ck.seed("seed", seed)
    if not isinstance(prime, str) or not prime:
        raise ValueError(f"prime: expected at least one character, got {prime!r}")
    unknown = sorted(set(prime) - set(vocab.index))
    if unknown:
        raise ValueError(f"prime: expected characters of the model's vocabulary, got {unknown!r} "
                         f"which it does not have")
    xp, V = model.xp, len(vocab)
    if model.head_mode != "all":
        raise ValueError(f"model: expected a character model with head='all' (logits at every step), "
                         f"got head={model.head_mode!r}")
    if model.config["input_size"] != V:
        raise ValueError(f"model: expected {V} inputs (one-hot over the vocabulary), got {model.config['input_size']}")
    if model.config["output_size"] != V:
        raise ValueError(f"model: expected {V} outputs (the vocabulary's size), got {model.config['output_size']}")
    rng = np.random.default_rng(seed)

    def step(ids, state):
        """ids (T,) -> the logits of the last step (V,) as float64 on the host, and the state."""
        x = ids[None, :] if model.batch_first else ids[:, None]        # (1, T) or (T, 1)
        logits, state = model(one_hot(x, V, model.dtype, xp), state)
        last = logits[0, -1] if model.batch_first else logits[-1, 0]
        return np.asarray(model.lstm._be.to_numpy(last), dtype=np.float64), state

    was_training = model.training
    model.eval()
    try:
        last, state = step(vocab.encode(prime), None)
        out = []
        for _ in range(length):
            # Shifted before dividing: a tiny temperature sends the others to -inf (probability 0),
            # never the maximum to +inf (NaN probabilities).
            with np.errstate(over="ignore"):           # -inf there is intended
                p = np.exp((last - last.max()) / temperature)
            p /= p.sum()
            nxt = int(rng.choice(V, p=p))
            out.append(nxt)
            last, state = step(np.array([nxt]), state)
    finally:
        if was_training:
            model.train()
    return prime + vocab.decode(out)


def model_from_checkpoint(path: "str | os.PathLike", device: str = "auto") -> Tuple[SequenceModel, Dict[str, Any]]:
    """Rebuild the model saved by the trainers and load its parameters.

    Parameters
    ----------
    path : str or path-like
        A checkpoint written by :func:`gpu_lstm.training.train_adding` / ``train_charlm`` (or any
        :func:`gpu_lstm.save_checkpoint` of a :class:`SequenceModel`).
    device : {'auto', 'cpu', 'gpu'}

    Returns
    -------
    model : SequenceModel
    meta : dict
        The checkpoint's metadata.
    """
    meta, _ = read_checkpoint(path)
    cfg = meta.get("config") or {}
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint: {path} has corrupt metadata: config is a {type(cfg).__name__}, "
                              f"expected the model's constructor arguments")
    cfg = dict(cfg)
    needed = ("input_size", "hidden_size", "output_size", "num_layers")
    if any(k not in cfg for k in needed):
        raise CheckpointError(f"checkpoint: {path} holds no SequenceModel configuration "
                              f"(expected keys {list(needed)}, got {sorted(cfg)})")
    model = SequenceModel(cfg.pop("input_size"), cfg.pop("hidden_size"), cfg.pop("output_size"),
                          cfg.pop("num_layers"), device=device, **cfg)
    load_checkpoint(path, model)
    return model, meta
