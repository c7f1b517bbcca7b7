"""NSD as preprocessed by brain-diffuser (Ozcelik & VanRullen 2023, ``data/prepare_nsddata.py``).

Layout under ``root`` (brain-diffuser's ``data`` folder, or ``processed_data`` itself)::

    processed_data/subjXX/nsd_{train,test}_fmriavg_nsdgeneral_sub{N}.npy  images × nsdgeneral voxels,
                                         float64, raw betas (×300 units) averaged over each image's trials
    processed_data/subjXX/nsd_{train,test}_stim_sub{N}.npy   images × 425 × 425 × 3, float64 holding
                                         whole numbers 0–255 (the script fills ``np.zeros``); uint8 accepted
    processed_data/subjXX/nsd_{train,test}_cap_sub{N}.npy    images × 5 COCO captions, fixed-width unicode
                                         ('' where fewer), copied from COCO_73k_annots_curated.npy
    nsddata/experiments/nsd/nsd_expdesign.mat                 optional: recovers the 73k ids

What its ``prepare_nsddata.py`` does (and the loader relies on): for the first 37 sessions
(27,750 trials) of the NIfTI betas, the nsdgeneral voxels (``mask > 0``, C order) of each trial;
an image's row is the mean of its trials; train = images with ``masterordering > 1000``; rows
in order of first appearance; stimuli copied from ``imgBrick`` into float64 arrays.

Checked (one line naming the file and the invariant): every file a plain array (no pickles),
responses images × voxels of real numbers with the same voxels in train and test (and as many
as ``nsdgeneral > 0`` where the mask is under ``root``), stimuli (rows, H, W, 3) with one row
per response row, of whole numbers in 0..255 — the first row at load, then every row as it is
read, converted to uint8 batch by batch (a 9,000-image float64 file is never held in memory).
Captions are read on first use (:mod:`.nsd_captions`), so a run whose tasks need none never
opens them.

Stimulus ids. brain-diffuser orders the images of each split by first appearance in the trial
sequence (test = shared images) and does not save their 73k ids. The loader recomputes that
order from ``nsd_expdesign.mat`` (``expdesign``; default the copy under ``root`` or
``trials_root``) and checks the first image of each split against ``imgBrick`` when the NSD
images are there. With no design file (or ``expdesign=False``) ids are positional,
``100000·N + row`` (train rows first), and say so in ``Dataset.info``.

Responses are divided by 300 and z-scored per voxel with the training mean and sd (ddof=1), as
brain-diffuser does; voxels with NaN/inf are dropped and counted. Images stream from the
``.npy`` files (memory-mapped). The layout has no single trials, so the noise ceiling is
unavailable (recorded as such) unless ``trials_root`` names the NSD official layout: its
session-z-scored single trials of the first ``trials_sessions`` sessions (37, as brain-diffuser
used) then give the ceiling through the NSD loader, after checking that voxels and images match.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from brainharness.cache import cache_root
from brainharness.capabilities import CAPTIONS, SINGLE_TRIALS, Offer
from brainharness.data import Dataset, DatasetLoader, Responses, Stimuli, Subject
from brainharness.errors import DataError
from brainharness.params import PATH, Param
from .nsd import NSD
from .nsd_captions import LazyCaptions, NpyCaptions
from .nsd_common import (CACHE, CACHE_DIR, CAPTIONS_MODE, SUBJECT, VOXEL_BLOCK, collect, drop_columns, existing_dir,
                         finite_columns, gather, images_uint8, integer_labels, load_npy, numeric_array, public_meta,
                         require_file, root_param, short_hash, subject_name, union_ids)
from .nsd_design import read_design
from .nsd_files import Layout, read_volume
from brainharness.registry import register_dataset
from .subject_cache import cached_subject, file_signature, source_signature

KINDS = ("fmriavg_nsdgeneral", "stim", "cap")
POSITIONAL = 100_000


def zscore_with(train: np.ndarray, *others: np.ndarray, ddof: int = 1) -> int:
    """z-score columns in place with the training rows' mean and sd; returns the count of sd = 0 (set to 0)."""
    zero = 0
    for v0 in range(0, train.shape[1], VOXEL_BLOCK):
        cols = slice(v0, v0 + VOXEL_BLOCK)
        block = train[:, cols].astype(np.float64)
        mu, sd = block.mean(0), block.std(0, ddof=ddof)
        zero += int((sd == 0).sum())
        scale = np.where(sd > 0, 1 / np.where(sd > 0, sd, 1), 0)
        for a in (train, *others):
            a[:, cols] = (a[:, cols] - mu) * scale
    return zero


class NpyImageReader:
    """Images of the stimulus rows from memory-mapped ``.npy`` image arrays (opened per call),
    converted to uint8 ``CHUNK`` rows at a time after checking their values (:func:`images_uint8`)."""

    CHUNK = 16  # rows converted at once: bounded float64 temporaries (16 × 425 × 425 × 3 × 8 B ≈ 70 MB)

    def __init__(self, paths: list[Path], source: np.ndarray, source_row: np.ndarray, shape: tuple):
        self.paths, self.source, self.source_row, self.shape = [Path(p) for p in paths], source, source_row, shape

    def __call__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        for k, path in enumerate(self.paths):
            where = np.flatnonzero(self.source[rows] == k)
            if where.size:
                mm = load_npy(path, mmap=True)
                for c0 in range(0, where.size, self.CHUNK):
                    dest = where[c0:c0 + self.CHUNK]
                    src = self.source_row[rows[dest]]
                    out[dest] = images_uint8(mm[src], path, src)
        return out


def stimulus_array(path: Path, n_rows: int) -> np.ndarray:
    """The memory-mapped stimuli of ``path``: (n_rows, H, W, 3), the first row checked (whole numbers 0..255)."""
    stim = load_npy(path, mmap=True)
    if stim.ndim != 4 or stim.shape[0] != n_rows or stim.shape[3] != 3:
        raise DataError(f"{path}: expected ({n_rows}, H, W, 3) images (one per response row), got {stim.shape}")
    if n_rows:
        images_uint8(stim[:1], path, [0])
    return stim


@register_dataset("nsd-brain-diffuser")
class BrainDiffuser(DatasetLoader):
    """NSD as preprocessed by brain-diffuser (processed_data/*.npy, repeat-averaged nsdgeneral voxels).

    Parameters: ``root``, ``subject`` (1–8, ``"subjNN"`` or a list), ``expdesign`` (path to ``nsd_expdesign.mat``; default found under ``root``/``trials_root``;
    ``False``: positional ids), ``trials_root`` (NSD official layout, for the noise ceiling),
    ``trials_sessions`` (37), ``beta_version`` (of the trials), ``captions`` (``auto`` | ``required`` |
    ``none``), ``cache``, ``cache_dir``."""

    VERSION = version = "1"  # in the data cache key and the result identity: bump when numbers change
    # declared capabilities; the only ROI is nsdgeneral (all voxels), so no named ROI masks
    provides = (Offer(SINGLE_TRIALS, lambda p: bool(p.get("trials_root")), "trials_root"),
                Offer(CAPTIONS, lambda p: p.get("captions", "auto") != "none", "captions: auto or required"))
    params = {
        "root": root_param("brain-diffuser's data folder (with processed_data/) or processed_data itself"),
        "subject": SUBJECT,
        "expdesign": Param(None, (bool, *PATH), check=lambda v: v is not True,
                           expect="null, false or a path to nsd_expdesign.mat",
                           doc="nsd_expdesign.mat (null: found under root/trials_root; false: positional ids)"),
        "trials_root": Param(None, PATH, doc="an NSD official layout: single trials for the noise ceiling"),
        "trials_sessions": Param(37, ge=1, doc="sessions of single trials read (37, as brain-diffuser)"),
        "beta_version": Param("betas_fithrf_GLMdenoise_RR", str, nonempty=True, doc="betas folder of the trials"),
        "captions": CAPTIONS_MODE,
        "cache": CACHE,
        "cache_dir": CACHE_DIR,
    }

    def configure(self, p):
        root = existing_dir(p["root"], "nsd-brain-diffuser: root")
        # root is brain-diffuser's data folder (with processed_data/, maybe nsddata/) or processed_data itself
        self.root, self.processed = (root, root / "processed_data") if (root / "processed_data").is_dir() \
            else (root.parent, root)
        self.subjects = p["subject"]
        self.trials_root = existing_dir(p["trials_root"], "nsd-brain-diffuser: trials_root") if p["trials_root"] \
            else None
        self.trials_sessions, self.beta_version = p["trials_sessions"], p["beta_version"]
        self.captions = p["captions"]
        self.design_path = self._design_path(p["expdesign"])
        self.cache = p["cache"]
        self.cache_dir = cache_root(p["cache_dir"])

    def _design_path(self, expdesign) -> Path | None:
        if expdesign is False:
            return None
        if expdesign:
            path = Path(expdesign).expanduser()
            if not path.exists():
                raise DataError(f"{path}: not found (expdesign)")
            return path
        for base in (self.root, self.trials_root):
            if base is not None and Layout(base).expdesign.exists():
                return Layout(base).expdesign
        return None

    def files(self, subj: int) -> dict[str, dict[str, Path]]:
        """The subject's files; the responses and stimuli must exist (captions are optional)."""
        folder = self.processed / subject_name(subj)
        if not folder.is_dir():
            raise DataError(f"{folder}: not found (no brain-diffuser data for {subject_name(subj)})")
        files = {split: {k: folder / f"nsd_{split}_{k}_sub{subj}.npy" for k in KINDS} for split in ("train", "test")}
        for split in files.values():
            require_file(split["fmriavg_nsdgeneral"], "brain-diffuser's averaged responses")
            require_file(split["stim"], "brain-diffuser's stimuli")
        return files

    # -- loading -------------------------------------------------------------------------
    def load(self) -> Dataset:
        start = time.perf_counter()
        subjects, metas, caches = {}, {}, {}
        files = {subj: self.files(subj) for subj in self.subjects}  # pre-flight: every subject's files exist
        for subj in self.subjects:
            sources = [p for split in files[subj].values() for k, p in split.items() if k == KINDS[0]]
            sources += [self.design_path] if self.design_path else []
            params = {"loader": "nsd-brain-diffuser", "version": self.VERSION, "subject": subj,
                      "design": str(self.design_path),
                      "trials": [str(self.trials_root), self.trials_sessions, self.beta_version]}
            name = subject_name(subj)
            subjects[name], metas[name], caches[name] = cached_subject(
                self.cache_dir if self.cache else None, "brain-diffuser", name, params, sources,
                lambda s=subj: self.load_subject(s))
        ids = union_ids(metas)
        reader, fingerprint = self.image_reader(ids, metas)
        npy = NpyCaptions([(files[subj][s]["cap"], metas[subject_name(subj)][f"{s}_ids"])
                           for subj in self.subjects for s in ("train", "test")], self.captions)
        captions = LazyCaptions(npy)
        if self.captions == "required":
            captions.read()  # asked for explicitly: read and checked now, before any compute
        stimuli = Stimuli(ids=ids, read_images=reader, captions=captions, fingerprint=fingerprint)
        info = {"name": "nsd-brain-diffuser", "layout": "brain-diffuser processed_data", "root": str(self.root),
                "scale": "÷300 (files hold raw beta units)",
                "zscore": "per voxel with the training split's mean and sd (ddof=1), as brain-diffuser",
                "ids": f"73k ids from {self.design_path} (first-appearance order)" if self.design_path else
                       f"positional ({POSITIONAL}·subject + row, train rows first): no nsd_expdesign.mat",
                "fingerprint": fingerprint,
                "subjects": public_meta(metas), "captions": captions.info,
                "cache": caches, "source_signature": {**source_signature(caches), "captions": npy.signature()},
                "load_seconds": round(time.perf_counter() - start, 3)}
        return Dataset(name="nsd-brain-diffuser", stimuli=stimuli, subjects=subjects, info=info)

    def stimulus_ids(self, subj: int, n_train: int, n_test: int, files) -> tuple[np.ndarray, np.ndarray]:
        if self.design_path is None:
            base = POSITIONAL * subj
            return base + np.arange(n_train), base + n_train + np.arange(n_test)
        design = read_design(self.design_path)
        order = design.first_appearance(subj)
        for split, ids, n in (("train", order[0], n_train), ("test", order[1], n_test)):
            if len(ids) < n:
                raise DataError(f"{files[split]['fmriavg_nsdgeneral']}: {n} images, but {self.design_path} "
                                f"has only {len(ids)} {split} images for {subject_name(subj)}")
        ids = order[0][:n_train], order[1][:n_test]
        self._check_ids_against_imgbrick(ids, files)
        return ids

    def _check_ids_against_imgbrick(self, ids, files) -> None:
        import h5py

        brick = next((Layout(b).imgbrick for b in (self.root, self.trials_root)
                      if b is not None and Layout(b).imgbrick.exists()), None)
        if brick is None:
            return
        with h5py.File(brick, "r") as f:
            for split, split_ids in zip(("train", "test"), ids):
                stim = load_npy(files[split]["stim"], mmap=True)
                if len(split_ids) and (f["imgBrick"].shape[1:] != stim.shape[1:]
                                       or not np.array_equal(f["imgBrick"][int(split_ids[0])], stim[0])):
                    raise DataError(f"{files[split]['stim']}: row 0 is not imgBrick image {int(split_ids[0])}, the "
                                    f"id recovered from {self.design_path}; pass expdesign=False for positional ids")

    def load_subject(self, subj: int) -> tuple[Subject, dict]:
        files = self.files(subj)
        fmri = {}
        for s in ("train", "test"):
            path = files[s]["fmriavg_nsdgeneral"]
            mm = numeric_array(path, load_npy(path, mmap=True), "responses")
            if mm.ndim != 2:
                raise DataError(f"{path}: expected images × voxels, got shape {mm.shape}")
            fmri[s] = gather([mm])
        if fmri["train"].shape[1] != fmri["test"].shape[1]:
            raise DataError(f"{files['test']['fmriavg_nsdgeneral']}: {fmri['test'].shape[1]} voxels, "
                            f"{files['train']['fmriavg_nsdgeneral'].name} has {fmri['train'].shape[1]}")
        self._check_voxels_against_nsdgeneral(subj, files["train"]["fmriavg_nsdgeneral"], fmri["train"].shape[1])
        for s in ("train", "test"):
            stimulus_array(files[s]["stim"], len(fmri[s]))
        ids = dict(zip(("train", "test"), self.stimulus_ids(subj, len(fmri["train"]), len(fmri["test"]), files)))
        keep = finite_columns(fmri["train"], fmri["test"])
        for s in fmri:
            fmri[s] = drop_columns(fmri[s], keep)
            fmri[s] /= 300.0
        zero_sd = zscore_with(fmri["train"], fmri["test"])
        trials, nc, nc_source = self.trials(subj, ids, int(keep.size), bool(keep.all()))
        responses = {s: Responses(ids[s], fmri[s], *trials.get(s, (None, None))) for s in fmri}
        subject = Subject(name=subject_name(subj), train=responses["train"], test=responses["test"],
                          rois={"nsdgeneral": np.ones(int(keep.sum()), dtype=bool)}, noise_ceiling=nc,
                          nc_source=nc_source)
        meta = {"n_train_images": len(ids["train"]), "n_test_images": len(ids["test"]), "n_voxels": int(keep.sum()),
                "nan_voxels": {"handling": "drop", "dropped": int((~keep).sum())}, "zero_sd_voxels": zero_sd,
                "noise_ceiling": nc_source, "stim_files": [str(files[s]["stim"]) for s in ("train", "test")],
                "stim_ids": np.r_[ids["train"], ids["test"]], "train_ids": ids["train"], "test_ids": ids["test"]}
        return subject, meta

    def _check_voxels_against_nsdgeneral(self, subj: int, path: Path, n_voxels: int) -> None:
        """The prepare script keeps exactly the ``nsdgeneral > 0`` voxels: check where the mask is at hand."""
        for base in (self.root, self.trials_root):
            mask = Layout(base).roi(subj, "nsdgeneral") if base is not None else None
            if mask is not None and mask.exists():
                n_mask = int((integer_labels(mask, read_volume(mask)) > 0).sum())
                if n_mask != n_voxels:
                    raise DataError(f"{path}: {n_voxels} voxels, but {mask} has {n_mask} voxels > 0 "
                                    "(brain-diffuser keeps exactly those)")
                return

    def trials(self, subj: int, ids: dict, n_voxels: int, all_finite: bool) -> tuple[dict, np.ndarray | None, str]:
        """Single trials and the noise ceiling from the NSD official layout, when ``trials_root`` is given."""
        if self.trials_root is None:
            return {}, None, ("unavailable: the brain-diffuser layout has only repeat-averaged responses "
                              "(give trials_root = the NSD official layout to estimate it)")
        if self.design_path is None:
            raise DataError(f"{self.trials_root}: single trials need the 73k ids, but no nsd_expdesign.mat was found")
        nsd = NSD(root=self.trials_root, subject=subj, sessions=self.trials_sessions, beta_version=self.beta_version,
                  nan_voxels="error", captions="none", cache=self.cache, cache_dir=self.cache_dir)
        ns, _, _ = nsd.subject(subj)
        if ns.n_voxels != n_voxels or not all_finite:
            raise DataError(f"{self.trials_root}: {ns.n_voxels} nsdgeneral voxels with finite betas, the "
                            f"brain-diffuser files have {n_voxels} (finite: {all_finite}); they do not line up")
        for s in ("train", "test"):
            if set(getattr(ns, s).stim_ids.tolist()) != set(ids[s].tolist()):
                raise DataError(f"{self.trials_root}: the first {self.trials_sessions} sessions hold other {s} images "
                                f"than the brain-diffuser files (set trials_sessions to the sessions they used)")
        trials = {s: (getattr(ns, s).trials, getattr(ns, s).trial_stim) for s in ("train", "test")}
        return trials, ns.noise_ceiling, (f"estimated from the NSD single trials of {self.trials_root} (first "
                                          f"{self.trials_sessions} sessions; NSD formula, mixed-repeat correction)")

    def image_reader(self, ids: np.ndarray, metas: dict) -> tuple[NpyImageReader, str]:
        """Reads each stimulus from the first subject's ``stim`` file that holds it (memory-mapped)."""
        paths, source, source_row, shape = [], np.full(len(ids), -1), np.zeros(len(ids), dtype=np.int64), None
        for subj in self.subjects:
            files, meta = self.files(subj), metas[subject_name(subj)]
            for split in ("train", "test"):
                arr = stimulus_array(files[split]["stim"], len(meta[f"{split}_ids"]))
                shape = shape or arr.shape[1:]
                if arr.shape[1:] != shape:
                    raise DataError(f"{files[split]['stim']}: images of shape {arr.shape[1:]}, others have {shape}")
                rows = np.searchsorted(ids, meta[f"{split}_ids"])
                new = source[rows] < 0
                source[rows[new]], source_row[rows[new]] = len(paths), np.flatnonzero(new)
                paths.append(files[split]["stim"])
        return NpyImageReader(paths, source, source_row, shape), "brain-diffuser-" + short_hash(file_signature(paths))


def inspect(root: Path) -> dict | None:
    """What of brain-diffuser's ``processed_data`` is under ``root``, or None if it is not there."""
    base, processed = (root, root / "processed_data") if (root / "processed_data").is_dir() else (root.parent, root)
    folders = sorted(p.parent for p in processed.glob("subj0[1-8]/nsd_*_fmriavg_nsdgeneral_sub*.npy"))
    if not folders:
        return None
    problems, notes = [], []
    design = Layout(base).expdesign
    report = {"layout": "nsd-brain-diffuser", "description": "brain-diffuser processed_data", "root": str(root),
              "subjects": {}, "problems": problems, "notes": notes,
              "ids": f"73k ids via {design}" if design.exists() else "positional (no nsd_expdesign.mat under root)"}
    for folder in sorted(set(folders)):
        subj, entry = int(folder.name[4:]), {}
        for split in ("train", "test"):
            shapes, dtypes = {}, {}
            for kind in KINDS:
                path = folder / f"nsd_{split}_{kind}_sub{subj}.npy"
                if not path.exists():
                    (notes if kind == "cap" else problems).append(f"{path}: not found")
                    continue
                try:
                    a = load_npy(path, mmap=True)
                    shapes[kind], dtypes[kind] = a.shape, a.dtype
                except DataError as e:
                    (notes if kind == "cap" else problems).append(str(e))
            rows = {k: s[0] for k, s in shapes.items()}
            if len(set(rows.values())) > 1:
                problems.append(f"{folder}: {split} files disagree on the number of images ({rows})")
            elif "stim" in rows:
                collect(problems, stimulus_array, folder / f"nsd_{split}_stim_sub{subj}.npy", rows["stim"])
            if "cap" in dtypes and dtypes["cap"].kind not in "US":
                notes.append(f"{folder / f'nsd_{split}_cap_sub{subj}.npy'}: captions of type {dtypes['cap']} "
                             "(not strings): unavailable to tasks that need captions")
            entry[split] = {"images": rows.get("fmriavg_nsdgeneral"), "voxels": (shapes.get("fmriavg_nsdgeneral") or
                                                                                 (None, None))[1]}
        if entry["train"]["voxels"] != entry["test"]["voxels"]:
            problems.append(f"{folder}: train has {entry['train']['voxels']} voxels, test {entry['test']['voxels']}")
        report["subjects"][folder.name] = entry
    return report
