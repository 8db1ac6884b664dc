"""A training run's output folder and the checks it makes before its first step, so that no error can
waste the run: the output folder is writable, and the model and its workspace fit in memory. At save
time, :func:`remove_stale` clears an earlier run's files that this run does not rewrite."""

import os
import tempfile


def prepare_output(out_dir: str) -> str:
    """Create ``out_dir`` and prove a file can be written there; returns its absolute path.

    A full disk cannot be detected this way (space can run out later): the trainers handle that when
    they save, by writing the checkpoint elsewhere and saying where.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"out_dir: expected a folder, got {out_dir!r}, which is an existing file")
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-") as f:
            f.write(b"x")
            f.flush()
    except OSError as exc:
        # The same OSError subclass, with a message only (no "[Errno N]" in the one-line CLI error).
        raise type(exc)(f"out_dir: expected a writable folder, got {out_dir!r} ({exc.strerror or exc})") from None
    return os.path.abspath(out_dir)


def available_memory():
    """Bytes of memory the OS could give this process now (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def training_bytes(input_size, hidden, output_size, layers, T, B, itemsize, slots=2):
    """A generous estimate of the host memory one training run of a SequenceModel needs: parameters
    with their gradients, optimizer slots and float64 initialisation, plus the per-step buffers of
    forward and backward (gates, states, outputs and their gradients for every layer and step)."""
    params = 0
    for k in range(layers):
        in_k = input_size if k == 0 else hidden
        params += 4 * hidden * (in_k + hidden + 1)
    params += output_size * (hidden + 1)
    per_param = (2 + slots) * itemsize + 8
    steps = T * B * (layers * (4 * hidden * 2 + hidden * 8) + 3 * input_size + 3 * output_size)
    return params * per_param + steps * itemsize


def check_fits_in_memory(needed, what):
    """Raise MemoryError naming ``what`` when ``needed`` bytes exceed the available memory."""
    free = available_memory()
    if free is not None and needed > free:
        raise MemoryError(f"{what}: expected sizes whose training fits in the {free / 2**30:.1f} GiB of "
                          f"available memory, got sizes needing about {needed / 2**30:.1f} GiB")


def remove_stale(out_dir, names):
    """Remove the files ``names`` of an earlier run from ``out_dir`` (those this run does not rewrite),
    so a folder never mixes two runs' outputs. Missing ones are fine.

    Parameters
    ----------
    out_dir : str
    names : iterable of str
    """
    for name in names:
        try:
            os.unlink(os.path.join(out_dir, name))
        except FileNotFoundError:
            pass
