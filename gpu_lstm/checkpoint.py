"""Checkpoints: parameters, optimizer state and metadata in one .npz file, written atomically.

Write: to a temporary file in the target's folder, flushed and fsync'ed, then ``os.replace``d over the
target, so a crash mid-save leaves the old checkpoint (or none), never a truncated one. A process
killed with SIGKILL cannot remove its temporary file, so each one carries its writer's process id and
the next save in that folder removes those whose writer is gone. The file gets the permissions the
umask gives any new file (``mkstemp`` alone would make it 0600). Read: every array is checked against
the model (names, shapes) before anything is copied, so a wrong or corrupt file raises
:class:`CheckpointError` and leaves the model as it was. Round trips are bitwise.
"""

import json
import os
import re
import tempfile
import zipfile
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple

import numpy as np

from . import _checks as ck


FORMAT = "gpu_lstm.checkpoint/1"
_TMP_PREFIX = ".ckpt-"
_TMP_NAME = re.compile(r"^\.ckpt-(\d+)-.*\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match the model or optimizer."""


def _umask():
    # os.umask can only be read by setting it; restore it at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True        # exists but belongs to someone else, or cannot tell: leave its file
    return True


def remove_stale_temporaries(folder: str) -> list:
    """Delete ``.ckpt-<pid>-*.tmp`` files in ``folder`` whose writing process no longer exists.

    Parameters
    ----------
    folder : str
        The folder a checkpoint is being written to.

    Returns
    -------
    list of str
        The paths removed.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TMP_NAME.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            path = os.path.join(folder, name)
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def write_atomically(path: str, write: Callable[[BinaryIO], Any], mode: int = 0o666) -> str:
    """Write a file through ``write(fileobj)`` to a temporary file, fsync, and rename it over ``path``.

    Parameters
    ----------
    path : str
        The target file. Its folder must exist.
    write : callable
        Called with a binary file object open for writing.
    mode : int
        Permission bits before the umask is applied, as for ``open``.

    Returns
    -------
    str
        ``path``.
    """
    # Through a symlink (latest.npz -> run-5.npz): the rename replaces its target, not the link.
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
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


def _path(path: Any) -> str:
    """path as a str, or TypeError / ValueError naming it."""
    path = ck.path("path", path, "a str or path-like")
    if not path:
        raise ValueError("path: expected a file name, got ''")
    return path


def _check_str_keys(name: str, value: Any) -> None:
    """JSON object keys are strings: a non-str key would come back as one (or be lost to a
    same-named str key), so extra would not read back as it was written."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{name}: expected str keys, got {k!r} ({type(k).__name__}); JSON keys are strings")
            _check_str_keys(f"{name}[{k!r}]", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_str_keys(f"{name}[{i}]", v)


def _check_model_and_optimizer(model, optimizer, error=ValueError, prefix=""):
    """What saving and loading both need: a model with a params dict, and an optimizer (if any) with
    state_dict() over some or all of its parameters (``error``, ``prefix``: how a foreign parameter is
    reported)."""
    if not hasattr(model, "params"):
        raise TypeError(f"model: expected a model with a params dict, got {type(model).__name__}")
    if optimizer is None:
        return
    if not (hasattr(optimizer, "state_dict") and hasattr(optimizer, "params")):
        raise TypeError(f"optimizer: expected an optimizer with state_dict() and params (gpu_lstm.optim), "
                        f"got {type(optimizer).__name__}")
    foreign = sorted(set(optimizer.params) - set(model.params))
    if foreign:
        raise error(f"{prefix}optimizer: expected an optimizer over the model's parameters, got one over "
                    f"{', '.join(map(repr, foreign))}, which the model does not have")


def save_checkpoint(path: "str | os.PathLike", model: Any, optimizer: Any = None,
                    extra: Optional[Dict[str, Any]] = None) -> str:
    """Save a model's parameters (and optimizer state, and metadata) to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : str or path-like
        The file to write; its folder is created if needed. An existing file is replaced only once
        the new one is complete.
    model : SequenceModel or LSTM
        Anything with a ``params`` dict (and optionally a ``config`` dict, stored for rebuilding).
    optimizer : Optimizer, optional
        Its step count, hyper-parameters and state slots are saved too.
    extra : dict, optional
        JSON-serialisable metadata stored with the checkpoint.

    Returns
    -------
    str
        The path written.
    """
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra: expected a dict or None, got {type(extra).__name__}")
    _check_str_keys("extra", extra or {})
    _check_model_and_optimizer(model, optimizer)
    path = _path(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"path: expected a file name, got the folder {path!r}")
    host = _model_backend(model).to_numpy   # a GPU bfloat16 model's uint16 bits come back as bfloat16
    arrays = {f"param/{k}": host(v) for k, v in model.params.items()}
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
                arrays[f"optim/{k}/{s}"] = host(v)
    # .npz has no bfloat16: such arrays are stored as their uint16 bits, and the metadata says which.
    bits16 = sorted(k for k, v in arrays.items() if v.dtype.name == "bfloat16")
    if bits16:
        meta["bfloat16"] = bits16
        for k in bits16:
            arrays[k] = arrays[k].view(np.uint16)
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"extra: expected JSON-serialisable values, got {exc}") from None
    arrays["meta"] = np.frombuffer(text.encode(), dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def read_checkpoint(path: "str | os.PathLike") -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Read a checkpoint file without a model.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    meta : dict
        ``format``, ``config`` (the model's constructor arguments), ``extra`` and ``optimizer``.
    arrays : dict of str to numpy.ndarray
        ``"param/<name>"`` and ``"optim/<name>/<slot>"`` arrays.

    Raises
    ------
    CheckpointError
        When the file is missing, unreadable, corrupt or not a gpu_lstm checkpoint.
    """
    path = _path(path)
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
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint: {path} has corrupt metadata: the metadata is not a JSON object "
                              f"but a {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    bits16 = meta.pop("bfloat16", [])
    if bits16:
        if not isinstance(bits16, list) or any(k not in arrays or arrays[k].dtype != np.uint16 for k in bits16):
            raise CheckpointError(f"checkpoint: {path} has corrupt bfloat16 metadata: {bits16!r}")
        from .backend.lowp import dtype_of
        bf16 = dtype_of("bfloat16")
        for k in bits16:
            arrays[k] = arrays[k].view(bf16)
    return meta, arrays


def load_checkpoint(path: "str | os.PathLike", model: Any, optimizer: Any = None) -> Dict[str, Any]:
    """Load parameters (and optimizer state) into a model, all or nothing.

    Parameters
    ----------
    path : str or path-like
    model : SequenceModel or LSTM
        Must have exactly the checkpoint's parameter names, shapes and dtypes.
    optimizer : Optimizer, optional
        Of the class that was saved; its step count and state slots are restored.

    Returns
    -------
    dict
        The checkpoint's metadata (see :func:`read_checkpoint`).

    Raises
    ------
    CheckpointError
        When anything does not match; nothing is written in that case.
    """
    _check_model_and_optimizer(model, optimizer, error=CheckpointError, prefix="checkpoint: ")
    meta, arrays = read_checkpoint(path)
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    missing = sorted(set(model.params) - set(params))
    unexpected = sorted(set(params) - set(model.params))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint: {path} does not match the model: missing {missing}, "
                              f"unexpected {unexpected}")
    be = _model_backend(model)
    for k, v in params.items():
        want = be.dtype_of(model.params[k])   # logical: a GPU bfloat16 model's uint16 arrays are bfloat16
        if tuple(v.shape) != tuple(model.params[k].shape) or v.dtype != want:
            raise CheckpointError(f"checkpoint: {path}: parameter {k!r} is {v.dtype.name} "
                                  f"{tuple(v.shape)}, the model expects {want.name} "
                                  f"{tuple(model.params[k].shape)}")
    opt_state = None
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"checkpoint: {path} holds no optimizer state")
        saved = meta["optimizer"]
        if not isinstance(saved, dict) or "step_count" not in saved:
            raise CheckpointError(f"checkpoint: {path} has corrupt optimizer metadata: {saved!r}")
        if saved.get("class") != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint: {path} holds {saved.get('class')} state, "
                                  f"not {type(optimizer).__name__}")
        state = {}
        # The optimizer's own parameters: all of the model's, or some (e.g. only the head trained).
        for k in optimizer.params:
            state[k] = {}
            for s in optimizer.slots:
                key = f"optim/{k}/{s}"
                if key not in arrays:
                    raise CheckpointError(f"checkpoint: {path}: optimizer slot {key!r} missing")
                state[k][s] = arrays[key]
        # The optimizer's own rules (step count, every slot's shape and dtype), checked before any write.
        try:
            step_count, state = optimizer.check_state_dict({"step_count": saved["step_count"], "state": state})
        except (TypeError, ValueError, KeyError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise CheckpointError(f"checkpoint: {path} has optimizer state the optimizer rejects: {msg}") from None
        for k in state:       # dtype kind 'f' only: integer slots cannot come from a float optimizer
            for s, v in state[k].items():
                if v.dtype.kind != "f":
                    raise CheckpointError(f"checkpoint: {path}: optimizer slot 'optim/{k}/{s}' is "
                                          f"{v.dtype.name}, expected floating point")
        opt_state = step_count, state
    rng = _mask_rng(model)
    mask_state = meta.get("mask_rng") if rng is not None else None
    if mask_state is not None:
        try:
            ck.rng_state("mask_rng", mask_state)     # the rules of LSTM.set_rng_state, checked before any write
        except (TypeError, ValueError, KeyError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise CheckpointError(f"checkpoint: {path} has a corrupt dropout/zoneout generator state: "
                                  f"{msg}") from None
    # Everything checked: now write.
    for k, v in params.items():     # uploaded by the backend (bfloat16 as its bit patterns)
        model.params[k][...] = be.asarray(f"param/{k}", v)
    if opt_state is not None:
        optimizer._write_state(*opt_state)      # checked above
    if mask_state is not None:
        rng.set_rng_state(mask_state)
    return meta


def _model_backend(model):
    """The backend of the model's arrays: its own (LSTM, or SequenceModel's LSTM), which knows their
    logical dtypes; for any other object with a ``params`` dict, the backend its arrays' place and
    dtype give (``backend_for``)."""
    for obj in (model, getattr(model, "lstm", None)):
        be = getattr(obj, "_be", None)
        if be is not None and hasattr(be, "dtype_of"):
            return be
    from .backend import backend_for
    first = next(iter(model.params.values()), None)
    return backend_for(first) if first is not None else backend_for(np.zeros(0, np.float32))


def _mask_rng(model):
    """The LSTM whose dropout/zoneout generator state a checkpoint carries (model or model.lstm)."""
    for obj in (model, getattr(model, "lstm", None)):
        if obj is not None and hasattr(obj, "rng_state"):
            return obj
    return None
