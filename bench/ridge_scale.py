#!/usr/bin/env python
"""One ridge fit at a given scale (NSD decoding by default): wall time and peak memory, no extrapolation.

    python bench/ridge_scale.py                                  # NSD decoding: n 8,859 · p 15,724 · t 24,576, 10 α
    python bench/ridge_scale.py --n 4430 --himalaya              # a size that fits a shared 2-core CPU, + himalaya cv=5
    python bench/ridge_scale.py --device cuda --himalaya         # on a GPU (himalaya backend torch_cuda)

Harness ``RidgeCV(cv="gcv")`` (the default mode) on the data of ``bench/ridge.py`` (``make_data``),
timed end to end (fit + predict on the held-out samples); with ``--himalaya`` also the harness's
``cv=5`` and himalaya's ``KernelRidgeCV(cv=5)`` on the same arrays, in the same process, and
their agreement (largest relative difference of held-out predictions, share of equal α). Peak memory per phase as in
``bench/ridge.py`` (process peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU). The
last stdout line is one JSON object.
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
from brainharness.ridge import resolve_device  # noqa: E402
from ridge_methods import PHASES, Memory, log, make_data, phase, run_harness, run_himalaya, set_himalaya_backend  # noqa: E402
from ridge_sizing import K_FOLDS, NSD, n_test_for  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for k in ("n", "p", "t"):
        ap.add_argument(f"--{k}", type=int, default=NSD[k], help=f"default {NSD[k]} (NSD decoding)")
    ap.add_argument("--alphas", type=int, default=10, help="number of α, log-spaced over 1e-2..1e7 (default 10)")
    ap.add_argument("--device", default="auto", help="harness device: auto (CUDA if present), cpu, cuda")
    ap.add_argument("--himalaya", action="store_true", help=f"also time himalaya KernelRidgeCV(cv={K_FOLDS})")
    ap.add_argument("--target-batch", type=int, default=4096)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    alphas = [float(a) for a in np.logspace(-2, 7, args.alphas)]
    n, p, t, n_test = args.n, args.p, args.t, n_test_for(args.n)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    log(f"ridge at n {n} · p {p} · t {t} ({n_test} test samples), {len(alphas)} α, device {name}, "
        f"torch threads {torch.get_num_threads()}, 1-min load {os.getloadavg()[0]:.2f}")
    mem = Memory(device)
    with phase("data", mem):
        Xtr, Ytr, Xte, Yte, _ = make_data(n, p, t, n_test)
    w = (Xtr[:40, :60].copy(), Ytr[:40, :3].copy())  # warm-up: first-call overheads are not timed
    run_harness(w[0], w[1], w[0], alphas, "gcv", device, args.target_batch)
    with phase("harness_gcv", mem):
        pred, _ = run_harness(Xtr, Ytr, Xte, alphas, "gcv", device, args.target_batch)
    del pred
    backend, agree = None, {}
    if args.himalaya:  # the same criterion side by side: harness cv=5, then himalaya cv=5
        run_harness(w[0], w[1], w[0], alphas, K_FOLDS, device, args.target_batch)
        with phase("harness_cv5", mem):
            pred, best = run_harness(Xtr, Ytr, Xte, alphas, K_FOLDS, device, args.target_batch)
        backend = set_himalaya_backend(device)
        run_himalaya(w[0], w[1], w[0], alphas, K_FOLDS)
        with phase("himalaya_cv5", mem):
            hpred, hbest = run_himalaya(Xtr, Ytr, Xte, alphas, K_FOLDS)
        agree = dict(max_rel_pred_diff_cv5_vs_himalaya=float(np.abs(pred - hpred).max() / np.abs(hpred).max()),
                     same_alpha_share=float(np.isclose(best, hbest, rtol=1e-4).mean()))
        log(f"  harness cv={K_FOLDS} vs himalaya: max rel pred diff {agree['max_rel_pred_diff_cv5_vs_himalaya']:.2e}, "
            f"same alpha for {100 * agree['same_alpha_share']:.2f} % of targets")
        del pred, hpred
    inputs_mb = (Xtr.nbytes + Ytr.nbytes + Xte.nbytes + Yte.nbytes) / 2 ** 20
    for k, rec in PHASES.items():
        log(f"  {k:13s} {rec['seconds']:8.1f} s wall (cpu {rec['cpu_seconds']:.1f} s); " +
            ", ".join(f"{kk} {v:.0f}" for kk, v in rec.items() if "mb" in kk))
    out = dict(n=n, p=p, t=t, n_test=n_test, n_alphas=len(alphas), device=name, himalaya_backend=backend,
               torch_threads=torch.get_num_threads(), inputs_mb=round(inputs_mb, 1), phases=PHASES, **agree,
               load_avg_1m_end=round(os.getloadavg()[0], 2))
    log(f"  inputs (X, Y train + test, float32) {inputs_mb:.0f} MB; 1-min load at the end {out['load_avg_1m_end']}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
