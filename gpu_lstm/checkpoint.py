"""Checkpoints: parameters, optimizer state and metadata in one .npz file, written atomically.

Write: to a temporary file in the target's folder, flushed and fsync'ed, then ``os.replace``d over the
target, so a crash mid-save leaves the old checkpoint (or none), never a truncated one. Read: every
array is checked against the model (names, shapes) before anything is copied, so a wrong or corrupt
file raises :class:`CheckpointError` and leaves the model as it was. Round trips are bitwise.
"""

import json
import os
import tempfile
import zipfile

import numpy as np

from .lstm import to_numpy

FORMAT = "gpu_lstm.checkpoint/1"


class CheckpointError(ValueError):
    pass


def save_checkpoint(path, model, optimizer=None, extra=None):
    """Save ``model.params`` (and ``optimizer`` state, and JSON-able ``extra``) to ``path``."""
    arrays = {f"param/{k}": to_numpy(v) for k, v in model.params.items()}
    meta = {"format": FORMAT, "config": getattr(model, "config", {}), "extra": extra or {}}
    rng = _mask_rng(model)
    if rng is not None:      # dropout/zoneout mask generator (seed, call counter): resumes bitwise
        meta["mask_rng"] = rng.rng_state()
    if optimizer is not None:
        sd = optimizer.state_dict()
        meta["optimizer"] = {"class": type(optimizer).__name__, "step_count": sd["step_count"],
                             "hyperparameters": sd["hyperparameters"]}
        for k, slots in sd["state"].items():
            for s, v in slots.items():
                arrays[f"optim/{k}/{s}"] = to_numpy(v)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:   # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def read_checkpoint(path):
    """(meta dict, {name: array}) from a checkpoint file, or CheckpointError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint: {path} does not exist") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"checkpoint: {path} is not a readable gpu_lstm checkpoint "
                              f"(corrupt or truncated): {type(exc).__name__}: {exc}") from None
    if "meta" not in arrays:
        raise CheckpointError(f"checkpoint: {path} has no metadata; not a gpu_lstm checkpoint")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint: {path} has corrupt metadata ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta, arrays


def load_checkpoint(path, model, optimizer=None):
    """Load parameters (and optimizer state) into ``model``; returns the metadata dict."""
    meta, arrays = read_checkpoint(path)
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    missing = sorted(set(model.params) - set(params))
    unexpected = sorted(set(params) - set(model.params))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint: {path} does not match the model: missing {missing}, "
                              f"unexpected {unexpected}")
    for k, v in params.items():
        if tuple(v.shape) != tuple(model.params[k].shape) or v.dtype != model.params[k].dtype:
            raise CheckpointError(f"checkpoint: {path}: parameter {k!r} is {v.dtype.name} "
                                  f"{tuple(v.shape)}, the model expects {model.params[k].dtype.name} "
                                  f"{tuple(model.params[k].shape)}")
    opt_state = None
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"checkpoint: {path} holds no optimizer state")
        if meta["optimizer"]["class"] != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint: {path} holds {meta['optimizer']['class']} state, "
                                  f"not {type(optimizer).__name__}")
        state = {}
        for k in model.params:
            state[k] = {}
            for s in optimizer.slots:
                key = f"optim/{k}/{s}"
                if key not in arrays or arrays[key].shape != model.params[k].shape:
                    raise CheckpointError(f"checkpoint: {path}: optimizer slot {key!r} missing or misshapen")
                state[k][s] = arrays[key]
        opt_state = {"step_count": meta["optimizer"]["step_count"], "state": state}
    # Everything checked: now write.
    xp = model.xp
    for k, v in params.items():
        model.params[k][...] = xp.asarray(v)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    rng = _mask_rng(model)
    if rng is not None and "mask_rng" in meta:
        rng.set_rng_state(meta["mask_rng"])
    return meta


def _mask_rng(model):
    """The LSTM whose dropout/zoneout generator state a checkpoint carries (model or model.lstm)."""
    for obj in (model, getattr(model, "lstm", None)):
        if obj is not None and hasattr(obj, "rng_state"):
            return obj
    return None
