"""The pieces of ``bench/ridge.py`` that run: synthetic data, per-phase time and memory measurement,
and the three ridge implementations compared (harness, scikit-learn, himalaya)."""
from __future__ import annotations

import resource
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from brainharness.ridge import RidgeCV


# -- data --------------------------------------------------------------------------------
def make_data(n, p, t, n_test, seed=0, feature_decay=0.0):
    """Low-rank latent signal + noise; features with offsets; targets with varying SNR.

    ``feature_decay`` > 0 gives the feature noise a power-law spectrum (column j scaled by
    (1+j)^-decay, mean variance kept at 1; ridge is rotation-invariant, so no rotation is needed)."""
    rng = np.random.default_rng(seed)
    N = n + n_test
    r = int(max(8, min(128, n // 8, p // 4)))
    Z = rng.standard_normal((N, r), dtype=np.float32)
    spec = (1.0 + np.arange(r, dtype=np.float32)) ** -0.5  # decaying latent spectrum
    A = rng.standard_normal((r, p), dtype=np.float32) * (spec / np.sqrt((spec ** 2).sum()))[:, None]
    X = rng.standard_normal((N, p), dtype=np.float32)  # feature noise, variance 1
    if feature_decay:
        w = (1.0 + np.arange(p)) ** -feature_decay
        X *= (w * np.sqrt(p / (w ** 2).sum())).astype(np.float32)
    X += Z @ A  # feature signal, variance ~1
    X += rng.standard_normal(p, dtype=np.float32)  # non-zero feature means
    S = Z @ (rng.standard_normal((r, t), dtype=np.float32) * spec[:, None])
    S /= S.std(0)
    snr = (10.0 ** rng.uniform(-2, 1, t)).astype(np.float32)
    Y = rng.standard_normal((N, t), dtype=np.float32)
    Y *= np.sqrt(1 / (1 + snr))
    S *= np.sqrt(snr / (1 + snr))
    Y += S
    del S
    Y += 3 * rng.standard_normal(t, dtype=np.float32)  # non-zero target means
    return X[:n], Y[:n], X[n:], Y[n:], snr


# -- measurement -------------------------------------------------------------------------
def proc_kb(path, field):
    """The kB value of ``field`` in a /proc file (``/proc/self/status``, ``/proc/meminfo``); None if absent."""
    try:
        for line in open(path):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Memory:
    """Peak memory of a phase: CUDA allocator peak on GPU; process peak RSS on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before any reset
        self.can_reset = self._reset_rss()

    @staticmethod
    def _reset_rss():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (Linux >= 4.0)
            return proc_kb("/proc/self/status", "VmHWM") is not None
        except OSError:
            return False

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if self.can_reset:
            self._reset_rss()
        self.rss0 = proc_kb("/proc/self/status", "VmRSS")

    def stop(self) -> dict:
        out = {}
        if self.cuda:
            torch.cuda.synchronize()
            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        maxrss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
        if self.can_reset:  # ru_maxrss reads the high-water mark that clear_refs reset: the phase peak
            out["peak_rss_mb"] = maxrss
            out["rss_at_start_mb"] = round(self.rss0 / 1024, 1)
        else:  # no reset: cumulative process peak
            out["peak_rss_mb_cumulative"] = maxrss
        return out


PHASES: dict[str, dict] = {}


@contextmanager
def phase(name, mem: Memory, **info):
    mem.start()
    t0, c0 = time.perf_counter(), time.process_time()
    rec = dict(info)
    yield rec
    if mem.cuda:
        torch.cuda.synchronize()
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    rec["cpu_seconds"] = round(time.process_time() - c0, 3)  # all threads; robust to other load
    rec.update(mem.stop())
    PHASES[name] = rec


def log(msg=""):
    print(msg, flush=True)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- the three implementations ---------------------------------------------------------
def run_harness(Xtr, Ytr, Xte, alphas, cv, device, target_batch):
    m = RidgeCV(alphas, cv=cv, device=device, target_batch=target_batch).fit(Xtr, Ytr)
    if m.decomposition_.eigvals is not None:  # a K-fold fit refitted by Cholesky has none
        run_harness.kept = m.decomposition_.eigvals.numel()  # eigen-directions kept (rank after truncation)
    return m.predict(Xte), m.best_alphas_.cpu().numpy()


def run_sklearn(Xtr, Ytr, Xte, alphas):
    from sklearn.linear_model import RidgeCV as SkRidgeCV

    m = SkRidgeCV(alphas=np.asarray(alphas), alpha_per_target=True).fit(Xtr, Ytr)
    return np.asarray(m.predict(Xte)), np.atleast_1d(np.asarray(m.alpha_))


def set_himalaya_backend(device) -> str:
    from himalaya.backend import set_backend

    for name in (["torch_cuda"] if device.type == "cuda" else []) + ["torch", "numpy"]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                set_backend(name, on_error="raise")
            return name
        except Exception as e:  # noqa: BLE001 - report and fall back
            log(f"  himalaya backend {name!r} unavailable ({type(e).__name__}: {e}); trying the next")
    raise RuntimeError("no himalaya backend")


def himalaya_folds(n, k):
    """``cv`` for himalaya and a note: the harness K-fold uses scikit-learn's KFold folds."""
    note = f"KFold({k}), the same contiguous folds as the harness"
    if n % k:
        note += (f"; n % {k} != 0, so the criteria weigh folds slightly differently (himalaya: mean of per-fold "
                 f"MSE; harness: pooled SSE / n), which can flip near-tied alphas")
    return k, note


def run_himalaya(Xtr, Ytr, Xte, alphas, cv):
    from himalaya.backend import get_backend
    from himalaya.kernel_ridge import KernelRidgeCV

    be = get_backend()
    m = KernelRidgeCV(alphas=np.asarray(alphas, dtype=Xtr.dtype), cv=cv, fit_intercept=True, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(Xtr, Ytr)
        pred = m.predict(Xte)
    return np.asarray(be.to_numpy(pred)), np.asarray(be.to_numpy(m.best_alphas_))


def on_targets(name, fn, t, t_sub, mem, Ytr):
    """Run ``fn(Ysub)`` on all targets, or on t_sub/4 and t_sub targets and extrapolate in t."""
    if t_sub >= t:
        with phase(name, mem, targets=t, extrapolated=False) as rec:
            pred, best = fn(Ytr)
        return pred, best, rec["seconds"], False
    t1 = max(1, t_sub // 4)
    with phase(name + f"[t={t1}]", mem, targets=t1) as r1:
        fn(np.ascontiguousarray(Ytr[:, :t1]))
    with phase(name + f"[t={t_sub}]", mem, targets=t_sub) as r2:
        pred, best = fn(np.ascontiguousarray(Ytr[:, :t_sub]))
    # time(t) = fixed + per_target * t, fitted on CPU time (far less disturbed by other processes than
    # wall time on a shared machine); the wall time at t_sub is scaled by the same factor.
    slope = (r2["cpu_seconds"] - r1["cpu_seconds"]) / (t_sub - t1)
    per_target = max(0.0, slope)
    cpu_est = r2["cpu_seconds"] + per_target * (t - t_sub)
    est = r2["seconds"] * cpu_est / max(r2["cpu_seconds"], 1e-9)
    PHASES[name] = dict(targets=t, extrapolated=True, seconds=round(est, 3), cpu_seconds=round(cpu_est, 3),
                        how=f"measured on {t1} and {t_sub} targets (wall {r1['seconds']:.2f}s, {r2['seconds']:.2f}s; "
                            f"cpu {r1['cpu_seconds']:.2f}s, {r2['cpu_seconds']:.2f}s), extrapolated linearly in t on "
                            f"cpu time: fixed {r2['cpu_seconds'] - per_target * t_sub:.2f}s + "
                            f"{per_target * 1e3:.3f} ms/target x {t} = {cpu_est:.2f}s cpu; wall at {t_sub} scaled "
                            f"by the same factor x{cpu_est / max(r2['cpu_seconds'], 1e-9):.2f}"
                            + ("" if slope > 0 else "; UNRELIABLE: the time did not grow with t (noise from other "
                               "load exceeds the per-target cost), so this is the time at t_sub, a lower bound"))
    PHASES[name]["extrapolation_unreliable"] = slope <= 0
    return pred, best, est, True
