"""Argument checks shared by the public classes. Every message names the argument, what was expected
and what was received, so a user never has to read a traceback into the library to fix a call."""

import numbers
import os

import numpy as np

_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def positive_int(name, value):
    """Return ``value`` as int if it is a positive integer (bool excluded); raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive integer, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value}")
    return int(value)


def path(name, value, expected):
    """``value`` (a str, bytes or os.PathLike) as a str path; TypeError naming ``name`` and ``expected``
    (e.g. "a str or path-like") otherwise."""
    try:
        return os.fsdecode(os.fspath(value))
    except TypeError:
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__}") from None


def flag(name, value, allow_none=False):
    """``value`` as a bool if it is True or False (NumPy's bool too), or None when allowed; a string
    such as "no" is refused rather than read as True."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False{' or None' if allow_none else ''}, got {value!r}")
    return bool(value)


def float_kind(name, dtype):
    """Raise TypeError naming ``name`` unless ``dtype`` (a logical dtype: a GPU bfloat16 array's, not
    its uint16 bits) is a floating-point type, bfloat16 included."""
    if dtype.kind != "f" and dtype.name != "bfloat16":
        raise TypeError(f"{name}: expected a float array, got dtype {dtype.name}")


def pair(name, value, hint=""):
    """Raise TypeError naming ``name`` unless ``value`` is None or a 2-tuple/list (an (h, c) state)."""
    if value is not None and (not isinstance(value, (tuple, list)) or len(value) != 2):
        got = f"{type(value).__name__} of length {len(value)}" if isinstance(value, (tuple, list)) \
            else type(value).__name__
        raise TypeError(f"{name}: expected a pair (h, c) of arrays{hint}, got {got}")


def nonnegative_int(name, value):
    """Return ``value`` as int if it is an integer >= 0 (bool excluded); raise naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= 0, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value}")
    return int(value)


def finite_float(name, value, expected):
    """Return ``value`` as a finite float; raise naming ``name`` and ``expected`` (the caller's range,
    e.g. "a finite number > 1", which it checks itself) otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, {expected}, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return value


def nonnegative_float(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return value


def positive_float(name, value):
    """Return ``value`` as float if it is a finite number > 0; raise naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number > 0, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")
    return value


def seed(name, value):
    """None or an int (NumPy integers included, bool excluded) >= 0, as numpy's generators accept."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= 0 or None, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name}: expected an int >= 0 or None, got {value}")
    return int(value)


def rng_state(name, value):
    """``(seed, calls)`` of a dropout/zoneout mask generator state ``{'seed': s, 'calls': n}``, as
    ``LSTM.rng_state()`` returns it: a dict with int entries (bool excluded), 0 <= s < 2^32, n >= 0.
    Raises TypeError/ValueError naming ``name`` (and the entry) otherwise; never writes anything."""
    expected = "a dict {'seed': int in [0, 2^32), 'calls': int >= 0}"
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    missing = [k for k in ("seed", "calls") if k not in value]
    if missing:
        raise KeyError(f"{name}: expected {expected}, got {value!r} (no {', '.join(map(repr, missing))})")
    out = []
    for key, upper in (("seed", 2 ** 32), ("calls", None)):
        v = value[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}[{key!r}]: expected an int, got {v!r} ({type(v).__name__})")
        if v < 0 or (upper is not None and v >= upper):
            bound = "in [0, 2^32)" if upper else ">= 0"
            raise ValueError(f"{name}[{key!r}]: expected an int {bound}, got {v}")
        out.append(int(v))
    return tuple(out)


def real_array(name, arr):
    """Raise TypeError unless ``arr`` holds real numbers (floats or integers), so that casting it to the
    model's dtype cannot fail halfway through a write or silently drop an imaginary part."""
    if arr.dtype.kind not in "fiu" and arr.dtype.name != "bfloat16":   # ml_dtypes.bfloat16: kind 'V'
        raise TypeError(f"{name}: expected an array of real numbers, got dtype {arr.dtype.name}")
_EXPECTED = "'float32', 'float64', 'bfloat16' or 'float16'"


def float_dtype(value):
    """Normalise 'float32' / 'float64' / 'bfloat16' / 'float16' (or the NumPy / ml_dtypes
    equivalents) to a NumPy dtype. 'bfloat16' needs ml_dtypes (ImportError naming it otherwise)."""
    if value is None:       # np.dtype(None) is float64, not the float32 default: refused, not guessed
        raise TypeError(f"dtype: expected {_EXPECTED}, got None")
    if isinstance(value, str) and value in ("bfloat16", "float16"):
        from .backend.lowp import dtype_of
        return dtype_of(value)
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"dtype: expected {_EXPECTED}, got {value!r}") from None
    if dt.name in ("bfloat16", "float16"):
        from .backend.lowp import dtype_of
        return dtype_of(dt.name)
    if dt.name not in _DTYPES:
        raise TypeError(f"dtype: expected {_EXPECTED}, got {dt.name!r}")
    return _DTYPES[dt.name]


def shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_shape(name, arr, expected, what=None):
    """Raise ValueError unless ``arr.shape == expected``. ``what`` describes the axes, e.g. '(T, B, I)'."""
    if tuple(arr.shape) != tuple(expected):
        axes = f" {what}" if what else ""
        raise ValueError(f"{name}: expected shape{axes} = {shape_str(expected)}, got {shape_str(arr.shape)}")


def check_ndim(name, arr, ndim, what):
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array {what}, got {arr.ndim}-D with shape {shape_str(arr.shape)}")


def check_dtype(name, arr, dtype, backend=None):
    """Raise TypeError unless ``arr.dtype == dtype``. The hint only offers what works: rebuilding the
    model in the input's dtype is suggested only when the constructor accepts that dtype. With
    ``backend``, the array's logical dtype (``backend.dtype_of``: a GPU bfloat16 model's uint16 arrays
    hold bfloat16 bit patterns) is compared."""
    if backend is not None and backend.dtype_of(arr) == dtype:
        return
    if arr.dtype != dtype:
        if arr.dtype.kind not in "fiub":     # strings, objects (None): no cast would help
            raise TypeError(f"{name}: expected an array of {dtype.name} numbers, got dtype {arr.dtype.name}")
        hint = f"convert with .astype('{dtype.name}')"
        if arr.dtype.name in _DTYPES:
            hint += f" or build the model with dtype='{arr.dtype.name}'"
        raise TypeError(f"{name}: expected dtype {dtype.name}, got {arr.dtype.name} ({hint})")


def check_finite(name, arr, xp, backend=None):
    if backend is not None:
        arr = backend.astype(arr, backend.wide)   # 16-bit storage: test the widened (exact) values
    if not bool(xp.isfinite(arr).all()):
        raise ValueError(f"{name}: expected finite values (check_finite=True), got NaN or Inf")


def host_array(name, value):
    """``numpy.asarray(value)`` with NumPy's own conversion errors reported under the argument's name."""
    try:
        return np.asarray(value)
    except ValueError as exc:
        raise ValueError(f"{name}: expected an array, got {type(value).__name__} that NumPy cannot "
                         f"convert ({exc})") from None


def as_array(backend, name, value):
    """``backend.asarray`` with NumPy's own conversion errors (ragged nested lists, ...) reported under
    the argument's name."""
    try:
        return backend.asarray(name, value)
    except ValueError as exc:
        raise ValueError(f"{name}: expected an array, got {type(value).__name__} that NumPy cannot "
                         f"convert ({exc})") from None
