import numpy as np
import pytest

from brainharness.errors import DataError
from brainharness.metrics.noise_ceiling import inverse_repeats, ncsnr, noise_ceiling, zscore_within_sessions


def _independent_nc(trials, stim, counts_scored):
    """The NSD formula written out loop by loop, as a cross-check."""
    v = trials.shape[1]
    out = np.zeros(v)
    for j in range(v):
        variances = []
        for s in np.unique(stim):
            x = trials[stim == s, j]
            if len(x) == 3:
                variances.append(np.var(x, ddof=1))
        sigma2 = np.mean(variances)
        snr = np.sqrt(max(0.0, 1 - sigma2)) / np.sqrt(sigma2)
        a = sum(c == 3 for c in counts_scored); b = sum(c == 2 for c in counts_scored); c1 = sum(c == 1 for c in counts_scored)
        inv = (a / 3 + b / 2 + c1 / 1) / (a + b + c1)
        out[j] = 100 * snr**2 / (snr**2 + inv)
    return out


def test_matches_loop_implementation_with_mixed_repeats():
    rng = np.random.default_rng(0)
    n_img, v = 60, 7
    signal = rng.standard_normal((n_img, v))
    stim = np.repeat(np.arange(n_img), 3)
    trials = signal[stim] + rng.standard_normal((len(stim), v)) * np.linspace(0.3, 3, v)
    sessions = np.arange(len(stim)) // 45
    z = zscore_within_sessions(trials, sessions)
    # drop trials so some images have 2 or 1 repeats
    keep = np.ones(len(stim), bool)
    keep[[0, 3, 4, 9]] = False
    z, stim = z[keep], stim[keep]
    counts = [int((stim == s).sum()) for s in range(n_img)]
    got = noise_ceiling(ncsnr(z, stim), counts)
    np.testing.assert_allclose(got, _independent_nc(z, stim, counts), rtol=1e-5, atol=1e-6)
    assert inverse_repeats([3, 3, 2, 1]) == pytest.approx((2 / 3 + 1 / 2 + 1) / 4)


def test_zscore_within_session_removes_session_offsets():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 3)) + np.repeat([[0.0], [10.0]], 50, axis=0)
    z = zscore_within_sessions(x, np.repeat([0, 1], 50))
    np.testing.assert_allclose(z[:50].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(z[50:].std(0), 1, atol=1e-5)


def test_pure_noise_gives_low_ceiling_and_strong_signal_high():
    rng = np.random.default_rng(2)
    stim = np.repeat(np.arange(500), 3)
    sig = rng.standard_normal((500, 1))
    trials = np.hstack([rng.standard_normal((1500, 1)), sig[stim] * 3 + rng.standard_normal((1500, 1))])
    nc = noise_ceiling(ncsnr(zscore_within_sessions(trials, np.zeros(1500)), stim), 3)
    assert nc[0] < 5
    # true NC for the signal voxel: 9 / (9 + 1/3)
    assert nc[1] == pytest.approx(100 * 9 / (9 + 1 / 3), abs=1.5)


def test_no_triplicates_is_a_clear_error():
    with pytest.raises(DataError, match="exactly 3 trials"):
        ncsnr(np.zeros((4, 2)), np.array([0, 0, 1, 1]))
