#!/usr/bin/env python
"""Benchmark ``brainharness.ridge.RidgeCV`` against scikit-learn and himalaya on the same data.

    python bench/ridge.py --quick          # small problem, < 1 min on 2 CPU cores
    python bench/ridge.py                  # NSD decoding scale, or the largest size that fits
    python bench/ridge.py --n 4000 --p 8000 --t 8192 --device cuda --alphas 1e-2,1e7,10

Comparisons (one run, one data set; every method gets the same float32 numpy arrays and is
timed end to end, fit + predict on held-out samples, after a tiny warm-up fit):

* harness ``cv="loo"``  vs scikit-learn ``RidgeCV(alphas, alpha_per_target=True)`` (exact LOO);
* harness ``cv=5``      vs himalaya ``KernelRidgeCV(alphas, cv=5, fit_intercept=True)``
  (kernel "linear", default ``score_func=l2_neg_loss``: per target, the α with the best mean
  over folds of the per-fold mean squared error; sklearn ``KFold`` = contiguous folds, the
  first ``n % 5`` folds one sample larger; the harness uses the same folds. With unequal folds
  himalaya averages per-fold MSEs while the harness pools SSE / n, a tiny difference in weights);
* harness ``cv="gcv"`` (the default mode), timed against both;
* an α sweep: k fits, each with a different α grid, reusing one ``Decomposition`` vs k
  independent fits.

Data: a latent low-rank signal ``Z`` (decaying spectrum) seen through noisy features with
non-zero means, and many targets that read out ``Z`` with a per-target SNR spread over
10^-2..10^1 (from near-pure noise to well predicted).

At large sizes scikit-learn (and himalaya) run on a subset of targets: they are timed on
``t_sub/4`` and ``t_sub`` targets and the time is extrapolated linearly in t
(``time(t) = fixed + per_target * t``) to the full t; such numbers are labelled
``extrapolated``. Peak memory per phase: ``torch.cuda.max_memory_allocated`` on GPU, and the
process peak RSS (VmHWM, reset per phase through /proc/self/clear_refs; ``ru_maxrss`` when the
reset is unavailable) on CPU. The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brainharness.ridge import Decomposition, RidgeCV, resolve_device  # noqa: E402

NSD = dict(n=8859, p=15724, t=24576)  # NSD decoding: train samples, voxels, targets
QUICK = dict(n=1000, p=2000, t=1000)
K_FOLDS = 5


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
def _status_kb(field):
    try:
        for line in open("/proc/self/status"):
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
            return _status_kb("VmHWM") is not None
        except OSError:
            return False

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if self.can_reset:
            self._reset_rss()
        self.rss0 = _status_kb("VmRSS")

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


# -- the three implementations ---------------------------------------------------------
def run_harness(Xtr, Ytr, Xte, alphas, cv, device, target_batch):
    m = RidgeCV(alphas, cv=cv, device=device, target_batch=target_batch).fit(Xtr, Ytr)
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


# -- cost model (to pick a size that fits) ---------------------------------------------
def calibrate(device, quick=False):
    """Rough device speed: float32/float64 matmul GFLOP/s and float64/float32 eigh time / m³."""
    out = {}
    for dt in (torch.float32, torch.float64):
        m = 2048 if device.type == "cpu" else 8192
        a = torch.randn(m, m, device=device, dtype=dt)
        a @ a
        times = []
        for _ in range(3):  # median of 3: one lucky or unlucky slice on a shared machine is not the speed
            _sync(device)
            t0 = time.perf_counter()
            a @ a
            _sync(device)
            times.append(time.perf_counter() - t0)
        out["gflops" + ("32" if dt == torch.float32 else "64")] = 2 * m ** 3 / sorted(times)[1] / 1e9
        m = (1024 if quick else 2048) if device.type == "cpu" else 4096
        g = torch.randn(m, m, device=device, dtype=dt)
        g = g @ g.T
        torch.linalg.eigh(g)
        _sync(device)
        t0 = time.perf_counter()
        torch.linalg.eigh(g)
        _sync(device)
        out["eigh" + ("32" if dt == torch.float32 else "64")] = (time.perf_counter() - t0) / m ** 3
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def estimate(n, p, t, n_test, a, t_ref, k_sweep, k_indep, c, sk_eigh64_cpu=None):
    """Seconds per phase from flop counts (dominant terms only) and the calibration ``c``."""
    g32, g64, e64, e32 = c["gflops32"] * 1e9, c["gflops64"] * 1e9, c["eigh64"], c["eigh32"]
    ske64, skg64 = sk_eigh64_cpu or (e64, g64)

    def decomp(n_, p_):  # float64 Gram + float64 eigh (brainharness.ridge.Decomposition)
        m = min(n_, p_)
        return 2 * m * m * max(n_, p_) / g64 + e64 * m ** 3

    def refit(n_, p_, t_):
        m = min(n_, p_)
        return (4 * n_ * m * t_ + 2 * p_ * (n_ if n_ < p_ else m) * t_ + 2 * n_test * p_ * t_) / g32

    m = min(n, p)
    gcv = decomp(n, p) + refit(n, p, t)
    loo = gcv + a * 2 * n * m * t / g32
    ntr, nv = n - n // K_FOLDS, n // K_FOLDS
    mt = min(ntr, p)
    kfold = K_FOLDS * (decomp(ntr, p) + (2 * nv * p * mt + 2 * ntr * mt * t + a * 2 * nv * mt * t) / g32) + gcv

    def sk(t_):
        return 2 * m * m * max(n, p) / skg64 + ske64 * m ** 3 + (2 * n * m * t_ + a * (2 * m * m * t_ + 2 * n * p * t_)) / skg64

    def hi(t_):
        return (2 * n * n * p + K_FOLDS * a * 2 * nv * ntr * (ntr + t_) + a * 2 * n * n * (n + t_)) / g32 + \
            e32 * (K_FOLDS * ntr ** 3 + n ** 3)

    subs = [t] if t_ref >= t else [max(1, t_ref // 4), t_ref]
    return dict(data=(n + n_test) * (p + t) * 2e-8, harness_gcv=gcv, harness_loo=loo, harness_cv5=kfold,
                sklearn=sum(sk(s) for s in subs), himalaya=sum(hi(s) for s in subs),
                sweep=decomp(n, p) + k_sweep * refit(n, p, t) + k_indep * gcv)


def estimate_bytes(n, p, t, n_test, t_ref):
    """Rough peak process memory (bytes): the data plus the largest phase."""
    m, N, ts = min(n, p), n + n_test, min(t, t_ref)
    data = 4 * N * (p + t) + 4 * N * t  # X, Y, and the temporaries of make_data
    harness = 12 * n * p + 20 * m * m + 4 * (2 * p * t + n_test * t) + 3 * 4 * n * min(t, 4096)
    sklearn = 8 * (2 * n * p + 3 * m * m + 3 * n * ts + 2 * p * ts)
    return data + max(harness, sklearn)


def choose_size(args, device, cal):
    """The size to run and why: explicit, quick, NSD, or NSD shrunk to fit the budget and RAM."""
    if args.quick:
        size, why = dict(QUICK), "--quick"
    else:
        size, why = dict(NSD), "NSD decoding scale"
    explicit = {k: getattr(args, k) for k in ("n", "p", "t") if getattr(args, k) is not None}
    size.update(explicit)
    if explicit:
        why = "sizes given on the command line"
    if args.quick or explicit or args.budget_min <= 0:
        return size, why

    def cost(s):
        return sum(estimate(s["n"], s["p"], s["t"], n_test_for(s["n"]), len(args.alpha_list), args.ref_t,
                            args.sweep_k, args.sweep_independent, cal).values()) / 60

    avail = (_meminfo_kb("MemAvailable") or 0) * 1024
    full_min, full_gb = cost(size), estimate_bytes(size["n"], size["p"], size["t"], n_test_for(size["n"]), args.ref_t) / 2 ** 30
    reasons = []
    while cost(size) > args.budget_min or (avail and estimate_bytes(size["n"], size["p"], size["t"], n_test_for(size["n"]), args.ref_t) > 0.8 * avail):
        if size["t"] > 4096:
            size["t"] = max(4096, size["t"] // 2)
        elif size["n"] > 500:
            size["n"], size["p"] = int(size["n"] * 0.85), int(size["p"] * 0.85)
        else:
            break
    if size != NSD:
        if full_min > args.budget_min:
            reasons.append(f"NSD scale is estimated at {full_min:.0f} min here (> --budget-min {args.budget_min:g})")
        if avail and full_gb * 2 ** 30 > 0.8 * avail:
            reasons.append(f"NSD scale needs ~{full_gb:.1f} GB (> 80% of {avail / 2 ** 30:.1f} GB available)")
        why = ("largest size that fits: " + "; ".join(reasons) +
               "; shrunk t first (down to 4096 targets), then n and p together (x0.85 steps)")
    return size, why


def _meminfo_kb(field):
    try:
        for line in open("/proc/meminfo"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def n_test_for(n):
    return int(min(1000, max(100, n // 5)))


def parse_alphas(s):
    """``lo,hi,num`` (log-spaced, the default form) or an explicit list ``a1;a2;...``."""
    if ";" in s:
        return [float(x) for x in s.split(";") if x]
    lo, hi, num = s.split(",")
    return [float(a) for a in np.logspace(np.log10(float(lo)), np.log10(float(hi)), int(num))]


# -- comparisons ------------------------------------------------------------------------
def rel_diff(a, b):
    """max |a - b| / max |b| (0 for empty)."""
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def same_alpha(a, b):
    return np.isclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=0)


def r2(pred, y):
    return 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


# -- main -------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"small problem {QUICK} (< 1 min on 2 cores)")
    ap.add_argument("--device", default="auto", help="harness device: auto (CUDA if present), cpu, cuda")
    ap.add_argument("--n", type=int, help="training samples")
    ap.add_argument("--p", type=int, help="features")
    ap.add_argument("--t", type=int, help="targets")
    ap.add_argument("--alphas", default="1e-2,1e7,10", help="'lo,hi,num' log-spaced or 'a1;a2;...' (default 1e-2,1e7,10)")
    ap.add_argument("--ref-t", type=int, default=None,
                    help="targets for scikit-learn/himalaya; fewer than t = timed on a subset and extrapolated "
                         "(default: all in --quick, else 1024)")
    ap.add_argument("--budget-min", type=float, default=30.0,
                    help="without --quick or explicit sizes: shrink from NSD scale until the estimated run "
                         "time fits (0 = always NSD scale); default 30")
    ap.add_argument("--sweep-k", type=int, default=10, help="alpha grids in the sweep")
    ap.add_argument("--sweep-independent", type=int, default=None,
                    help="independent fits actually timed in the sweep (rest extrapolated; default: all in --quick, else 2)")
    ap.add_argument("--target-batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--feature-decay", type=float, default=0.0,
                    help="power-law exponent of the feature-noise spectrum (0 = isotropic noise, the default)")
    ap.add_argument("--skip", default="", help="comma list of: sklearn, himalaya, sweep")
    ap.add_argument("--dry-run", action="store_true", help="print the chosen size and the time estimate, then exit")
    args = ap.parse_args(argv)
    args.alpha_list = parse_alphas(args.alphas)
    if args.ref_t is None:
        args.ref_t = 10 ** 9 if args.quick else 1024
    if args.sweep_independent is None:
        args.sweep_independent = args.sweep_k if args.quick else 2
    args.sweep_independent = min(args.sweep_independent, args.sweep_k)
    skip = {s for s in args.skip.split(",") if s}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t_start, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)

    cal = calibrate(device, args.quick)
    size, why = choose_size(args, device, cal)
    n, p, t = size["n"], size["p"], size["t"]
    n_test, alphas, ref_t = n_test_for(n), args.alpha_list, min(args.ref_t, size["t"])
    scale = "quick" if size == QUICK and args.quick else ("nsd" if size == NSD else f"n{n}_p{p}_t{t}")
    est = estimate(n, p, t, n_test, len(alphas), ref_t, args.sweep_k, args.sweep_independent, cal)
    log(f"ridge benchmark: scale={scale} ({why})")
    log(f"  n={n} train + {n_test} test samples, p={p} features, t={t} targets, {len(alphas)} alphas "
        f"{alphas[0]:.3g}..{alphas[-1]:.3g}; mode {'dual (n < p)' if n < p else 'primal (n >= p)'}")
    log(f"  device={device}, torch {torch.__version__}, torch threads={torch.get_num_threads()}, "
        f"cores={os.cpu_count()}; calibration: {cal['gflops32']:.0f} GFLOP/s fp32, {cal['gflops64']:.0f} fp64")
    log(f"  estimated run time {sum(est.values()) / 60:.1f} min (rough flop model), "
        f"peak RAM ~{estimate_bytes(n, p, t, n_test, ref_t) / 2 ** 30:.1f} GB")
    log("  estimate per phase (s): " + ", ".join(f"{k} {v:.0f}" for k, v in est.items()))
    if args.dry_run:
        return

    mem = Memory(device)
    with phase("data", mem):
        Xtr, Ytr, Xte, Yte, snr = make_data(n, p, t, n_test, args.seed, args.feature_decay)
    log(f"  data generated in {PHASES['data']['seconds']:.1f}s (X {Xtr.nbytes / 2 ** 20:.0f} MB, Y {Ytr.nbytes / 2 ** 20:.0f} MB train)")

    # warm-up: first-call overheads (kernels, lazy imports) are not part of the timings
    wX, wY = Xtr[:40, :60].copy(), Ytr[:40, :3].copy()
    for cv in ("gcv", "loo", K_FOLDS):
        run_harness(wX, wY, wX, alphas, cv, device, args.target_batch)
    hb, hcv, hcv_note = None, None, None
    if "sklearn" not in skip:
        run_sklearn(wX, wY, wX, alphas)
    if "himalaya" not in skip:
        hb = set_himalaya_backend(device)
        run_himalaya(wX, wY, wX, alphas, K_FOLDS)
        hcv, hcv_note = himalaya_folds(n, K_FOLDS)

    res = {}
    log("\n[harness] fitting on all targets")
    for name, cv in (("harness_gcv", "gcv"), ("harness_loo", "loo"), ("harness_cv5", K_FOLDS)):
        with phase(name, mem, targets=t, extrapolated=False):
            res[name] = run_harness(Xtr, Ytr, Xte, alphas, cv, device, args.target_batch)
        log(f"  {name:12s} {PHASES[name]['seconds']:8.2f} s (cpu {PHASES[name]['cpu_seconds']:.1f} s)   "
            f"{_mem_str(PHASES[name])}")

    if "sklearn" not in skip:
        log(f"\n[scikit-learn] RidgeCV(alphas, alpha_per_target=True) (exact LOO, float64 inside), "
            f"{'all' if ref_t >= t else ref_t} targets")
        pred, best, sec, extra = on_targets("sklearn", lambda Y: run_sklearn(Xtr, Y, Xte, alphas), t, ref_t, mem, Ytr)
        res["sklearn"] = (pred, best)
        log(f"  sklearn      {sec:8.2f} s{' (EXTRAPOLATED to t=%d)' % t if extra else ''}   {_mem_str(PHASES.get('sklearn' if not extra else f'sklearn[t={ref_t}]'))}")
        if extra:
            log(f"    {PHASES['sklearn']['how']}")
    if "himalaya" not in skip:
        log(f"\n[himalaya] KernelRidgeCV(alphas, cv={K_FOLDS}, kernel='linear', fit_intercept=True), backend {hb!r}, "
            f"{'all' if ref_t >= t else ref_t} targets; folds: {hcv_note}")
        pred, best, sec, extra = on_targets("himalaya", lambda Y: run_himalaya(Xtr, Y, Xte, alphas, hcv), t, ref_t, mem, Ytr)
        res["himalaya"] = (pred, best)
        log(f"  himalaya     {sec:8.2f} s{' (EXTRAPOLATED to t=%d)' % t if extra else ''}   {_mem_str(PHASES.get('himalaya' if not extra else f'himalaya[t={ref_t}]'))}")
        if extra:
            log(f"    {PHASES['himalaya']['how']}")

    sweep = {}
    if "sweep" not in skip:
        sweep = run_sweep(Xtr, Ytr, Xte, alphas, args, device, mem)

    # -- summary ---------------------------------------------------------------------
    C = {k: PHASES[k]["cpu_seconds"] for k in ("harness_gcv", "harness_loo", "harness_cv5", "sklearn", "himalaya") if k in PHASES}
    T = {k: PHASES[k]["seconds"] for k in ("harness_gcv", "harness_loo", "harness_cv5", "sklearn", "himalaya") if k in PHASES}
    load = [round(x, 2) for x in os.getloadavg()]
    out = dict(scale=scale, scale_reason=why, n=n, p=p, t=t, n_test=n_test, n_alphas=len(alphas),
               alphas=[float(f"{a:.6g}") for a in alphas], mode="dual" if n < p else "primal",
               device=str(device), torch_threads=torch.get_num_threads(), dtype="float32",
               time_harness_gcv_s=T["harness_gcv"], time_harness_loo_s=T["harness_loo"],
               time_harness_cv5_s=T["harness_cv5"])
    rank = min(n - 1, p)  # rank of the centred training features
    out.update(harness_eigen_directions_kept=run_harness.kept, centred_feature_rank=rank)
    log("\n[summary]")
    log(f"  harness Decomposition kept {run_harness.kept} of {rank} eigen-directions"
        + ("" if run_harness.kept >= rank else " (the rest fell under its truncation tolerance and are "
           "missing from every harness fit)"))
    r2s = {k: float(np.median(r2(res[k][0], Yte))) for k in ("harness_gcv", "harness_loo", "harness_cv5")}
    agree_gl = float(same_alpha(res["harness_gcv"][1], res["harness_loo"][1]).mean())
    out.update(median_test_r2={k: round(v, 4) for k, v in r2s.items()}, alpha_agreement_gcv_vs_loo=round(agree_gl, 4))
    log("  median held-out R2: " + ", ".join(f"{k} {v:.4f}" for k, v in r2s.items()) +
        f"; harness GCV and LOO pick the same alpha for {100 * agree_gl:.1f}% of targets")
    hist = {f"{a:.3g}": int(c) for a, c in zip(alphas, (np.asarray(res["harness_loo"][1])[:, None]
                                                       == np.asarray(alphas, np.float32)[None]).sum(0))}
    out["best_alpha_counts_loo"] = hist
    log("  harness LOO best-alpha counts: " + ", ".join(f"{a}:{c}" for a, c in hist.items()))
    for ref, mine, mode_t in (("sklearn", "harness_loo", "harness LOO"), ("himalaya", "harness_cv5", "harness cv=5")):
        if ref not in res:
            continue
        pr, br = res[ref]
        tc = pr.shape[1]
        ph, bh = res[mine][0][:, :tc], res[mine][1][:tc]
        agree = same_alpha(bh, br)
        d_all, d_same = rel_diff(ph, pr), rel_diff(ph[:, agree], pr[:, agree])
        extra = PHASES[ref].get("extrapolated", False)
        out.update({f"max_rel_diff_{ref}": d_all, f"max_rel_diff_{ref}_same_alpha": d_same,
                    f"alpha_agreement_{ref}": round(float(agree.mean()), 6), f"targets_compared_{ref}": tc,
                    f"time_{ref}_s": T[ref], f"time_{ref}_extrapolated": extra,
                    f"time_{ref}_extrapolation_unreliable": PHASES[ref].get("extrapolation_unreliable", False),
                    f"speedup_vs_{ref}": round(T[ref] / T[mine], 2),
                    f"speedup_gcv_vs_{ref}": round(T[ref] / T["harness_gcv"], 2),
                    f"speedup_vs_{ref}_cpu_time": round(C[ref] / C[mine], 2),
                    f"speedup_gcv_vs_{ref}_cpu_time": round(C[ref] / C["harness_gcv"], 2)})
        lab = " (EXTRAPOLATED time)" if extra else ""
        log(f"  vs {ref:9s}: {mode_t}: max rel pred diff {d_all:.2e} (over targets with the same alpha "
            f"{d_same:.2e}); same alpha for {100 * agree.mean():.2f}% of {tc} targets")
        log(f"               speed-up {mode_t} {T[ref] / T[mine]:.2f}x, harness GCV {T[ref] / T['harness_gcv']:.2f}x"
            f" ({ref} {T[ref]:.2f}s{lab}, {mode_t} {T[mine]:.2f}s, harness GCV {T['harness_gcv']:.2f}s); "
            f"by CPU time {C[ref] / C[mine]:.2f}x and {C[ref] / C['harness_gcv']:.2f}x")
    if "himalaya" in res:
        out.update(himalaya_backend=hb, himalaya_cv=hcv_note)
    out.update(sweep)
    peaks = [v for rec in PHASES.values() for kk, v in rec.items() if kk.startswith("peak_rss")]
    out.update(peak_memory_mb={k: {kk: v for kk, v in rec.items() if "mb" in kk} for k, rec in PHASES.items()},
               peak_memory_note=("per phase: CUDA max_memory_allocated (GPU) and ru_maxrss of the whole process "
                                 "(the RSS high-water mark is reset before each phase via /proc/self/clear_refs, "
                                 "so it is the phase peak; it includes the data and the imported libraries, "
                                 "see rss_at_start_mb)" if mem.can_reset else
                                 "ru_maxrss cumulative over the process (no per-phase reset available)"),
               ru_maxrss_mb=round(max(peaks + [mem.maxrss0]), 1),
               estimated_total_min=round(sum(est.values()) / 60, 2),
               phases={k: {kk: v for kk, v in rec.items() if "mb" not in kk} for k, rec in PHASES.items()},
               total_wall_s=round(time.perf_counter() - t_start, 1),
               load_avg_1m_start=load_start, load_avg_1m_end=load[0], feature_decay=args.feature_decay)
    if max(load_start, load[0]) > 1.5 * (os.cpu_count() or 1):
        log(f"  WARNING: the machine was busy (1-min load average {load_start} at start, {load[0]} at the end, "
            f"{os.cpu_count()} cores): timings are inflated by other processes")
    log(f"  process peak RSS (ru_maxrss) {out['ru_maxrss_mb']:.0f} MB; total wall {out['total_wall_s']:.1f}s "
        f"(estimated {out['estimated_total_min'] * 60:.0f}s)")
    print(json.dumps(out), flush=True)


def run_sweep(Xtr, Ytr, Xte, alphas, args, device, mem):
    """k GCV fits with k different alpha grids: one shared Decomposition vs independent fits."""
    k, k_ind = args.sweep_k, args.sweep_independent
    grids = [list(np.asarray(alphas) * 10 ** (i / k - 0.5)) for i in range(k)]  # k shifted grids
    log(f"\n[sweep] {k} GCV fits, each with its own alpha grid (grids shifted by 10^(i/{k}-0.5))")
    with phase("sweep_reuse", mem) as rec:
        t0 = time.perf_counter()
        d = Decomposition.of(Xtr, device=device)
        _sync(device)
        rec["decomposition_s"] = round(time.perf_counter() - t0, 3)
        reuse = []
        for i, g in enumerate(grids):
            m = RidgeCV(g, device=device, target_batch=args.target_batch).fit(Xtr, Ytr, decomposition=d)
            if i < k_ind:
                reuse.append((m.best_alphas_.cpu().numpy(), m.predict(Xte)))
        del d, m
    with phase("sweep_independent", mem, fits_measured=k_ind) as rec:
        diffs, same = [], []
        for i, g in enumerate(grids[:k_ind]):
            m = RidgeCV(g, device=device, target_batch=args.target_batch).fit(Xtr, Ytr)
            diffs.append(rel_diff(m.predict(Xte), reuse[i][1]))
            same.append(float(same_alpha(m.best_alphas_.cpu().numpy(), reuse[i][0]).mean()))
        del m
    t_reuse = PHASES["sweep_reuse"]["seconds"]
    t_ind = PHASES["sweep_independent"]["seconds"] * k / k_ind
    extra = k_ind < k
    log(f"  one Decomposition ({PHASES['sweep_reuse']['decomposition_s']:.2f}s) + {k} fits: {t_reuse:.2f}s   "
        f"{_mem_str(PHASES['sweep_reuse'])}")
    log(f"  {k} independent fits:        {t_ind:.2f}s" +
        (f" (EXTRAPOLATED: {k_ind} measured in {PHASES['sweep_independent']['seconds']:.2f}s, x{k}/{k_ind})" if extra else "") +
        f"   {_mem_str(PHASES['sweep_independent'])}")
    c_reuse, c_ind = PHASES["sweep_reuse"]["cpu_seconds"], PHASES["sweep_independent"]["cpu_seconds"] * k / k_ind
    log(f"  sweep speed-up {t_ind / t_reuse:.2f}x (by CPU time {c_ind / c_reuse:.2f}x); reuse vs independent: max rel pred diff {max(diffs):.1e}, "
        f"same alphas {100 * min(same):.1f}%")
    return dict(sweep_k=k, sweep_time_reuse_s=t_reuse, sweep_time_independent_s=round(t_ind, 3),
                sweep_independent_extrapolated=extra, sweep_independent_measured=k_ind,
                sweep_speedup=round(t_ind / t_reuse, 2), sweep_speedup_cpu_time=round(c_ind / c_reuse, 2), sweep_max_rel_diff_reuse_vs_fresh=max(diffs),
                sweep_alpha_agreement_reuse_vs_fresh=min(same))


def _mem_str(rec):
    if not rec:
        return ""
    parts = []
    if "peak_gpu_mb" in rec:
        parts.append(f"peak GPU {rec['peak_gpu_mb']:.0f} MB")
    if "peak_rss_mb" in rec:
        parts.append(f"peak RSS {rec['peak_rss_mb']:.0f} MB (from {rec['rss_at_start_mb']:.0f} MB)")
    elif "peak_rss_mb_cumulative" in rec:
        parts.append(f"process peak RSS so far {rec['peak_rss_mb_cumulative']:.0f} MB")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
