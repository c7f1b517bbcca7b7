#!/usr/bin/env python
"""NSD-scale voxel encoding end to end: the harness's ``encoding`` task beside a plain numpy + scikit-learn pipeline.

    python bench/nsd_encoding.py                          # NSD size: 8,859 / 982 images, 15,724 voxels; 768 and 4,096 features
    python bench/nsd_encoding.py --quick                  # smoke run (small sizes, < 1 min)
    python bench/nsd_encoding.py --features 4096 --skip sklearn
    python bench/nsd_encoding.py --device cuda            # the ridge on a GPU (the rest stays on the CPU)

One synthetic subject of NSD's size is generated in memory: a latent signal seen by every
feature set, voxel responses with a per-voxel SNR, train images averaged over 3 repeats, and
three single trials per test image from which the noise ceiling is computed with the harness's
own ``brainharness.metrics.noise_ceiling`` (NSD formula). The harness side is the real code
path of a run: ``EncodingTask.run`` (the registered ``encoding`` task with its defaults: GCV
ridge with a per-voxel α on a 10-point log grid, standardised features, noise-ceiling-normalised
R², per-ROI medians, 1,000 bootstrap resamples) on a ``TaskContext`` whose feature view returns
the precomputed features (the role of the feature cache), then ``ResultStore.save`` (record +
per-voxel sidecar). Stages: ``load`` (generating the responses and trials, noise ceiling),
``features``, ``ridge``, ``scoring`` (as the task times them), ``write``. The plain pipeline on
the same arrays: ``StandardScaler``, ``RidgeCV(alphas, alpha_per_target=True)`` (efficient
LOO), predictions, per-voxel R² (squared Pearson r, as the harness, and scikit-learn's
``r2_score``), 100·R²/NC over voxels with NC > 10 %, ``np.savez_compressed``.

Peak memory per stage: the process's peak RSS (the kernel's high-water mark VmHWM, reset before
each stage through /proc/self/clear_refs; exact, not sampled), reported above the RSS before
any data existed (after a tiny warm-up run of both pipelines, so that the libraries' lazy
allocations are not counted as data), and as a ratio to the input matrices (features of all
images + averaged responses of both splits, float32, resident throughout: the ratio is ≥ 1 by
construction). The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brainharness.data import Responses, Stimuli  # noqa: E402
from brainharness.metrics.noise_ceiling import ncsnr, noise_ceiling  # noqa: E402
from brainharness.results import ResultStore  # noqa: E402
from brainharness.ridge import resolve_device  # noqa: E402
from brainharness.task import TaskContext  # noqa: E402
from brainharness.tasks.encoding import TABLE13, EncodingTask  # noqa: E402
from ridge_methods import PHASES, Memory, log, phase, proc_kb  # noqa: E402

NSD = dict(n_train=8859, n_test=982, n_voxels=15724, repeats=3)
QUICK = dict(n_train=1200, n_test=200, n_voxels=2000, repeats=3)
ALPHAS = np.logspace(-2, 7, 10)  # the encoding task's default grid (alpha_min, alpha_max, n_alphas)


# -- the synthetic subject -----------------------------------------------------------------
def make_subject(n_train, n_test, n_voxels, repeats, rank=64, seed=0):
    """Responses (train averages, test averages), the test noise ceiling (%), ROI masks and the
    latent signal Z that feature sets read out. Test single trials exist only inside (dropped)."""
    rng = np.random.default_rng(seed)
    N = n_train + n_test
    spec = (1.0 + np.arange(rank, dtype=np.float32)) ** -0.5
    Z = rng.standard_normal((N, rank), dtype=np.float32) * spec
    B = rng.standard_normal((rank, n_voxels), dtype=np.float32)
    signal = Z @ B
    signal /= signal.std(0)
    noise_sd = (10.0 ** rng.uniform(np.log10(0.4), np.log10(10.0), n_voxels)).astype(np.float32)  # per voxel
    noise_sd[rng.random(n_voxels) < 0.1] = 1e3  # 10 % voxels without signal (NC ≈ 0)
    Y_train = rng.standard_normal((n_train, n_voxels), dtype=np.float32)
    Y_train *= noise_sd / np.sqrt(repeats)  # the average of `repeats` trials
    Y_train += signal[:n_train]
    trials = rng.standard_normal((repeats * n_test, n_voxels), dtype=np.float32)
    trials *= noise_sd
    trial_stim = np.tile(np.arange(n_train, N), repeats)
    trials += signal[trial_stim]
    del signal
    scale = trials.std(0)  # z-scored trials (NSD's single trials are z-scored within sessions)
    trials /= scale
    Y_train /= scale
    Y_test = trials.reshape(repeats, n_test, n_voxels).mean(0)
    nc = noise_ceiling(ncsnr(trials, trial_stim, repeats), repeats)  # the harness's NSD formula
    del trials
    labels = rng.integers(0, len(TABLE13.rois) + 1, n_voxels)  # 12 ROIs + voxels in none
    rois = {name: labels == i for i, name in enumerate(TABLE13.rois)}
    rois["nsdgeneral"] = np.ones(n_voxels, dtype=bool)
    return Y_train, Y_test, nc, rois, Z


def make_features(Z, dim, seed):
    """A backbone's features of every image: a linear view of the latent signal + noise, offsets."""
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((len(Z), dim), dtype=np.float32)
    F += Z @ rng.standard_normal((Z.shape[1], dim), dtype=np.float32)
    F += rng.standard_normal(dim, dtype=np.float32)
    return F


class ArrayFeatures:
    """``ctx.features`` on precomputed rows (what the runner's view serves from the feature cache)."""

    def __init__(self, ids, feats):
        self.ids, self.feats = ids, feats

    def prefetch(self, layers) -> None:
        pass

    def __call__(self, ids, layer=None):
        return self.feats[np.searchsorted(self.ids, ids)]


# -- the two pipelines ---------------------------------------------------------------------
def run_harness(subject, feats, dim, device, n_boot, store_root, mem):
    Y_train, Y_test, nc, rois, _ = subject
    n_train = len(Y_train)
    ids = np.arange(len(feats))
    backbone = SimpleNamespace(layer=f"synthetic-{dim}", readout=None)
    ctx = TaskContext(subject_name="nsd-size", stimuli=Stimuli(ids, read_images=None), fit=Responses(ids[:n_train], Y_train),
                      score=Responses(ids[n_train:], Y_test), rois=rois, noise_ceiling=nc,
                      nc_source="synthetic test trials (NSD formula)", evaluated_on="test",
                      features=ArrayFeatures(ids, feats), backbone=backbone, seed=0, device=str(device))
    task = EncodingTask(n_boot=n_boot)
    with phase(f"harness_{dim}_task", mem) as rec:
        out = task.run(ctx)
        rec.update({k: round(v, 3) for k, v in out.extras["timings"].items()})
    record = {"key": {"dataset": "nsd-size", "subject": "nsd-size", "backbone": f"synthetic-{dim}",
                      "weights": "none", "task": "encoding", "experiment": "bench"},
              "status": "complete", "evaluated_on": "test", "task": {"name": "encoding", "params": task.p},
              "dataset": {"name": "nsd-size"}, "provenance": {"seed": 0}, "backbone": {"name": f"synthetic-{dim}"},
              "main_score": out.main_score, "scores": out.scores, "tables": out.tables,
              "timings": out.extras["timings"]}
    with phase(f"harness_{dim}_write", mem):
        path = ResultStore(store_root).save(record, out.per_voxel)
    return dict(main_score=out.main_score, score=out.scores[out.main_score],
                median_r2=out.scores["median_r2"], sidecar_bytes=sum(f.stat().st_size for f in path.parent.iterdir()))


def run_sklearn(subject, feats, dim, n_voxels, out_dir, mem, threshold=10.0):
    """What a user would write with numpy + scikit-learn (on the first ``n_voxels`` voxels)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.preprocessing import StandardScaler

    Y_train, Y_test, nc, _, _ = subject
    n_train = len(Y_train)
    name = f"sklearn_{dim}" + (f"_v{n_voxels}" if n_voxels < Y_train.shape[1] else "")
    with phase(name, mem) as rec:
        t0 = time.perf_counter()
        X_train, X_test = feats[:n_train], feats[n_train:]
        scaler = StandardScaler().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
        t1 = time.perf_counter()
        model = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(X_train, Y_train[:, :n_voxels])
        pred = model.predict(X_test)
        t2 = time.perf_counter()
        actual = Y_test[:, :n_voxels]
        pc, ac = pred - pred.mean(0), actual - actual.mean(0)
        r = (pc * ac).sum(0) / np.sqrt((pc * pc).sum(0) * (ac * ac).sum(0))
        r2 = np.clip(r, 0, None) ** 2
        cod = r2_score(actual, pred, multioutput="raw_values")
        kept = nc[:n_voxels] > threshold
        nc_r2 = 100 * r2[kept] / (nc[:n_voxels][kept] / 100)  # NC in % (not clipped at 100, unlike the harness)
        t3 = time.perf_counter()
        np.savez_compressed(Path(out_dir) / f"{name}.npz", r2=r2, cod=cod, alpha=np.asarray(model.alpha_), nc=nc[:n_voxels])
        rec.update(features_s=round(t1 - t0, 3), ridge_s=round(t2 - t1, 3), scoring_s=round(t3 - t2, 3),
                   write_s=round(time.perf_counter() - t3, 3), n_voxels=n_voxels)
    return dict(median_nc_r2=float(np.median(nc_r2)), median_r2=float(np.median(r2)),
                median_cod=float(np.median(cod)))


# -- main ----------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"small sizes {QUICK}")
    ap.add_argument("--features", default="768,4096", help="comma list of feature widths (default 768,4096)")
    ap.add_argument("--skip", default="", help="comma list of: sklearn")
    ap.add_argument("--sklearn-voxels", type=int, default=None,
                    help="run scikit-learn on the first N voxels only (default: all); said so in the output")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (the task's default 1000)")
    ap.add_argument("--device", default="cpu", help="ridge device: cpu (default), cuda, auto")
    args = ap.parse_args(argv)
    size = QUICK if args.quick else NSD
    dims = [int(d) for d in args.features.split(",") if d]
    skip = {s for s in args.skip.split(",") if s}
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    log(f"NSD-size encoding: {size}, features {dims}, ridge device {name}, torch threads {torch.get_num_threads()}, "
        f"1-min load {os.getloadavg()[0]:.2f}")
    mem = Memory(device)
    results, tmp = {}, Path(tempfile.mkdtemp(prefix="nsd_encoding_"))
    warm = make_subject(120, 30, 40, 3)  # warm-up: the libraries' lazy allocations happen before the baseline
    run_harness(warm, make_features(warm[4], 16, 0), 16, device, 10, tmp / "warm", mem)
    if "sklearn" not in skip:
        run_sklearn(warm, make_features(warm[4], 16, 0), 16, 40, tmp, mem)
    PHASES.clear()
    del warm
    rss0 = proc_kb("/proc/self/status", "VmRSS") / 1024  # MB: interpreter + warmed-up libraries, no data yet
    with phase("load", mem):
        subject = make_subject(**size)
    resp_mb = (subject[0].nbytes + subject[1].nbytes) / 2 ** 20
    log(f"  load (responses, test trials, noise ceiling): {PHASES['load']['seconds']:.1f} s; responses {resp_mb:.0f} MB")
    for dim in dims:
        with phase(f"make_features_{dim}", mem):
            feats = make_features(subject[4], dim, seed=dim)
        inputs_mb = resp_mb + feats.nbytes / 2 ** 20
        log(f"\n[{dim} features] inputs (features {feats.nbytes / 2 ** 20:.0f} MB + responses): {inputs_mb:.0f} MB")
        res = {"inputs_mb": round(inputs_mb, 1)}
        res["harness"] = run_harness(subject, feats, dim, device, args.n_boot, tmp / "store", mem)
        task, write = PHASES[f"harness_{dim}_task"], PHASES[f"harness_{dim}_write"]
        peak = max(task["peak_rss_mb"], write["peak_rss_mb"]) if "peak_rss_mb" in task else None
        res["harness"].update(wall_s=round(task["seconds"] + write["seconds"], 2), write_s=write["seconds"],
                              **{k: task[k] for k in ("features_s", "ridge_s", "scoring_s")})
        _report("harness", res["harness"], peak, rss0, inputs_mb)
        if "sklearn" not in skip:
            nv = min(args.sklearn_voxels or size["n_voxels"], size["n_voxels"])
            sk = run_sklearn(subject, feats, dim, nv, tmp, mem)
            rec = PHASES[f"sklearn_{dim}" + (f"_v{nv}" if nv < size["n_voxels"] else "")]
            sk.update(wall_s=rec["seconds"], n_voxels=nv, **{k: rec[k] for k in ("features_s", "ridge_s", "scoring_s", "write_s")})
            _report("sklearn", sk, rec.get("peak_rss_mb"), rss0, inputs_mb)
            res["sklearn"] = sk
        results[dim] = res
        del feats
    out = dict(size=size, features=dims, device=name, torch_threads=torch.get_num_threads(), rss_before_data_mb=round(rss0, 1),
               load_s=PHASES["load"]["seconds"], results=results, phases=PHASES, load_avg_end=os.getloadavg())
    print(json.dumps(out, default=float), flush=True)


def _report(who, res, peak, rss0, inputs_mb):
    if peak is not None:
        res.update(peak_rss_mb=peak, peak_above_start_mb=round(peak - rss0, 1), peak_ratio_to_inputs=round((peak - rss0) / inputs_mb, 2))
    stages = ", ".join(f"{k[:-2]} {res[k]:.1f} s" for k in ("features_s", "ridge_s", "scoring_s", "write_s") if k in res)
    mem_s = (f"; peak RSS {peak:.0f} MB = {peak - rss0:.0f} MB above the start = {res['peak_ratio_to_inputs']:.2f}x the inputs"
             if peak is not None else "")
    score = res.get("score", res.get("median_nc_r2"))
    log(f"  {who:8s} {res['wall_s']:7.1f} s ({stages}){mem_s}; median NC-normalised R2 {score:.2f} %, median r2 "
        f"{res['median_r2']:.4f}" + (f" (on {res['n_voxels']} voxels)" if "n_voxels" in res else ""))


if __name__ == "__main__":
    main()
