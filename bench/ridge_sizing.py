"""The cost model of ``bench/ridge.py``: device calibration, time and memory estimates per phase, and
the problem size that fits a time budget and the available RAM."""
from __future__ import annotations

import time

import torch

from ridge_methods import _sync, proc_kb

NSD = dict(n=8859, p=15724, t=24576)  # NSD decoding: train samples, voxels, targets
QUICK = dict(n=1000, p=2000, t=1000)
K_FOLDS = 5


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

    avail = (proc_kb("/proc/meminfo", "MemAvailable") or 0) * 1024
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


def n_test_for(n):
    return int(min(1000, max(100, n // 5)))
