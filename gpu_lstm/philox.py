"""Philox4x32-10 in NumPy, bit for bit the generator of ``cuda/philox.cuh``, and the random masks of
dropout and zoneout defined on top of it.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) maps a 128-bit
counter and a 64-bit key to 128 random bits. gpu_lstm draws every mask element as a pure function of
(seed, stream, call, element index), so the GPU kernels compute masks on the fly (no mask memory, no
generator state, capturable in a CUDA graph, recomputed in the backward instead of stored), and this
NumPy code computes exactly the same masks: the same seed gives bitwise the same masks on the CPU, on
the host build of the kernels, and on the GPU.

The mapping (``cuda/philox.cuh`` is the C++ side of the same definition):

* key = (seed, stream): ``seed`` the model's 32-bit mask seed, ``stream`` = 4 (2 layer + direction)
  + purpose, purpose 0 for dropout on a layer's input, 1 for zoneout on h, 2 for zoneout on c. No two
  uses share a stream, so no two masks are correlated.
* counter = (e // 4 as 64 bits, call as 64 bits), with e the element's flat index in the stream's
  array (for zoneout the (T, B, N) masks of all steps, step t at offset t B N; for dropout the
  (T, B, D P) layer input) and ``call`` the model's count of mask-drawing forwards (saved in
  checkpoints, reset by ``reseed_dropout``).
* element e uses word e % 4 of its block.
* a mask event ("keep" for dropout, "zoned" for zoneout) is ``(word >> 8) < thr`` with
  ``thr = round(q 2^24)`` for event probability q, computed once on the host. The comparison is in
  integers: no float rounding can differ between NumPy, g++ and NVRTC, and the masks do not depend on
  the model's dtype (a float32 and a float64 model with the same seed draw the same masks). The
  probability is q rounded to a multiple of 2^-24 (6e-8), far below any effect a user could see.
* :func:`uniform` exposes the same 24 bits as floats in [0, 1): ``(word >> 8) * 2^-24``, exact in
  float32 and float64 (24 bits fit either mantissa), for tests and statistics.
"""

import numpy as np

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)

DROPOUT, ZONEOUT_H, ZONEOUT_C = 0, 1, 2
EVENT_BITS = 24


def philox4x32_10(ctr, key):
    """Philox4x32-10 on arrays: ``ctr`` (4, N) and ``key`` (2,) or (2, N), uint32-valued; returns
    (4, N) uint32. Vectorised: the ten rounds are NumPy uint64 operations over all N blocks."""
    c = [np.asarray(v, dtype=np.uint64) for v in np.asarray(ctr, dtype=np.uint64)]
    k0, k1 = (np.asarray(v, dtype=np.uint64) for v in np.asarray(key, dtype=np.uint64))
    m0, m1, w0, w1 = (np.uint64(v) for v in (M0, M1, W0, W1))
    for r in range(10):
        if r:
            k0 = (k0 + w0) & _MASK32
            k1 = (k1 + w1) & _MASK32
        p0 = m0 * c[0]                       # < 2^64: exact in uint64
        p1 = m1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _MASK32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _MASK32]
    return np.stack(c).astype(np.uint32)


def stream_key(seed, layer, direction, purpose):
    """The 64-bit key (seed in the low 32 bits, stream id in the high 32) of one mask stream."""
    if not 0 <= purpose < 4 or direction not in (0, 1) or layer < 0:
        raise ValueError(f"bad stream (layer={layer}, direction={direction}, purpose={purpose})")
    stream = 4 * (2 * layer + direction) + purpose
    return (int(seed) & 0xFFFFFFFF) | (stream << 32)


def words(key, call, offset, n):
    """The random uint32 words of elements [offset, offset + n) of stream ``key`` in call ``call``."""
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    first, last = offset >> 2, (offset + n - 1) >> 2
    blk = np.arange(first, last + 1, dtype=np.uint64)
    call = np.uint64(call)
    ctr = np.stack([blk & _MASK32, blk >> np.uint64(32),
                    np.full_like(blk, call & _MASK32), np.full_like(blk, call >> np.uint64(32))])
    key = np.array([key & 0xFFFFFFFF, key >> 32], dtype=np.uint64)
    out = philox4x32_10(ctr, key).T.reshape(-1)       # block-major: word e % 4 of block e // 4
    start = offset - 4 * first
    return out[start:start + n]


def uniform(key, call, offset, n, dtype=np.float64):
    """Floats in [0, 1) from the top 24 bits of each word: ``(word >> 8) * 2^-24``, exact."""
    return ((words(key, call, offset, n) >> np.uint32(8)).astype(dtype) * dtype(2.0 ** -EVENT_BITS))


def threshold(q):
    """The integer threshold of an event of probability q in [0, 1]."""
    return int(round(float(q) * (1 << EVENT_BITS)))


def events(key, call, offset, n, thr):
    """Boolean events: ``(word >> 8) < thr`` for elements [offset, offset + n)."""
    return (words(key, call, offset, n) >> np.uint32(8)).astype(np.int64) < thr


class MaskSlice:
    """Elements [offset, offset + n) of one mask stream in one call: what a kernel launch gets.

    ``counter``, if given, is a one-element int64 array (on the backend's device) that holds the call
    counter and is read when the mask is computed, not when the slice is made: plans and CUDA graphs
    bind their launches to it once and the host writes each forward's counter into it before the
    replay (gpu_lstm/plan.py). ``call`` is then unused (0)."""

    __slots__ = ("key", "call", "offset", "thr", "counter")

    def __init__(self, key, call, offset, thr, counter=None):
        self.key, self.call, self.offset, self.thr = int(key), int(call), int(offset), int(thr)
        self.counter = counter

    def current_call(self):
        """The call whose mask this is now: ``call``, or the value in ``counter``."""
        return self.call if self.counter is None else int(self.counter[0])

    def events(self, n):
        return events(self.key, self.current_call(), self.offset, n, self.thr)


def _current(call, counter):
    return call if counter is None else int(counter[0])


class ZoneoutMask:
    """The zoneout mask d (T, B, N) of one direction of one layer in one forward, never stored:
    ``mask[t]`` is the slice of step t that the kernels (or NumPy) recompute, in the forward and again
    in the backward. ``array()`` materialises it (0/1 floats), for tests and inspection. With
    ``counter`` (see :class:`MaskSlice`) the call is read from that array when the mask is computed."""

    def __init__(self, seed, layer, direction, purpose, call, z, shape, counter=None):
        self.key = stream_key(seed, layer, direction, purpose)
        self.call, self.z, self.shape = int(call), float(z), tuple(shape)
        self.counter = counter
        self.thr = threshold(z)
        self.per_step = int(np.prod(self.shape[1:]))

    def __getitem__(self, t):
        return MaskSlice(self.key, self.call, t * self.per_step, self.thr, self.counter)

    def array(self, dtype=np.float64):
        n = int(np.prod(self.shape))
        call = _current(self.call, self.counter)
        return events(self.key, call, 0, n, self.thr).reshape(self.shape).astype(dtype)


class DropoutMask:
    """Inverted dropout on a layer's input (T, B, F): kept elements are scaled by 1 / (1 - p), the
    others are 0. Applied by ``backend.dropout(mask, x, out)`` in the forward and again, from the same
    counter, to the gradient in the backward. ``array()`` materialises it (0 or 1/(1-p)). ``counter``
    as for :class:`ZoneoutMask`."""

    def __init__(self, seed, layer, call, p, shape, dtype, counter=None):
        self.key = stream_key(seed, layer, 0, DROPOUT)
        self.call, self.p, self.shape = int(call), float(p), tuple(shape)
        self.counter = counter
        self.thr = threshold(1.0 - p)
        self.scale = np.dtype(dtype).type(1.0 / (1.0 - p))

    @property
    def slice(self):
        return MaskSlice(self.key, self.call, 0, self.thr, self.counter)

    def array(self):
        n = int(np.prod(self.shape))
        keep = events(self.key, _current(self.call, self.counter), 0, n, self.thr).reshape(self.shape)
        return np.where(keep, self.scale, self.scale.dtype.type(0))
