"""The training progress line, on stderr by default so that stdout stays parseable."""

import sys
import time
from typing import Optional, TextIO

from . import _checks as ck


class Progress:
    """One status line: redrawn in place on a terminal (at most 5 times a second), printed every
    ``every`` steps otherwise. Reading the loss syncs with the GPU, so it is only read when shown.

    Parameters
    ----------
    total : int
        The number of steps of the run.
    every : int
        Off a terminal, print a line every this many steps (and at the last step).
    stream : file-like, optional
        Where to write; ``sys.stderr`` by default.
    """

    def __init__(self, total: int, every: int, stream: Optional[TextIO] = None) -> None:
        self.total = ck.positive_int("total", total)
        self.every = ck.positive_int("every", every)
        if stream is not None and not hasattr(stream, "write"):
            raise TypeError(f"stream: expected a file-like object with write(), got {type(stream).__name__}")
        self.stream = sys.stderr if stream is None else stream   # `or` would swap an empty collector
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = self.last = time.perf_counter()

    def due(self, step: int) -> bool:
        """Whether :meth:`show` should be called at ``step``.

        Parameters
        ----------
        step : int

        Returns
        -------
        bool
        """
        if step == self.total:
            return True
        if self.tty:
            return time.perf_counter() - self.last > 0.2
        return step % self.every == 0

    def show(self, step: int, loss: float, tokens: int) -> None:
        """Write the line for ``step``.

        Parameters
        ----------
        step : int
        loss : float
            The loss to show (already converted, e.g. to bits).
        tokens : int
            Tokens (time steps times batch) processed so far, for the throughput.
        """
        self.last = now = time.perf_counter()
        width = 24
        done = int(width * min(max(step, 0), self.total) / self.total)    # the bar never overflows
        bar = "#" * done + "." * (width - done)
        line = (f"[{bar}] step {step}/{self.total}  loss {loss:.4f}  "
                f"{tokens / max(now - self.t0, 1e-9):,.0f} tokens/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if step == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
