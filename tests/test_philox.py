"""The Philox4x32-10 generator of cuda/philox.cuh and gpu_lstm/philox.py: published known answers,
host-built C++ == NumPy bitwise, the mask mapping, and a statistical sanity check of the masks."""

import numpy as np
import pytest

import gpu_lstm as gl
from gpu_lstm import philox
from cpu_kernel_support import unavailable

# Known-answer vectors of Philox4x32-10 from Random123's kat_vectors (Salmon et al., SC'11):
# (counter, key, output).
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


def _scalar_philox(ctr, key):
    """An independent, deliberately plain Python transcription of the SC'11 paper's definition."""
    c, k = list(ctr), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + 0x9E3779B9) % 2 ** 32, (k[1] + 0xBB67AE85) % 2 ** 32]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 % 2 ** 32, (p0 >> 32) ^ c[3] ^ k[1], p0 % 2 ** 32]
    return tuple(c)


@pytest.fixture(scope="module")
def lib():
    from gpu_lstm.backend import host_backend
    if host_backend.compiler() is None:
        unavailable("no host C++ compiler")
    return host_backend.load_library()


def _host_philox(lib, ctr, key):
    c = np.array(ctr, dtype=np.uint32)
    k = np.array(key, dtype=np.uint32)
    out = np.zeros(4, dtype=np.uint32)
    lib.gl_host_philox4x32_10(c.ctypes.data, k.ctypes.data, out.ctypes.data)
    return tuple(int(v) for v in out)


@pytest.mark.parametrize("ctr, key, expected", KAT)
def test_known_answers(lib, ctr, key, expected):
    assert _scalar_philox(ctr, key) == expected
    got = philox.philox4x32_10(np.array(ctr, dtype=np.uint64)[:, None], np.array(key, dtype=np.uint64))
    assert tuple(int(v) for v in got[:, 0]) == expected                 # NumPy
    assert _host_philox(lib, ctr, key) == expected                      # cuda/philox.cuh through g++


def test_numpy_matches_the_scalar_reference_on_random_inputs():
    rng = np.random.default_rng(0)
    ctr = rng.integers(0, 2 ** 32, (4, 64), dtype=np.uint64)
    key = rng.integers(0, 2 ** 32, (2, 64), dtype=np.uint64)
    got = philox.philox4x32_10(ctr, key)
    for j in range(64):
        assert tuple(int(v) for v in got[:, j]) == _scalar_philox(tuple(int(v) for v in ctr[:, j]),
                                                                  tuple(int(v) for v in key[:, j]))


def test_word_mapping_is_the_documented_one():
    key = philox.stream_key(0xDEADBEEF, 3, 1, philox.ZONEOUT_C)
    assert key == 0xDEADBEEF | ((4 * (2 * 3 + 1) + 2) << 32)
    call = 2 ** 33 + 5                                   # exercises the high counter word
    w = philox.words(key, call, 0, 4 * 5)
    for e in (0, 1, 6, 19):
        blk = e // 4
        ctr = (blk & 0xFFFFFFFF, blk >> 32, call & 0xFFFFFFFF, call >> 32)
        assert int(w[e]) == _scalar_philox(ctr, (key & 0xFFFFFFFF, key >> 32))[e % 4]
    big = 2 ** 34 + 3                                    # element index past 2^32 blocks
    w = philox.words(key, 0, big, 2)
    ctr = ((big // 4) & 0xFFFFFFFF, (big // 4) >> 32, 0, 0)
    assert int(w[0]) == _scalar_philox(ctr, (key & 0xFFFFFFFF, key >> 32))[big % 4]
    # any window is a slice of the whole: a step's slice equals the full array's rows
    np.testing.assert_array_equal(philox.words(key, 7, 13, 50), philox.words(key, 7, 0, 63)[13:])
    u = philox.uniform(key, 7, 0, 63)
    np.testing.assert_array_equal(u, (philox.words(key, 7, 0, 63) >> 8) / 2.0 ** 24)
    np.testing.assert_array_equal(philox.uniform(key, 7, 0, 63, np.float32).astype(np.float64), u)  # exact


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_host_kernel_masks_equal_numpy_masks_bitwise(lib, dtype):
    """The kernels compute the masks themselves: with prev = 1, cur = 0 zoneout_mix writes d, and
    dropout of ones with scale 1 writes the keep mask. Both must equal the NumPy masks bit for bit."""
    from gpu_lstm.backend.host_backend import HostKernelBackend
    be = HostKernelBackend(dtype)
    T, B, N = 6, 5, 77
    zm = philox.ZoneoutMask(2024, 1, 0, philox.ZONEOUT_H, 11, 0.35, (T, B, N))
    ones, zeros = np.ones((B, N), dtype), np.zeros((B, N), dtype)
    got = np.empty((T, B, N), dtype)
    for t in range(T):
        be.zoneout_mix(zm[t], 0.0, ones, zeros, got[t])
    np.testing.assert_array_equal(got, zm.array(dtype))
    dm = philox.DropoutMask(2024, 2, 11, 0.2, (T, B, N), dtype)
    x = np.ones((T, B, N), dtype)
    out = np.empty_like(x)
    be.dropout(dm, x, out)
    np.testing.assert_array_equal(out, dm.array())


def test_masks_pass_a_statistical_check():
    """Bernoulli(q) frequencies within 5 sigma, per stream and pooled; adjacent elements, steps and
    streams uncorrelated (|r| < 5 / sqrt(n)); uniform floats pass a chi-square test over 64 bins."""
    n = 1 << 18
    for q in (0.05, 0.3, 0.5, 0.9):
        for key in (philox.stream_key(0, 0, 0, 0), philox.stream_key(12345, 2, 1, 2)):
            ev = philox.events(key, 3, 0, n, philox.threshold(q)).astype(np.float64)
            assert abs(ev.mean() - q) < 5 * np.sqrt(q * (1 - q) / n), (q, key)
            a, b = ev[:-1] - ev.mean(), ev[1:] - ev.mean()
            assert abs((a * b).mean() / ev.var()) < 5 / np.sqrt(n)          # lag-1 within a stream
            ev4 = ev.reshape(-1, 4)                                          # words of one block
            r = np.corrcoef(ev4[:, 0], ev4[:, 1])[0, 1]
            assert abs(r) < 5 / np.sqrt(n / 4)
    ka, kb = philox.stream_key(1, 0, 0, 1), philox.stream_key(1, 0, 0, 2)   # zoneout h vs c
    for (k1, c1), (k2, c2) in (((ka, 0), (kb, 0)), ((ka, 0), (ka, 1))):     # streams; calls
        u1, u2 = philox.uniform(k1, c1, 0, n), philox.uniform(k2, c2, 0, n)
        assert abs(np.corrcoef(u1, u2)[0, 1]) < 5 / np.sqrt(n)
    u = philox.uniform(philox.stream_key(7, 0, 0, 0), 0, 0, n)
    assert u.min() >= 0 and u.max() < 1
    counts = np.bincount((u * 64).astype(int), minlength=64)
    chi2 = ((counts - n / 64) ** 2 / (n / 64)).sum()
    assert chi2 < 63 + 5 * np.sqrt(2 * 63)                                   # ~ chi2(63): mean 63, sd 11


def test_threshold_is_exact_and_extreme_probabilities_hold():
    assert philox.threshold(0.0) == 0 and philox.threshold(1.0) == 1 << 24 and philox.threshold(0.5) == 1 << 23
    key = philox.stream_key(5, 0, 0, 0)
    assert not philox.events(key, 0, 0, 1000, 0).any()
    assert philox.events(key, 0, 0, 1000, 1 << 24).all()


def test_masks_depend_on_seed_call_and_stream_only():
    """The same (seed, call) gives the same masks whatever the dtype or device; every forward in
    training advances the call counter; reseed_dropout and rng_state restore it."""
    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    kw = dict(dropout=0.4, zoneout_h=0.2, zoneout_c=0.3, seed=9)
    m64 = gl.LSTM(4, 6, 2, dtype="float64", device="cpu", **kw)
    m32 = gl.LSTM(4, 6, 2, dtype="float32", device="cpu", **kw)
    m64(x)
    m32(x.astype(np.float32))
    for a, b in ((m64._saved.masks[1], m32._saved.masks[1]),):
        np.testing.assert_array_equal(a.array() != 0, b.array() != 0)
    for d64, d32 in zip(m64._saved.dirs[1][0].zoneout, m32._saved.dirs[1][0].zoneout):
        np.testing.assert_array_equal(d64.array(), d32.array())
    assert m64.rng_state()["calls"] == 1
    state = m64.rng_state()
    y2 = m64(x)[0]
    m64.set_rng_state(state)
    np.testing.assert_array_equal(m64(x)[0], y2)                       # resumes bitwise
    m64.eval()
    m64(x)
    assert m64.rng_state()["calls"] == 2                                # evaluation draws nothing
    m64.train().reseed_dropout(9)
    assert m64.rng_state() == {"seed": m32.rng_state()["seed"], "calls": 0}
    with pytest.raises(ValueError, match=r"state\[.seed.\]: expected an int in \[0, 2\^32\)"):
        m64.set_rng_state({"seed": -1, "calls": 0})
