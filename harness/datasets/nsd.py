"""The Natural Scenes Dataset in its official layout (Allen et al. 2022), read as distributed.

Layout under ``root`` (the folder that holds ``nsddata``, ``nsddata_betas``, ``nsddata_stimuli``)::

    nsddata/experiments/nsd/nsd_expdesign.mat          masterordering (1×30000), subjectim (8×10000),
                                                       sharedix — all 1-based; stimpattern (40×12×75)
    nsddata/experiments/nsd/nsd_stim_info_merged.csv   nsdId (0-based) → cocoId, cocoSplit, subjectN_repK
    nsddata/ppdata/subjXX/<space>/roi/{nsdgeneral,prf-visualrois,floc-faces,floc-bodies,
                                       floc-places,floc-words}.nii.gz
    nsddata/freesurfer/subjXX/label/<roi>.mgz.ctab     label names (defaults below when absent)
    nsddata_betas/ppdata/subjXX/<space>/<beta_version>/betas_sessionNN.{hdf5,nii.gz}
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5       imgBrick, 73000×425×425×3 uint8
    nsddata_stimuli/stimuli/nsd/annotations/captions_{train,val}2017.json  (COCO; or coco_annotations)

Per subject the loader reads the sessions one at a time (HDF5 ``betas`` is (trials, Z, Y, X),
the NIfTI (X, Y, Z, trials); both hold int16 = beta × 300 and are divided by 300), keeps the
voxels with ``nsdgeneral > 0`` (in the NIfTI's C order, whatever the format), z-scores each
voxel within each session and writes the trials straight into preallocated train and test
matrices (nothing NSD-sized is held twice). Trial k's image is
``subjectim[s-1, masterordering[k]-1] - 1`` (a 0-based 73k id); test ⇔ ``masterordering ≤
len(sharedix)`` (1000: the shared1000 images). ``Responses.averaged`` is the mean of an
image's z-scored trials over the sessions loaded (1, 2 or 3 of them); the noise ceiling uses
the NSD formula with the mixed-repeat correction for the test images' counts.

Checked before any betas are read (headers only; one line naming the file and the invariant):
the design file's own invariants (:mod:`.nsd_design`), every session's trial count against its
design session (750; a different count would pair every later trial with the wrong image), no
session beyond those the subject completed (40, 40, 32, 30, 40, 32, 40, 30), betas dtype (int16,
or floats taken as already divided) and volume against nsdgeneral, imgBrick (images, H, W, 3)
uint8 holding every id; ROI volumes must match nsdgeneral and hold whole-number labels that
their colour table names.

Documented handling, recorded in ``Dataset.info``: voxels with NaN/inf betas in any session
are dropped (``nan_voxels="drop"``) or raise (``"error"``); voxels constant within a session
become 0 there (counted); ROI files that are missing and ROIs with no nsdgeneral voxel are
listed and left out; a subject with fewer sessions than NSD's count is loaded with the
sessions present (a gap in the numbering raises). Captions are read on first use
(:mod:`.nsd_captions`): a run whose tasks need none never opens the stimulus table or COCO
files; missing caption files leave them empty (``captions="auto"``), and ``"required"`` reads
and checks them at load time.
"""
from __future__ import annotations

import logging
import re
import time
from functools import cached_property
from pathlib import Path

import numpy as np

from brainharness.cache import cache_root
from brainharness.capabilities import CAPTIONS, ROI_MASKS, SINGLE_TRIALS, Offer
from brainharness.data import Dataset, DatasetLoader, Responses, Stimuli, Subject
from brainharness.errors import DataError
from brainharness.metrics.noise_ceiling import zscore_within_sessions
from brainharness.params import PATH, Param
from brainharness.registry import register_dataset
from .nsd_captions import CocoCaptions, LazyCaptions
from .nsd_common import (CACHE, CACHE_DIR, CAPTIONS_MODE, SUBJECT, average_trials, collect, drop_columns,
                         existing_dir, finish_rois, integer_labels, label_rois, public_meta, require_file, root_param,
                         subject_name, test_noise_ceiling, union_ids)
from .nsd_design import DESIGN_NEEDED, SESSIONS, Design, read_design
from .nsd_files import (SESSION_RE, Layout, SessionFile, find_sessions, imgbrick_reader, imgbrick_shape, read_ctab,
                        read_volume, volume_shape)
from .subject_cache import cached_subject, source_signature

log = logging.getLogger(__name__)

BETA_VERSIONS = ("betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf")
ROI_FILES = ("prf-visualrois", "floc-faces", "floc-bodies", "floc-places", "floc-words")
DEFAULT_LABELS = {
    "prf-visualrois": {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"},
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"},
    "floc-bodies": {1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"},
    "floc-places": {1: "OPA", 2: "PPA", 3: "RSC"},
    "floc-words": {1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"},
}


# --------------------------------------------------------------------------------------------
# The dataset plugin
# --------------------------------------------------------------------------------------------
@register_dataset("nsd")
class NSD(DatasetLoader):
    """NSD in its official layout: per-session betas (HDF5/NIfTI), nsdgeneral + ROIs, shared1000 = test.

    Parameters: ``root`` (folder with ``nsddata``, ``nsddata_betas``, ``nsddata_stimuli``), ``subject`` (1–8,
    ``"subjNN"`` or a list), ``sessions`` (``"all"`` present, or the first N), ``beta_version``
    (default ``betas_fithrf_GLMdenoise_RR``), ``format`` (``auto``: HDF5 where present, else
    NIfTI; or ``hdf5`` / ``nifti``), ``space`` (``func1pt8mm``), ``nan_voxels`` (``drop`` |
    ``error``), ``captions`` (``auto`` | ``required`` | ``none``), ``coco_annotations`` (folder
    with ``captions_{train,val}2017.json``; default under ``nsddata_stimuli``), ``cache``
    (save/reuse the preprocessed subject under ``<cache_dir>/datasets/``) and ``cache_dir``.
    """

    VERSION = version = "1"  # in the data cache key and the result identity: bump when numbers change
    provides = (SINGLE_TRIALS, ROI_MASKS,  # declared capabilities
                Offer(CAPTIONS, lambda p: p.get("captions", "auto") != "none", "captions: auto or required"))
    params = {
        "root": root_param("folder with nsddata, nsddata_betas, nsddata_stimuli"),
        "subject": SUBJECT,
        "sessions": Param("all", (str, int), choices=("all",), ge=1, doc="all present, or the first N"),
        "beta_version": Param(BETA_VERSIONS[0], str, nonempty=True, doc="betas folder name"),
        "format": Param("auto", choices=("auto", "hdf5", "nifti"), doc="auto: HDF5 where present, else NIfTI"),
        "space": Param("func1pt8mm", choices=("func1pt8mm", "func1mm"), doc="betas space"),
        "nan_voxels": Param("drop", choices=("drop", "error"), doc="nsdgeneral voxels with NaN/inf betas"),
        "captions": CAPTIONS_MODE,
        "coco_annotations": Param(None, PATH, doc="folder with captions_{train,val}2017.json "
                                                  "(null: under nsddata_stimuli)"),
        "cache": CACHE,
        "cache_dir": CACHE_DIR,
    }

    def configure(self, p):
        self.root = existing_dir(p["root"], "nsd: root")
        self.subjects = p["subject"]
        self.sessions = p["sessions"]
        self.beta_version = p["beta_version"]
        self.format = p["format"]
        self.layout = Layout(self.root, p["space"])
        self.nan_voxels = p["nan_voxels"]
        self.captions = p["captions"]
        self.annotations = Path(p["coco_annotations"]).expanduser() if p["coco_annotations"] else \
            self.layout.annotations
        self.cache = p["cache"]
        self.cache_dir = cache_root(p["cache_dir"])
        require_file(self.layout.expdesign, DESIGN_NEEDED)  # every subject needs it: fail before anything runs

    @cached_property
    def design(self) -> Design:
        return read_design(self.layout.expdesign)

    # -- files ---------------------------------------------------------------------------
    def session_files(self, subj: int) -> list[SessionFile]:
        folder = self.layout.betas_dir(subj, self.beta_version)
        if not folder.is_dir():
            have = sorted(p.name for p in folder.parent.iterdir()) if folder.parent.is_dir() else []
            raise DataError(f"{folder}: not found" + (f" (beta versions here: {', '.join(have)})" if have else ""))
        found = find_sessions(folder)
        last = max(found, default=0) if self.sessions == "all" else int(self.sessions)
        if last == 0:
            raise DataError(f"{folder}: no betas_sessionNN.hdf5 / .nii.gz files")
        files = []
        for n in range(1, last + 1):
            have = found.get(n, {})
            fmt = ("hdf5" if "hdf5" in have or not have else "nifti") if self.format == "auto" else self.format
            if fmt not in have:
                ext = "hdf5" if fmt == "hdf5" else "nii.gz"
                alt = " (nor .nii.gz)" if self.format == "auto" else ""
                raise DataError(f"{folder / f'betas_session{n:02d}.{ext}'}: missing session{alt} "
                                f"(sessions={self.sessions!r}, format={self.format!r})")
            files.append(SessionFile(have[fmt], fmt))
        return files

    def checked_sessions(self, subj: int) -> tuple[list[SessionFile], list[int]]:
        """The subject's beta files and their trial counts, checked from the headers against the
        nsdgeneral volume and the design (nothing is read but headers)."""
        files = self.session_files(subj)
        mask = require_file(self.layout.roi(subj, "nsdgeneral"), "the nsdgeneral mask: which voxels are read")
        volume = volume_shape(mask)
        counts = []
        for f in files:
            xyz, n, _ = f.header()
            if tuple(xyz) != volume:
                raise DataError(f"{f.path}: volume {tuple(xyz)} does not match {mask.name} {volume}")
            counts.append(n)
        numbered = [(int(SESSION_RE.match(f.path.name).group(1)), f.path, n) for f, n in zip(files, counts)]
        problems = self.design.session_problems(subj, numbered)
        if problems:
            raise DataError(problems[0])
        return files, counts

    def sources(self, subj: int, files: list[SessionFile]) -> list[Path]:
        paths = [f.path for f in files] + [self.layout.expdesign, self.layout.roi(subj, "nsdgeneral")]
        for name in ROI_FILES:
            paths += [p for p in (self.layout.roi(subj, name), self.layout.ctab(subj, name)) if p.exists()]
        return paths

    def preprocessing(self, files: list[SessionFile]) -> dict:
        return {"loader": "nsd", "version": self.VERSION, "beta_version": self.beta_version, "space": self.layout.space,
                "files": [f"{f.path.name}:{f.fmt}" for f in files], "nan_voxels": self.nan_voxels}

    # -- loading -------------------------------------------------------------------------
    def load(self) -> Dataset:
        start = time.perf_counter()
        imgbrick_shape(self.layout.imgbrick)  # pre-flight: every file is checked before any betas are read
        checked = {subj: self.checked_sessions(subj) for subj in self.subjects}
        subjects, metas, caches = {}, {}, {}
        for subj in self.subjects:
            name = subject_name(subj)
            subjects[name], metas[name], caches[name] = self.subject(subj, checked[subj])
        ids = union_ids(metas)
        reader, fingerprint = imgbrick_reader(self.layout.imgbrick, ids)
        coco = CocoCaptions(ids, self.layout.stim_info, self.annotations, self.captions,
                            self.cache_dir if self.cache else None, self.layout.expdesign)
        captions = LazyCaptions(coco)
        if self.captions == "required":
            captions.read()  # asked for explicitly: read and checked now, before any compute
        stimuli = Stimuli(ids=ids, read_images=reader, captions=captions, fingerprint=fingerprint)
        info = {"name": "nsd", "layout": "nsd-official", "root": str(self.root), "space": self.layout.space,
                "beta_version": self.beta_version, "format_requested": self.format,
                "scale": "int16 betas ÷ 300", "zscore": "each voxel within each session (ddof=0)",
                "voxels": "nsdgeneral > 0, NIfTI (X, Y, Z) C order",
                "test_split": "shared1000 (masterordering ≤ len(sharedix))",
                "images": str(self.layout.imgbrick), "fingerprint": fingerprint,
                "subjects": public_meta(metas), "captions": captions.info,
                "cache": caches, "source_signature": {**source_signature(caches), "captions": coco.signature()},
                "load_seconds": round(time.perf_counter() - start, 3)}
        return Dataset(name="nsd", stimuli=stimuli, subjects=subjects, info=info)

    def subject(self, subj: int, checked=None) -> tuple[Subject, dict, dict]:
        """One subject (from the subject cache when possible): ``(subject, meta, cache_info)``."""
        files, counts = checked or self.checked_sessions(subj)
        return cached_subject(self.cache_dir if self.cache else None, "nsd", subject_name(subj),
                              {**self.preprocessing(files), "subject": subj}, self.sources(subj, files),
                              lambda: self.load_subject(subj, files, counts))

    def load_subject(self, subj: int, files: list[SessionFile], counts: list[int]) -> tuple[Subject, dict]:
        name = subject_name(subj)
        mask_path = self.layout.roi(subj, "nsdgeneral")
        general = integer_labels(mask_path, read_volume(mask_path))
        coords = np.array(np.nonzero(general > 0))  # (3, V): X, Y, Z in C order
        if coords.shape[1] == 0:
            raise DataError(f"{mask_path}: no voxel > 0")
        trial_ids, trial_test = self.design.trials(subj, sum(counts))
        if not trial_test.any() or trial_test.all():
            raise DataError(f"{files[-1].path.parent}: the {len(files)} sessions loaded hold no "
                            f"{'test (shared)' if not trial_test.any() else 'training'} trials")
        rois, roi_info = self.roi_labels(subj, general.shape, coords)  # checked before any betas are read
        split_trials, bad, notes = self.read_sessions(files, counts, coords, trial_test)
        keep = ~bad
        responses = {}
        for split, sel in (("train", ~trial_test), ("test", trial_test)):
            trials = drop_columns(split_trials.pop(split), keep)
            ids, averaged = average_trials(trials, trial_ids[sel])
            responses[split] = Responses(ids, averaged, trials, trial_ids[sel])
        coords = coords[:, keep]
        rois, roi_info["rois_empty"] = finish_rois({k: v[keep] for k, v in rois.items()})
        nc, nc_source = test_noise_ceiling(responses["train"], responses["test"])
        subject = Subject(name=name, train=responses["train"], test=responses["test"], rois=rois,
                          noise_ceiling=nc, nc_source=nc_source)
        meta = {"sessions": [int(SESSION_RE.match(f.path.name).group(1)) for f in files],
                "sessions_in_nsd": SESSIONS[subj], "formats": sorted({f.fmt for f in files}),
                "trials": int(sum(counts)), "n_voxels": int(keep.sum()), "volume": list(general.shape),
                "n_train_images": len(responses["train"].stim_ids), "n_test_images": len(responses["test"].stim_ids),
                "nan_voxels": {"handling": self.nan_voxels, "dropped": int(bad.sum()), "files": notes["nan_files"]},
                "constant_in_a_session_voxels": int((notes["constant"] & keep).sum()), **roi_info,
                "noise_ceiling": nc_source, "stim_ids": np.unique(trial_ids), "voxel_xyz": coords.T.astype(np.int16)}
        return subject, meta

    def read_sessions(self, files, counts, coords, trial_test) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
        """Session by session: read, z-score, and write the trials into preallocated split matrices.

        Returns the split matrices, the voxels with NaN/inf betas, and notes for the metadata."""
        n_vox = coords.shape[1]
        out = {split: np.empty((int(n), n_vox), np.float32)
               for split, n in (("train", (~trial_test).sum()), ("test", trial_test.sum()))}
        filled = {"train": 0, "test": 0}
        bad, constant, nan_files, offset = np.zeros(n_vox, bool), np.zeros(n_vox, bool), [], 0
        for f, n in zip(files, counts):
            log.info("reading %s", f.path)
            block = f.read(coords)
            finite = np.isfinite(block).all(0)
            if not finite.all():
                if self.nan_voxels == "error":
                    raise DataError(f"{f.path}: {int((~finite).sum())} nsdgeneral voxels have NaN/inf betas "
                                    "(nan_voxels='error'; 'drop' excludes them)")
                bad |= ~finite
                nan_files.append(f.path.name)
            constant |= block.min(0) == block.max(0)
            z = zscore_within_sessions(block, np.zeros(n))
            del block
            test = trial_test[offset:offset + n]
            for split, sel in (("train", ~test), ("test", test)):
                rows = z[sel]
                out[split][filled[split]:filled[split] + len(rows)] = rows
                filled[split] += len(rows)
            offset += n
        return out, bad, {"nan_files": nan_files, "constant": constant}

    def roi_labels(self, subj: int, shape, coords: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        """ROI masks over the nsdgeneral voxels ``coords``, each file checked (volume, labels named)."""
        rois = {"nsdgeneral": np.ones(coords.shape[1], dtype=bool)}
        missing, names_from = [], {}
        for roi in ROI_FILES:
            path = self.layout.roi(subj, roi)
            if not path.exists():
                missing.append(path.name)
                continue
            vol = read_volume(path)
            if vol.shape != tuple(shape):
                raise DataError(f"{path}: volume {vol.shape} does not match nsdgeneral {tuple(shape)}")
            ctab = self.layout.ctab(subj, roi)
            names = read_ctab(ctab) if ctab.exists() else DEFAULT_LABELS[roi]
            names_from[roi] = ctab.name if ctab.exists() else "default labels"
            labels = integer_labels(path, vol, names, ctab.name if ctab.exists() else f"NSD's labels for {roi}")
            rois.update(label_rois(labels[tuple(coords)], names))
        return rois, {"roi_files_missing": missing, "roi_labels": names_from}


# --------------------------------------------------------------------------------------------
# `brainharness data check`
# --------------------------------------------------------------------------------------------
def inspect(root: Path) -> dict | None:
    """What of the official layout is under ``root`` (headers only), or None if it is not there."""
    if not any((root / d).is_dir() for d in ("nsddata", "nsddata_betas")):
        return None
    layout, problems, notes = Layout(root), [], []
    report = {"layout": "nsd", "description": "NSD official layout", "root": str(root), "subjects": {},
              "problems": problems, "notes": notes}
    design = collect(problems, read_design, layout.expdesign)
    if design is not None:
        report["design"] = {"trials": len(design.masterordering), "sessions": design.n_sessions,
                            "subjects": design.subjectim.shape[0], "images_per_subject": design.subjectim.shape[1],
                            "shared": design.n_shared}
    shape = collect(problems, imgbrick_shape, layout.imgbrick)
    if shape is not None:
        report["images"] = {"n": int(shape[0]), "shape": list(shape[1:])}
    for p in (layout.stim_info, layout.annotations / "captions_train2017.json",
              layout.annotations / "captions_val2017.json"):
        if not p.exists():
            notes.append(f"{p}: not found — captions unavailable unless coco_annotations is given")
    names = {p.name for base in ("nsddata/ppdata", "nsddata_betas/ppdata") if (root / base).is_dir()
             for p in (root / base).iterdir() if re.fullmatch(r"subj0[1-8]", p.name)}
    for name in sorted(names):
        report["subjects"][name] = _inspect_subject(layout, int(name[4:]), design, problems, notes)
    if not names:
        problems.append(f"{root}: no subjXX folder under nsddata/ppdata or nsddata_betas/ppdata")
    return report


def _inspect_subject(layout: Layout, subj: int, design, problems: list, notes: list) -> dict:
    entry = {"sessions_in_nsd": SESSIONS[subj]}
    general = collect(problems, read_volume, layout.roi(subj, "nsdgeneral"))
    if general is not None:
        entry.update(voxels=int((general > 0).sum()), volume=list(general.shape))
    missing = [n for n in ROI_FILES if not layout.roi(subj, n).exists()]
    if missing:
        notes.append(f"{layout.roi(subj, 'x').parent}: no {', '.join(missing)} (those ROIs will be absent)")
    betas = layout.root / f"nsddata_betas/ppdata/{subject_name(subj)}/{layout.space}"
    entry["betas"] = {}
    for folder in sorted(p for p in betas.iterdir() if p.is_dir()) if betas.is_dir() else []:
        found = find_sessions(folder)
        if not found:
            continue
        gaps = sorted(set(range(1, max(found) + 1)) - set(found))
        if gaps:
            problems.append(f"{folder / f'betas_session{gaps[0]:02d}'}.(hdf5|nii.gz): missing session "
                            f"({len(gaps)} missing before session {max(found)})")
        trials, numbered = 0, []
        for n, files in sorted(found.items()):
            for fmt, path in files.items():
                head = collect(problems, SessionFile(path, fmt).header)
                if head is None:
                    continue
                numbered.append((n, path, head[1]))
                if general is not None and tuple(head[0]) != general.shape:
                    problems.append(f"{path}: volume {tuple(head[0])} does not match nsdgeneral {general.shape}")
            trials += head[1] if head else 0
        formats = sorted({f for files in found.values() for f in files})
        entry["betas"][folder.name] = {"sessions": len(found), "formats": formats, "trials": int(trials)}
        if len(found) < SESSIONS[subj]:
            notes.append(f"{folder}: {len(found)} of NSD's {SESSIONS[subj]} sessions (loaded as an incomplete subject)")
        if design is not None:
            problems += design.session_problems(subj, numbered)
    if not entry["betas"]:
        problems.append(f"{betas}: no beta files for {subject_name(subj)}")
    return entry
