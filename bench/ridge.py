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
* harness ``cv=5``      vs the same K-fold criterion with every step in float64 (``RidgeCV(...,
  dtype=float64)``, at most 1,024 targets): the accuracy reference for the float32 K-fold;
* harness ``cv="gcv"`` (the default mode), timed against both;
* head-to-head: ``--repeat`` rounds (default 3) of harness ``cv=5`` and himalaya ``cv=5``,
  alternating which runs first; the medians (single timings swing by 2-5x when other jobs
  share the cores);
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
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brainharness.ridge import Decomposition, RidgeCV, resolve_device  # noqa: E402
from ridge_methods import (PHASES, Memory, _sync, himalaya_folds, log, make_data, on_targets, phase,  # noqa: E402
                           run_harness, run_himalaya, run_sklearn, set_himalaya_backend)
from ridge_sizing import K_FOLDS, NSD, QUICK, calibrate, choose_size, estimate, estimate_bytes, n_test_for  # noqa: E402


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
    ap.add_argument("--skip", default="", help="comma list of: sklearn, himalaya, float64, sweep")
    ap.add_argument("--repeat", type=int, default=3,
                    help="head-to-head rounds of harness cv=5 and himalaya cv=5, alternating which goes first "
                         "(medians: robust to other load on a shared machine; 0 = none; default 3)")
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

    if "float64" not in skip:  # the K-fold reference: the same criterion with every step in float64
        t64 = min(t, ref_t, 1024)
        log(f"\n[float64 reference] RidgeCV(alphas, cv={K_FOLDS}, dtype=float64), {t64} targets")
        with phase("float64", mem, targets=t64, extrapolated=False):
            m64 = RidgeCV(alphas, cv=K_FOLDS, device=device, dtype=torch.float64, target_batch=args.target_batch)
            m64.fit(Xtr.astype(np.float64), Ytr[:, :t64].astype(np.float64))
            res["float64"] = (m64.predict(Xte.astype(np.float64)), m64.best_alphas_.cpu().numpy())
            del m64
        log(f"  float64      {PHASES['float64']['seconds']:8.2f} s   {_mem_str(PHASES['float64'])}")

    h2h = {}
    if args.repeat and "himalaya" in res and not PHASES["himalaya"].get("extrapolated"):
        h2h = head_to_head(Xtr, Ytr, Xte, alphas, hcv, device, args)

    sweep = {}
    if "sweep" not in skip:
        sweep = run_sweep(Xtr, Ytr, Xte, alphas, args, device, mem)

    # -- summary ---------------------------------------------------------------------
    names = ("harness_gcv", "harness_loo", "harness_cv5", "sklearn", "himalaya", "float64")
    C = {k: PHASES[k]["cpu_seconds"] for k in names if k in PHASES}
    T = {k: PHASES[k]["seconds"] for k in names if k in PHASES}
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
    for ref, mine, mode_t in (("sklearn", "harness_loo", "harness LOO"), ("himalaya", "harness_cv5", "harness cv=5"),
                               ("float64", "harness_cv5", "harness cv=5")):
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
    out.update(h2h)
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


def head_to_head(Xtr, Ytr, Xte, alphas, hcv, device, args):
    """``args.repeat`` rounds of harness cv=5 and himalaya cv=5 on the same data, alternating which
    runs first; per-round wall and CPU times, medians and the ratio of the medians."""
    log(f"\n[head-to-head] harness cv={K_FOLDS} vs himalaya cv={K_FOLDS}, {args.repeat} rounds, alternating order")
    runs = {"harness": lambda: run_harness(Xtr, Ytr, Xte, alphas, K_FOLDS, device, args.target_batch),
            "himalaya": lambda: run_himalaya(Xtr, Ytr, Xte, alphas, hcv)}
    wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
    for r in range(args.repeat):
        for k in (("harness", "himalaya") if r % 2 == 0 else ("himalaya", "harness")):
            t0, c0 = time.perf_counter(), time.process_time()
            runs[k]()
            _sync(device)
            wall[k].append(round(time.perf_counter() - t0, 3))
            cpu[k].append(round(time.process_time() - c0, 3))
        log(f"  round {r + 1}: harness {wall['harness'][-1]:.2f} s (cpu {cpu['harness'][-1]:.1f}), "
            f"himalaya {wall['himalaya'][-1]:.2f} s (cpu {cpu['himalaya'][-1]:.1f}); 1-min load {os.getloadavg()[0]:.2f}")
    med = {k: float(np.median(v)) for k, v in wall.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    log(f"  median: harness cv={K_FOLDS} {med['harness']:.2f} s, himalaya {med['himalaya']:.2f} s: harness "
        f"{med['himalaya'] / med['harness']:.2f}x himalaya's speed (by CPU time {med_cpu['himalaya'] / med_cpu['harness']:.2f}x)")
    return dict(h2h_rounds=args.repeat, h2h_wall_s=wall, h2h_cpu_s=cpu, h2h_median_wall_s=med,
                h2h_speedup_cv5_vs_himalaya=round(med["himalaya"] / med["harness"], 3),
                h2h_speedup_cv5_vs_himalaya_cpu_time=round(med_cpu["himalaya"] / med_cpu["harness"], 3))


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
