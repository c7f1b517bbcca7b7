"""The built-in synthetic dataset: procedural scenes, captions and simulated voxel responses.

Everything is deterministic from ``seed`` and generated on first use into one HDF5 file,
``<cache_dir>/datasets/synthetic-<hash>.h5`` (hash of all parameters and :attr:`VERSION`).
The file is written under a temporary name and renamed when complete, so an interrupted
generation never leaves a file that looks finished; later loads open it without regenerating.
A lock file (``….h5.lock``) makes concurrent loaders wait for one generator.

The generative model
--------------------
(Code: scenes in :mod:`.synthetic_scenes`, captions in :mod:`.synthetic_captions`, generating
features and voxels in :mod:`.synthetic_responses`; this module writes and reads the file.)

* **Scenes** (one per stimulus id, drawn from ``(seed, id)`` alone, so stimulus ``i`` is the
  same image whatever the dataset size): a background — a plain colour, or a *place* (sky,
  horizon, grass / street / sand ground, a house or a tall building) — and 1–3 items, each a
  *face*, a *body* (a standing person), a *word* sign (rows of letter-like glyphs) or an
  *object* (ball, box, triangle), with a colour and a position (left / centre / right,
  top / bottom).
* **Captions**: five COCO-like sentences per image from the scene content (varied templates
  and synonyms; de-duplicated); the first one always names every item. ``Stimuli.descriptions``
  holds one exhaustive, templated description per image.
* **Generating features** (``Stimuli.extras``, float32, z-scored over all stimuli, constant
  columns 0): ``features_low`` — RMS gradient energy (local contrast) of luminance and two
  colour-opponent channels in an 8×8 grid of cells (192 dims, nonlinear in the pixels);
  ``features_category`` — presence, count, size and position of faces, bodies, words,
  objects, and the place layout (32 dims, names in ``Dataset.info["feature_names"]``);
  ``features_all`` — both, concatenated. ``category_presence`` (bool, columns
  ``face, body, place, word, object``) is the raw presence of each category.
* **Voxels** (per subject): ROIs V1, V2, V3, hV4 (weighted low-level energy in a Gaussian
  receptive field around a random grid location, wider in later areas), EBA/FBA (bodies),
  OFA/FFA (faces), OPA/PPA (places), OWFA/VWFA (words) — the category areas with a smaller
  low-level share (larger for the occipital OFA/OPA/OWFA) — and mixed-tuning voxels in no
  named ROI; ``nsdgeneral`` is every voxel. The signal of a voxel is *linear* in
  ``features_all`` (so the oracle backbone can reach the noise ceiling), scaled to unit
  variance over all stimuli; a fraction ``noise_fraction`` of the voxels of every ROI are pure
  noise (signal 0). Each voxel has its own noise sd (SNR log-uniform in [0.1, 2.5]).
* **Trials**: each stimulus is shown ``repeats`` times in a random order, split into sessions
  of about ``trials_per_session`` trials; a trial is signal + Gaussian noise, then a per-session
  gain and offset per voxel (drift), then each voxel is z-scored within each session.
  ``Responses.averaged`` is the mean of a stimulus's z-scored trials.
* **Noise ceiling**: ``Subject.noise_ceiling`` is *estimated* from all single trials with the
  NSD formula (:mod:`brainharness.metrics.noise_ceiling`); ``Subject.truth`` holds the true values:
  ``noise_ceiling`` (``100·s²/(s² + σ²·mean(1/n))`` with ``s`` the sd of the signal over the
  test stimuli and ``n`` their repeat counts), ``signal_sd``, ``noise_sd`` (generating units,
  before the session drift and z-scoring), ``ncsnr`` (= signal_sd / noise_sd) and
  ``pure_noise`` (bool).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
from pathlib import Path

import h5py
import numpy as np

from brainharness.cache import cache_root
from brainharness.capabilities import CAPTIONS, DESCRIPTIONS, ROI_MASKS, SINGLE_TRIALS
from brainharness.data import Dataset, DatasetLoader, Responses, Stimuli, Subject
from brainharness.errors import DataError
from brainharness.metrics.noise_ceiling import inverse_repeats, noise_ceiling, zscore_within_sessions
from brainharness.params import PATH, Param
from brainharness.registry import register_dataset

from .synthetic_captions import describe_scene, make_captions
from .synthetic_responses import (CATEGORY_FEATURE_NAMES, LOW_FEATURE_NAMES, N_CAT, N_LOW, PRESENCE_COLUMNS,
                                  ROI_NAMES, ROI_SPEC, SNR_RANGE, category_features, low_level_features, presence,
                                  voxel_model, voxel_signal, zscore_columns)
from .synthetic_scenes import make_scene, render, scene_rng

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Generation constants (changing them changes the numbers: bump VERSION)
# --------------------------------------------------------------------------------------------
VOXEL_CHUNK = 512  # voxels simulated at once (fixed: it seeds the per-chunk noise streams)
IMAGE_BATCH = 256


def _ncsnr_grouped(grouped: np.ndarray, means: np.ndarray) -> np.ndarray:
    """:func:`brainharness.metrics.noise_ceiling.ncsnr` for trials already grouped as (stimuli, repeats, voxels).

    The same formula (mean over stimuli of the ddof=1 variance across repeats), computed
    without re-sorting the trials — it is the bottleneck at NSD size otherwise. The tests
    check it against :func:`~brainharness.metrics.noise_ceiling.ncsnr` on the stored trials.
    """
    dev = grouped - means[:, None, :]
    noise_var = np.einsum("irv,irv->iv", dev, dev).mean(0, dtype=np.float64) / (grouped.shape[1] - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.sqrt(np.clip(1.0 - noise_var, 0.0, None)) / np.sqrt(noise_var)
    return np.nan_to_num(snr, nan=0.0, posinf=0.0).astype(np.float32)


def _read_matrix(dset) -> np.ndarray:
    """Read a 2-D HDF5 dataset in blocks of whole chunk columns (much faster than one big read)."""
    out = np.empty(dset.shape, dtype=dset.dtype)
    step = dset.chunks[1] if dset.chunks else dset.shape[1]
    for v0 in range(0, dset.shape[1], max(1, step)):
        v1 = min(dset.shape[1], v0 + step)
        dset.read_direct(out, np.s_[:, v0:v1], np.s_[:, v0:v1])
    return out


# --------------------------------------------------------------------------------------------
# The dataset plugin
# --------------------------------------------------------------------------------------------
def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


class _ImageReader:
    """Reads images by row from the dataset's HDF5 file; opens the file per call (fork-safe, picklable)."""

    def __init__(self, path: Path, n: int, size: int):
        self.path, self.n, self.size = Path(path), n, size

    def __call__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return np.empty((0, self.size, self.size, 3), dtype=np.uint8)
        if rows.min() < 0 or rows.max() >= self.n:
            raise DataError(f"image rows must be in [0, {self.n}), got {rows.min()}..{rows.max()}")
        uniq, inverse = np.unique(rows, return_inverse=True)
        try:
            with h5py.File(self.path, "r") as f:
                images = f["stimuli/images"]
                lo, hi = int(uniq[0]), int(uniq[-1]) + 1
                if hi - lo <= 2 * len(uniq):  # dense: one contiguous read
                    block = images[lo:hi][uniq - lo]
                else:  # h5py fancy indexing needs increasing indices
                    block = images[uniq]
        except OSError as e:
            raise DataError(f"cannot read synthetic images from {self.path}: {e}") from None
        return block[inverse.reshape(-1)]


@register_dataset("synthetic")
class SyntheticDataset(DatasetLoader):
    """Procedural scenes with captions and simulated voxel responses with a known truth.

    Parameters: ``n_train``, ``n_test`` (stimuli per split; the test ids are a seeded random
    subset of ``0..n_train+n_test-1``), ``n_voxels`` (per subject, ≥ 13 so that every ROI has
    a voxel), ``image_size`` (pixels, ≥ 16), ``n_subjects``, ``seed``, ``repeats`` (trials per
    stimulus, ≥ 2), ``trials_per_session``, ``noise_fraction`` (share of pure-noise voxels, in
    [0, 1]) and ``cache_dir`` (default ``$BRAINHARNESS_CACHE`` or ``~/.cache/brainharness``;
    the file goes under ``<cache_dir>/datasets/``). See the module docstring for the model.
    """

    VERSION = version = "1"  # in the data cache key and the result identity: bump when numbers change
    provides = (CAPTIONS, DESCRIPTIONS, SINGLE_TRIALS, ROI_MASKS)  # declared capabilities
    params = {
        "n_train": Param(1000, ge=2, doc="training stimuli"),
        "n_test": Param(300, ge=2, doc="test stimuli (a seeded random subset of the ids)"),
        "n_voxels": Param(1000, ge=len(ROI_SPEC), doc="voxels per subject (every ROI gets one)"),
        "image_size": Param(64, ge=16, le=1024, doc="image side (pixels)"),
        "n_subjects": Param(1, ge=1, le=99, doc="simulated subjects"),
        "seed": Param(0, ge=0, doc="seed of everything generated"),
        "repeats": Param(3, ge=2, le=100, doc="trials per stimulus"),
        "trials_per_session": Param(750, ge=10, doc="trials per simulated session"),
        "noise_fraction": Param(0.1, ge=0, le=1, doc="share of pure-noise voxels"),
        "cache_dir": Param(None, PATH, doc="cache root; the file goes under <cache_dir>/datasets/"),
    }

    @classmethod
    def sizes(cls, params: dict) -> dict:
        return {k: params[k] for k in ("n_train", "n_test", "n_voxels")}

    def configure(self, p):
        for k in ("n_train", "n_test", "n_voxels", "image_size", "n_subjects", "seed", "repeats",
                  "trials_per_session"):
            setattr(self, k, p[k])
        self.noise_fraction = float(p["noise_fraction"])  # part of the file's hash: always a float
        self.cache_dir = cache_root(p["cache_dir"])

    # -- identity ----------------------------------------------------------------------
    def data_params(self) -> dict:
        """The parameters that determine the numbers (everything but the cache folder)."""
        return {"n_train": self.n_train, "n_test": self.n_test, "n_voxels": self.n_voxels,
                "image_size": self.image_size, "n_subjects": self.n_subjects, "seed": self.seed,
                "repeats": self.repeats, "trials_per_session": self.trials_per_session,
                "noise_fraction": self.noise_fraction}

    @property
    def hash(self) -> str:
        return _short_hash({"params": self.data_params(), "version": self.VERSION})

    @property
    def fingerprint(self) -> str:
        """Identifies the stimulus set (ids and images) only: voxel parameters do not change it."""
        n = self.n_train + self.n_test
        return "synthetic-" + _short_hash({"n_stimuli": n, "image_size": self.image_size, "seed": self.seed,
                                           "version": self.VERSION})

    @property
    def path(self) -> Path:
        return self.cache_dir / "datasets" / f"synthetic-{self.hash}.h5"

    def describe(self) -> dict:
        return {"name": "synthetic", "version": self.VERSION, **self.data_params(), "cache_dir": str(self.cache_dir),
                "hash": self.hash, "path": str(self.path), "fingerprint": self.fingerprint}

    # -- loading -----------------------------------------------------------------------
    def load(self) -> Dataset:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One generator per file: concurrent workers wait for it instead of repeating the work.
            with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    if not self.path.exists():
                        for stale in self.path.parent.glob(self.path.name + ".tmp-*"):
                            stale.unlink(missing_ok=True)  # left by a killed generator
                        self.generate()
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        try:
            return self._read()
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"synthetic dataset file {self.path} is unreadable ({e}); delete it to regenerate") from None

    def generate(self) -> Path:
        """Write the HDF5 file (temporary name, renamed when complete). Returns its path."""
        final = self.path
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        log.info("generating the synthetic dataset into %s", final)
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["version"] = self.VERSION
                f.attrs["params"] = json.dumps(self.data_params(), sort_keys=True)
                feats = self._write_stimuli(f)
                for k in range(self.n_subjects):
                    self._write_subject(f, k, feats)
                f.attrs["complete"] = True
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    # -- generation --------------------------------------------------------------------
    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_train + self.n_test
        rng = np.random.default_rng([self.seed, 2000])
        test = np.zeros(n, dtype=bool)
        test[rng.choice(n, size=self.n_test, replace=False)] = True
        return np.flatnonzero(~test), np.flatnonzero(test)

    def _write_stimuli(self, f: h5py.File) -> dict:
        n, size = self.n_train + self.n_test, self.image_size
        ids = np.arange(n, dtype=np.int64)
        train_ids, test_ids = self._split()
        g = f.create_group("stimuli")
        g.create_dataset("ids", data=ids)
        g.create_dataset("train_ids", data=train_ids)
        g.create_dataset("test_ids", data=test_ids)
        images = g.create_dataset("images", shape=(n, size, size, 3), dtype=np.uint8, chunks=(1, size, size, 3),
                                  compression="gzip", compression_opts=1)
        low = np.empty((n, N_LOW), dtype=np.float32)
        cat = np.empty((n, N_CAT), dtype=np.float32)
        pres = np.empty((n, len(PRESENCE_COLUMNS)), dtype=bool)
        captions, descriptions = [], []
        for start in range(0, n, IMAGE_BATCH):
            stop = min(n, start + IMAGE_BATCH)
            batch = np.empty((stop - start, size, size, 3), dtype=np.uint8)
            for i in range(start, stop):
                scene = make_scene(scene_rng(self.seed, i, 0))
                batch[i - start] = render(scene, size)
                cat[i] = category_features(scene)
                pres[i] = presence(scene)
                captions.append(make_captions(scene, scene_rng(self.seed, i, 1)))
                descriptions.append(describe_scene(scene))
            images[start:stop] = batch
            low[start:stop] = low_level_features(batch)
        feats = {"features_low": zscore_columns(low), "features_category": zscore_columns(cat)}
        for name, arr in feats.items():
            g.create_dataset(name, data=arr)
        g.create_dataset("category_presence", data=pres)
        g.create_dataset("captions_json", data=json.dumps(captions), dtype=h5py.string_dtype())
        g.create_dataset("descriptions_json", data=json.dumps(descriptions), dtype=h5py.string_dtype())
        return feats

    def _write_subject(self, f: h5py.File, k: int, feats: dict) -> None:
        n = self.n_train + self.n_test
        rng = np.random.default_rng([self.seed, 3000, k])
        group, w_low, w_cat, frac_low, pure = voxel_model(rng, self.n_voxels, self.noise_fraction)
        snr = np.exp(rng.uniform(*np.log(SNR_RANGE), size=self.n_voxels))
        noise_sd = (1.0 / snr).astype(np.float32)

        trial_rows = rng.permutation(np.repeat(np.arange(n), self.repeats))  # stimulus row of each trial (ids = rows)
        n_trials = len(trial_rows)
        n_sessions = max(1, int(round(n_trials / self.trials_per_session)))
        sessions = np.repeat(np.arange(n_sessions), [len(a) for a in np.array_split(np.arange(n_trials), n_sessions)])
        by_stim = np.argsort(trial_rows, kind="stable")  # trials grouped by stimulus row

        train_ids, test_ids = self._split()
        is_test = np.zeros(n, dtype=bool)
        is_test[test_ids] = True
        trial_test = is_test[trial_rows]

        g = f.create_group(f"subjects/{self.subject_name(k)}")
        splits = {}
        for split, ids, sel in (("train", train_ids, ~trial_test), ("test", test_ids, trial_test)):
            sg = g.create_group(split)
            sg.create_dataset("stim_ids", data=ids)
            sg.create_dataset("trial_stim", data=trial_rows[sel].astype(np.int64))
            sg.create_dataset("trial_session", data=sessions[sel].astype(np.int32))
            nt = int(sel.sum())
            sg.create_dataset("trials", shape=(nt, self.n_voxels), dtype=np.float32,
                              chunks=(max(1, min(nt, 1024)), min(self.n_voxels, 256)))
            sg.create_dataset("averaged", shape=(len(ids), self.n_voxels), dtype=np.float32,
                              chunks=(max(1, min(len(ids), 1024)), min(self.n_voxels, 256)))
            splits[split] = (sg, ids, sel)

        signal_sd = np.zeros(self.n_voxels, dtype=np.float32)
        est_snr = np.zeros(self.n_voxels, dtype=np.float32)
        for c, v0 in enumerate(range(0, self.n_voxels, VOXEL_CHUNK)):
            v1 = min(self.n_voxels, v0 + VOXEL_CHUNK)
            crng = np.random.default_rng([self.seed, 4000, k, c])
            signal, _ = voxel_signal(feats["features_low"], feats["features_category"], w_low[:, v0:v1],
                                     w_cat[:, v0:v1], frac_low[v0:v1])
            signal_sd[v0:v1] = signal[test_ids].std(0)
            raw = crng.standard_normal((n_trials, v1 - v0), dtype=np.float32)
            raw *= noise_sd[v0:v1]
            raw += signal[trial_rows]
            del signal
            total_sd = np.sqrt(1.0 + noise_sd[v0:v1] ** 2)
            gain = np.exp(crng.normal(0, 0.15, size=(n_sessions, v1 - v0))).astype(np.float32)
            offset = (crng.normal(0, 0.5, size=(n_sessions, v1 - v0)) * total_sd).astype(np.float32)
            raw *= gain[sessions]
            raw += offset[sessions]
            z = zscore_within_sessions(raw, sessions)
            del raw
            grouped = z[by_stim].reshape(n, self.repeats, v1 - v0)  # rows = stimulus rows
            averaged = grouped.mean(1)
            est_snr[v0:v1] = _ncsnr_grouped(grouped, averaged)
            del grouped
            for sg, ids, sel in splits.values():
                sg["trials"][:, v0:v1] = z[sel]
                sg["averaged"][:, v0:v1] = averaged[ids]
            del z, averaged

        counts = np.full(len(test_ids), self.repeats)
        inv_n = inverse_repeats(counts)
        true_nc = (100.0 * signal_sd.astype(np.float64) ** 2
                   / (signal_sd.astype(np.float64) ** 2 + noise_sd.astype(np.float64) ** 2 * inv_n)).astype(np.float32)
        g.create_dataset("noise_ceiling", data=noise_ceiling(est_snr, counts))
        tg = g.create_group("truth")
        tg.create_dataset("noise_ceiling", data=true_nc)
        tg.create_dataset("signal_sd", data=signal_sd)
        tg.create_dataset("noise_sd", data=noise_sd)
        tg.create_dataset("ncsnr", data=(signal_sd / noise_sd).astype(np.float32))
        tg.create_dataset("pure_noise", data=pure)
        rg = g.create_group("rois")
        for gi, (name, *_rest) in enumerate(ROI_SPEC):
            if name:
                rg.create_dataset(name, data=group == gi)
        rg.create_dataset("nsdgeneral", data=np.ones(self.n_voxels, dtype=bool))
        g.attrs["n_sessions"] = n_sessions

    @staticmethod
    def subject_name(k: int) -> str:
        return f"subj{k + 1:02d}"

    # -- reading -----------------------------------------------------------------------
    def _read(self) -> Dataset:
        with h5py.File(self.path, "r") as f:
            if not f.attrs.get("complete", False) or str(f.attrs.get("version")) != self.VERSION:
                raise DataError(f"synthetic dataset file {self.path} is incomplete or of another version; "
                                "delete it to regenerate")
            s = f["stimuli"]
            ids = s["ids"][:]
            extras = {"features_low": s["features_low"][:], "features_category": s["features_category"][:]}
            extras["features_all"] = np.concatenate([extras["features_low"], extras["features_category"]], axis=1)
            extras["category_presence"] = s["category_presence"][:]
            captions = json.loads(s["captions_json"].asstr()[()])
            descriptions = json.loads(s["descriptions_json"].asstr()[()])
            stimuli = Stimuli(
                ids=ids, read_images=_ImageReader(self.path, len(ids), self.image_size),
                captions={int(i): c for i, c in zip(ids, captions)},
                descriptions={int(i): d for i, d in zip(ids, descriptions)},
                extras=extras, fingerprint=self.fingerprint)
            subjects = {}
            n_sessions = {}
            for name in sorted(f["subjects"]):
                g = f["subjects"][name]
                resp = {split: Responses(g[split]["stim_ids"][:], _read_matrix(g[split]["averaged"]),
                                         _read_matrix(g[split]["trials"]), g[split]["trial_stim"][:])
                        for split in ("train", "test")}
                subjects[name] = Subject(
                    name=name, train=resp["train"], test=resp["test"],
                    rois={r: g["rois"][r][:] for r in ROI_NAMES},
                    noise_ceiling=g["noise_ceiling"][:], nc_source="estimated from single trials (NSD formula)",
                    truth={key: g["truth"][key][:] for key in g["truth"]})
                n_sessions[name] = int(g.attrs["n_sessions"])
        info = {**self.describe(), "n_sessions": n_sessions, "roi_names": list(ROI_NAMES),
                "feature_names": {"features_low": list(LOW_FEATURE_NAMES),
                                  "features_category": list(CATEGORY_FEATURE_NAMES)},
                "category_presence_columns": list(PRESENCE_COLUMNS)}
        return Dataset(name="synthetic", stimuli=stimuli, subjects=subjects, info=info)
