"""Read overhead of feature-cache verification (sha256 per block) on a realistic entry.

    python bench/feature_cache.py [--rows 10000] [--dim 4096] [--batch 64] [--repeats 5]

Writes one entry through FeatureCache (random float32 features), then times, from the page
cache: a plain h5py read of the features, the verified read (metadata checks + every block
re-hashed) and a whole cache hit (FeatureCache.features). Prints the best and median of each.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from brainharness.backbone import Backbone
from brainharness.data import Stimuli
from brainharness.features import FeatureCache, _key_json, _read


class RandomRows(Backbone):
    registry_name = "bench-random"

    def configure(self, p):
        self.dim = 0

    def layers(self):
        return ["x"]

    def encode(self, batch, layer):
        rng = np.random.default_rng(batch.ids)
        return rng.standard_normal((len(batch.ids), self.dim), dtype=np.float32)


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    ids = np.arange(a.rows)
    stim = Stimuli(ids, lambda rows: np.zeros((len(rows), 1, 1, 3), np.uint8), fingerprint="bench")
    bb = RandomRows(batch_size=a.batch)
    bb.dim = a.dim
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp)
        start = time.perf_counter()
        cache.features(bb, stim, ids)
        write = time.perf_counter() - start
        (path,) = Path(cache.root).glob("*.h5")
        key_json = _key_json(cache.key_parts(bb, stim, ids, "x"))

        def plain():
            with h5py.File(path, "r") as f:
                return f["features"][:]

        rows = {"plain h5py read": timed(plain, a.repeats),
                "verified read (sha256 per block)": timed(lambda: _read(path, key_json, ids), a.repeats),
                "cache hit (FeatureCache.features)": timed(lambda: cache.features(bb, stim, ids), a.repeats)}
    mb = a.rows * a.dim * 4 / 1e6
    print(f"{a.rows} x {a.dim} float32 ({mb:.0f} MB), blocks of {a.batch} rows; written in {write:.2f} s")
    for name, (best, median) in rows.items():
        print(f"{name:36s} best {best:.3f} s  median {median:.3f} s  ({mb / best / 1e3:.2f} GB/s best)")
    overhead = rows["verified read (sha256 per block)"][0] - rows["plain h5py read"][0]
    print(f"verification overhead: {overhead:.3f} s ({overhead / rows['plain h5py read'][0]:.0%} of a plain read)")


if __name__ == "__main__":
    main()
