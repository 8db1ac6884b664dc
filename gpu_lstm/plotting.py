"""The loss-curve PNG of a training run (needs matplotlib: the ``[plot]`` extra)."""

from typing import Optional, Sequence, Tuple


def save_plot(history: Sequence[Tuple[int, float]], path: str, title: str, ylabel: str) -> Optional[str]:
    """Write the loss curve as a PNG, on a log scale.

    The y axis is logarithmic because training losses fall over orders of magnitude (the adding
    problem's MSE goes from 0.17 to 1e-4); on a linear axis everything after the first drop is flat.

    Parameters
    ----------
    history : sequence of (step, loss)
        Losses must be > 0 to be drawn on the log scale.
    path : str
        The PNG file to write.
    title, ylabel : str

    Returns
    -------
    str or None
        ``path``, or None when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    steps, losses = zip(*history)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses)
    if min(losses) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel + (" (log scale)" if min(losses) > 0 else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
