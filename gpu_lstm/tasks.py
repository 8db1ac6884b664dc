"""The data of the shipped tasks (the training loop is in :mod:`gpu_lstm.training`).

* The adding problem (Hochreiter and Schmidhuber, 1997; the two-marker form of Le et al., 2015): each
  step carries a value in [0, 1) and a marker; exactly two steps are marked, one in each half, and the
  target is the sum of their values. Predicting the mean (1.0) gives MSE = Var = 2/12 ~ 0.167.
* Character-level language modelling on the books of Genesis and Exodus from the King James Version
  (1611, public domain; text taken from Debian's bible-kjv-text 4.38, verse numbers removed), shipped
  as gpu_lstm/data/kjv_genesis_exodus.txt.gz (366 KB of text). The last 10 % is held out.
"""

import gzip
import numbers
import os
from importlib import resources
from typing import Any, Tuple

import numpy as np

from . import _checks as ck

CORPUS = "kjv_genesis_exodus.txt.gz"


# ---- data ---------------------------------------------------------------------------------------------
def adding_batch(rng: np.random.Generator, T: int, B: int, dtype: str = "float32") -> Tuple[np.ndarray, np.ndarray]:
    """One batch of the adding problem.

    Parameters
    ----------
    rng : numpy.random.Generator
    T : int
        Sequence length, >= 2 (one marker falls in each half).
    B : int
        Batch size.
    dtype : str

    Returns
    -------
    x : numpy.ndarray
        (T, B, 2): [value, marker] per step.
    y : numpy.ndarray
        (B, 1): the sum of the two marked values.
    """
    T = ck.positive_int("T", T)
    if T < 2:
        raise ValueError(f"T: expected at least 2 steps for the adding problem (one marker per half), got {T}")
    B = ck.positive_int("B", B)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got "
                        f"{type(rng).__name__}")
    dtype = ck.float_dtype(dtype)       # an integer dtype would truncate the values in [0, 1) to 0
    values = rng.uniform(0.0, 1.0, (T, B))
    first = rng.integers(0, T // 2, B)
    second = rng.integers(T // 2, T, B)
    markers = np.zeros((T, B))
    markers[first, np.arange(B)] = 1.0
    markers[second, np.arange(B)] = 1.0
    x = np.stack([values, markers], axis=-1).astype(dtype)
    y = (values[first, np.arange(B)] + values[second, np.arange(B)])[:, None].astype(dtype)
    return x, y


def load_corpus() -> str:
    """The shipped English text.

    Returns
    -------
    str
        Genesis and Exodus (KJV), about 366,000 characters.
    """
    data = resources.files("gpu_lstm").joinpath("data", CORPUS).read_bytes()
    return gzip.decompress(data).decode("utf-8")


def load_text(path: "str | os.PathLike") -> str:
    """Read a user's training text (UTF-8; ``.gz`` files are decompressed).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str

    Raises
    ------
    OSError
        When the file cannot be read.
    ValueError
        When it is not UTF-8 text or holds fewer than two distinct characters.
    """
    path = ck.path("text", path, "a file path (str or path-like)")
    if os.path.isdir(path):
        raise IsADirectoryError(f"text: expected a text file, got the folder {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise type(exc)(f"text: expected a readable file, got {path!r} ({exc.strerror or exc})") from None
    # gzip by its magic bytes or by name (any case): 'notes.GZ' is as compressed as 'notes.gz'.
    if data[:2] == b"\x1f\x8b" or path.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ValueError(f"text: expected a gzip file, got {path!r} that is not one ({exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"text: expected UTF-8 text, got {path!r} with a non-UTF-8 byte at offset "
                         f"{exc.start}") from None
    if len(set(text)) < 2:
        raise ValueError(f"text: expected at least two distinct characters, got {len(text)} characters "
                         f"({len(set(text))} distinct) in {path!r}")
    return text


class CharVocab:
    """Characters <-> integer ids, in sorted order so a vocabulary is reproducible from its string.

    Parameters
    ----------
    chars : str
        Any text; its distinct characters form the vocabulary.
    """

    def __init__(self, chars: str) -> None:
        self.chars = "".join(sorted(set(chars)))
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Encode text.

        Parameters
        ----------
        text : str
            Characters of the vocabulary only (ValueError otherwise).

        Returns
        -------
        numpy.ndarray
            (len(text),) int64 ids.
        """
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"text: characters not in the vocabulary: {unknown!r}")
        return np.array([self.index[ch] for ch in text], dtype=np.int64)

    def decode(self, ids: Any) -> str:
        """Decode ids.

        Parameters
        ----------
        ids : iterable of int
            Each in [0, len(vocab)).

        Returns
        -------
        str
        """
        out = []
        for i in ids:
            # No negative indexing (-1 is not the last character) and no truncated floats.
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):     # np.bool_ is not Integral
                raise TypeError(f"ids: expected integers in [0, {len(self.chars)}), got {i!r} ({type(i).__name__})")
            if not 0 <= i < len(self.chars):
                raise ValueError(f"ids: expected integers in [0, {len(self.chars)}), got {int(i)}")
            out.append(self.chars[int(i)])
        return "".join(out)


def one_hot(ids: Any, V: int, dtype: Any, xp: Any = np) -> Any:
    """One-hot encode integer ids.

    Parameters
    ----------
    ids : array of int
        Any shape (...), values in [0, V). Host ids are checked on the host and then copied; device
        ids cost one synchronisation to check, so loops pass host ids.
    V : int
        Vocabulary size.
    dtype : dtype
    xp : module
        ``numpy`` or ``cupy``: where the result is built.

    Returns
    -------
    array
        (..., V).
    """
    V = ck.positive_int("V", V)
    if not (hasattr(ids, "dtype") and hasattr(ids, "shape")):
        ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":       # bool ids would select rows as a mask, floats fail as indices
        raise TypeError(f"ids: expected integers, got dtype {ids.dtype.name}")
    if ids.size and (bool((ids < 0).any()) or bool((ids >= V).any())):   # -1 would be the last class
        raise ValueError(f"ids: expected values in [0, {V}), got values from {int(ids.min())} to {int(ids.max())}")
    return xp.eye(V, dtype=dtype)[xp.asarray(ids)]


class StreamBatches:
    """Truncated-BPTT batches over one long id sequence: B parallel contiguous streams read T steps
    at a time, so the (h, c) carried from chunk k is the right state for chunk k+1.

    Parameters
    ----------
    ids : array or sequence of int
        (N,) integer ids, N >= B * T + 1.
    T : int
        Steps per chunk.
    B : int
        Parallel streams.
    """

    def __init__(self, ids: np.ndarray, T: int, B: int) -> None:
        T, B = ck.positive_int("T", T), ck.positive_int("B", B)
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise TypeError(f"ids: expected a 1-D sequence of integer ids, got dtype {ids.dtype.name} "
                            f"shape {ck.shape_str(ids.shape)}")
        n = (len(ids) - 1) // B
        if n < T:
            raise ValueError(f"text: expected at least B * T + 1 = {B * T + 1} characters for B={B} "
                             f"streams of T={T} steps, got {len(ids)}; the text is too short")
        self.inputs = ids[: n * B].reshape(B, n).T          # (n, B)
        self.targets = ids[1: n * B + 1].reshape(B, n).T    # next character
        self.T, self.n, self.pos = T, n, 0

    def next(self) -> Tuple[np.ndarray, np.ndarray, bool]:
        """The next chunk.

        Returns
        -------
        x, y : numpy.ndarray
            (T, B) input ids and next-character target ids.
        reset : bool
            True when the streams wrapped around (the carried state no longer applies).
        """
        reset = False
        if self.pos + self.T > self.n:
            self.pos, reset = 0, True
        s = slice(self.pos, self.pos + self.T)
        self.pos += self.T
        return self.inputs[s], self.targets[s], reset
