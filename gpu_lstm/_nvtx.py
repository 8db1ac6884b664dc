"""NVTX ranges when the optional ``nvtx`` package is installed; a no-op context otherwise.

Ranges name the algorithm's parts (forward, backward, each layer) so a profiler timeline reads like
lstm.py. Imported lazily: nothing happens at ``import gpu_lstm``.
"""

import contextlib

_nvtx = None
_tried = False


def annotate(message):
    global _nvtx, _tried
    if not _tried:
        _tried = True
        try:
            import nvtx as _mod
            _nvtx = _mod
        except Exception:
            _nvtx = None
    if _nvtx is None:
        return contextlib.nullcontext()
    return _nvtx.annotate(message, domain="gpu_lstm")
