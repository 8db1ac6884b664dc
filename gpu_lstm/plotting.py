"""The loss-curve PNG of a training run (needs matplotlib: the ``[plot]`` extra)."""

from typing import Optional, Sequence, Tuple


def save_plot(history: Sequence[Tuple[int, float]], path: str, title: str, ylabel: str) -> Optional[str]:
    """Write the loss curve as a PNG, on a log scale.

    The y axis is logarithmic because training losses fall over orders of magnitude (the adding
    problem's MSE goes from 0.17 to 1e-4); on a linear axis everything after the first drop is flat.

    Parameters
    ----------
    history : sequence of (step, loss)
        At least one pair; the y axis is logarithmic when every loss is > 0.
    path : str
        The file to write: a PNG whatever its extension.
    title : str
    ylabel : str

    Returns
    -------
    str or None
        ``path``, or None when matplotlib is not installed.
    """
    for name, value in (("title", title), ("ylabel", ylabel)):
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected a str, got {type(value).__name__}")
    if len(history) == 0:
        raise ValueError("history: expected at least one (step, loss) pair, got none")
    try:
        # A Figure of its own, not pyplot: no global backend switched under the caller, no figure
        # registry to leak into.
        from matplotlib.figure import Figure
    except ImportError:
        return None
    steps, losses = zip(*history)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(steps, losses)
    if min(losses) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel + (" (log scale)" if min(losses) > 0 else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")      # the format from the extension would not be a PNG
    return path
