"""The Algonauts 2023 challenge data (Gifford et al. 2023), read as distributed.

Layout under ``root`` (the unzipped ``algonauts_2023_challenge_data`` folder)::

    subjXX/training_split/training_fmri/{lh,rh}_training_fmri.npy   float32, images × challenge vertices
                                     (NSD betas z-scored within session, averaged over repeats)
    subjXX/training_split/training_images/train-NNNN_nsd-XXXXX.png
    subjXX/test_split/test_images/test-NNNN_nsd-XXXXX.png           (the challenge's test fMRI is not public)
    subjXX/roi_masks/{lh,rh}.<roi>_challenge_space.npy              ROI label of every challenge vertex
    subjXX/roi_masks/mapping_<roi>.npy                              {label: name}, a pickled dict

File names: ``NNNN`` is the 1-based row of the fMRI arrays; ``XXXXX`` is the image's **0-based**
73k NSD index, i.e. ``nsdId`` of ``nsd_stim_info_merged.csv`` (the devkit looks the COCO
captions up with ``nsdId == XXXXX``). It is used unchanged as the stimulus id, so ids agree
with the ``nsd`` loader's.

Test split: with ``subjXX/test_split/test_fmri/{lh,rh}_test_fmri.npy`` present they are the test
responses (rows = test images); otherwise — the public release — a deterministic
``test_fraction`` of the training images is held out (a ``split_seed`` permutation of the
sorted ids) and ``Dataset.info`` says so. There are no single trials: the noise ceiling comes
from ``noise_ceiling`` (one ``.npy`` of lh then rh vertices, or ``{lh: path, rh: path}``; in %,
arrays with every value ≤ 1 are read as fractions and ×100, recorded) and is otherwise
unavailable. ROIs: every ``mapping_<roi>.npy`` class (prf-visualrois, floc-*, streams …) with
its names, the unions V1 = V1v ∪ V1d etc., and the hemispheres ``lh`` and ``rh``. Captions come
through an NSD layout's stimulus table and COCO files (``nsd_root`` / ``coco_annotations``).
The ``mapping_*.npy`` files are pickled dictionaries (the devkit reads them with
``np.load(allow_pickle=True)``); they are read with an unpickler that builds only numpy arrays,
dictionaries, numbers and strings (:func:`read_label_names`), so a file cannot run code.

Checked (one line naming the file and the invariant): lh and rh responses images × vertices of
real numbers with equal rows, one training image per row, image numbers 1..N without gaps and
nsd ids within NSD's 73k images (0..72999), each ROI label file one whole-number label per
vertex of its hemisphere, and every label > 0 named in its mapping.
"""
from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

import numpy as np

from brainharness.cache import cache_root
from brainharness.capabilities import CAPTIONS, ROI_MASKS, Offer
from brainharness.data import Dataset, DatasetLoader, Responses, Stimuli, Subject
from brainharness.errors import ConfigError, DataError
from brainharness.params import PATH, Param
from .nsd_captions import CocoCaptions, LazyCaptions
from .nsd_common import (CACHE, CACHE_DIR, CAPTIONS_MODE, SUBJECT, drop_columns, existing_dir, finish_rois,
                         finite_columns, gather, integer_labels, label_rois, load_npy, numeric_array, public_meta,
                         root_param, short_hash, subject_name, union_ids)
from .nsd_design import N_IMAGES
from .nsd_files import Layout
from brainharness.registry import register_dataset
from .subject_cache import cached_subject, file_signature, source_signature

HEMIS = ("lh", "rh")
NAME_RE = re.compile(r"(train|test)-(\d+)_nsd-(\d+)\.png$")


def image_files(folder: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """PNG files of a split in row order and their 73k ids; the 1-based row numbers must run 1..N."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not found")
    rows = []
    for p in folder.iterdir():
        m = NAME_RE.match(p.name)
        if p.suffix == ".png" and (m is None or m.group(1) != split):
            raise DataError(f"{p}: not named {split}-NNNN_nsd-XXXXX.png")
        if m:
            rows.append((int(m.group(2)), int(m.group(3)), p))
    rows.sort()
    if [r[0] for r in rows] != list(range(1, len(rows) + 1)):
        raise DataError(f"{folder}: image numbers are not 1..{len(rows)} without gaps")
    ids = np.array([r[1] for r in rows], dtype=np.int64)
    outside = [r[2] for r in rows if r[1] >= N_IMAGES]
    if outside:
        raise DataError(f"{outside[0]}: nsd id outside NSD's {N_IMAGES} images (0-based ids 0..{N_IMAGES - 1})")
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{folder}: an nsd id appears twice")
    return [r[2] for r in rows], ids


def open_fmri(folder: Path, prefix: str) -> list[np.ndarray]:
    """The lh and rh arrays, memory-mapped, checked to be images × vertices with equal rows."""
    parts = [numeric_array(folder / f"{h}_{prefix}_fmri.npy", load_npy(folder / f"{h}_{prefix}_fmri.npy", mmap=True),
                           "responses") for h in HEMIS]
    for h, a in zip(HEMIS, parts):
        if a.ndim != 2:
            raise DataError(f"{folder / f'{h}_{prefix}_fmri.npy'}: expected images × vertices, got {a.shape}")
    if len(parts[0]) != len(parts[1]):
        raise DataError(f"{folder / f'rh_{prefix}_fmri.npy'}: {len(parts[1])} images, lh has {len(parts[0])}")
    return parts


class PngReader:
    """Images of the stimulus rows from PNG files (RGB); all must share one size."""

    def __init__(self, files: list[str]):
        self.files = files

    def __call__(self, rows) -> np.ndarray:
        from PIL import Image

        images = []
        for r in np.asarray(rows, dtype=np.int64).reshape(-1):
            with Image.open(self.files[r]) as im:
                images.append(np.asarray(im.convert("RGB")))
            if images[-1].shape != images[0].shape:
                raise DataError(f"{self.files[r]}: size {images[-1].shape[:2]}, other images {images[0].shape[:2]}")
        return np.stack(images) if images else np.empty((0, 0, 0, 3), dtype=np.uint8)


@register_dataset("algonauts2023")
class Algonauts2023(DatasetLoader):
    """Algonauts 2023 challenge data: lh+rh challenge vertices, PNG images, held-out test part.

    Parameters: ``root``, ``subject`` (1–8, ``"subjNN"`` or a list),
    ``test_fraction`` (0.1) and ``split_seed`` (0) for the held-out test part, ``noise_ceiling``
    (file(s), see the module doc), ``nsd_root`` (an NSD layout, for captions), ``coco_annotations``,
    ``captions`` (``auto`` | ``required`` | ``none``), ``cache``, ``cache_dir``."""

    VERSION = version = "1"  # in the data cache key and the result identity: bump when numbers change
    # declared capabilities: no single trials in this layout; COCO captions come through an NSD layout
    provides = (ROI_MASKS, Offer(CAPTIONS, lambda p: bool(p.get("nsd_root")) and p.get("captions") != "none",
                                 "nsd_root and captions: auto or required"))
    params = {
        "root": root_param("the challenge data folder (subjNN/ inside)"),
        "subject": SUBJECT,
        "test_fraction": Param(0.1, gt=0, lt=1, doc="share of the training images held out as the test part"),
        "split_seed": Param(0, ge=0, doc="seed of the held-out part"),
        "noise_ceiling": Param(None, (*PATH, dict), check=lambda v: not isinstance(v, dict) or set(v) == set(HEMIS),
                               expect="null, a path or {lh: path, rh: path}",
                               doc="noise-ceiling file(s); {subject} and {hemi} are filled in"),
        "nsd_root": Param(None, PATH, doc="an NSD official layout, for the COCO captions"),
        "coco_annotations": Param(None, PATH, doc="folder with captions_{train,val}2017.json (null: under nsd_root)"),
        "captions": CAPTIONS_MODE,
        "cache": CACHE,
        "cache_dir": CACHE_DIR,
    }

    def check(self, p):
        if p["captions"] == "required" and not p["nsd_root"]:
            raise ConfigError(f"{self.owner()}: captions='required' needs nsd_root (nsd_stim_info_merged.csv + COCO)")
        if p["noise_ceiling"] is not None and len(p["subject"]) > 1 and "{subject}" not in str(p["noise_ceiling"]):
            raise ConfigError(f"{self.owner()}: with several subjects, put {{subject}} in the noise_ceiling path(s)")

    def configure(self, p):
        self.root = existing_dir(p["root"], "algonauts2023: root")
        self.subjects = p["subject"]
        self.test_fraction, self.split_seed = float(p["test_fraction"]), p["split_seed"]
        self.nc_spec = p["noise_ceiling"]
        self.nsd = Layout(existing_dir(p["nsd_root"], "algonauts2023: nsd_root")) if p["nsd_root"] else None
        self.annotations = Path(p["coco_annotations"]).expanduser() if p["coco_annotations"] else \
            (self.nsd.annotations if self.nsd else None)
        self.captions = p["captions"]
        self.cache = p["cache"]
        self.cache_dir = cache_root(p["cache_dir"])

    def nc_files(self, subj: int) -> list[Path]:
        """The noise-ceiling files of a subject: ``{subject}`` → subjNN, ``{hemi}`` → lh and rh."""
        spec = self.nc_spec
        if spec is None:
            return []
        templates = [str(spec[h]) for h in HEMIS] if isinstance(spec, dict) else \
            [str(spec).replace("{hemi}", h) for h in HEMIS] if "{hemi}" in str(spec) else [str(spec)]
        paths = [Path(t.replace("{subject}", subject_name(subj))).expanduser() for t in templates]
        for p in paths:
            if not p.exists():
                raise DataError(f"{p}: not found (noise_ceiling)")
        return paths

    def folder(self, subj: int) -> Path:
        d = self.root / subject_name(subj)
        if not d.is_dir():
            raise DataError(f"{d}: not found (no Algonauts data for {subject_name(subj)})")
        return d

    # -- loading -------------------------------------------------------------------------
    def load(self) -> Dataset:
        start = time.perf_counter()
        subjects, metas, caches = {}, {}, {}
        for subj in self.subjects:
            d = self.folder(subj)
            sources = [*sorted(d.glob("*_split/*_fmri/*.npy")), *sorted((d / "roi_masks").glob("*.npy")),
                       *self.nc_files(subj)]
            params = {"loader": "algonauts2023", "version": self.VERSION, "subject": subj,
                      "test_fraction": self.test_fraction, "split_seed": self.split_seed, "images": self._listing(d)}
            name = subject_name(subj)
            subjects[name], metas[name], caches[name] = cached_subject(
                self.cache_dir if self.cache else None, "algonauts2023", name, params, sources,
                lambda s=subj: self.load_subject(s))
        ids = union_ids(metas)
        files = {}
        for subj in self.subjects:
            for split in ("training", "test"):
                folder = self.folder(subj) / f"{split}_split/{split}_images"
                if folder.is_dir():
                    for path, i in zip(*image_files(folder, "train" if split == "training" else "test")):
                        files.setdefault(int(i), str(path))
        fingerprint = "algonauts2023-" + short_hash(file_signature([files[int(i)] for i in ids]))
        captions, caption_info, caption_signature = self.captions_of(ids)
        stimuli = Stimuli(ids=ids, read_images=PngReader([files[int(i)] for i in ids]), captions=captions,
                          fingerprint=fingerprint)
        info = {"name": "algonauts2023", "layout": "algonauts2023", "root": str(self.root),
                "ids": "0-based 73k NSD ids from the nsd-XXXXX part of the image file names",
                "responses": "as distributed (z-scored within session by the organisers, averaged over repeats)",
                "fingerprint": fingerprint,
                "subjects": public_meta(metas), "captions": caption_info,
                "cache": caches, "source_signature": {**source_signature(caches), "captions": caption_signature},
                "load_seconds": round(time.perf_counter() - start, 3)}
        return Dataset(name="algonauts2023", stimuli=stimuli, subjects=subjects, info=info)

    @staticmethod
    def _listing(d: Path) -> str:
        names = sorted(p.name for p in d.glob("*_split/*_images/*.png"))
        return short_hash(names)

    def load_subject(self, subj: int) -> tuple[Subject, dict]:
        d = self.folder(subj)
        lh, rh = open_fmri(d / "training_split/training_fmri", "training")
        _, ids = image_files(d / "training_split/training_images", "train")
        if len(ids) != len(lh):
            raise DataError(f"{d / 'training_split/training_images'}: {len(ids)} images, "
                            f"{d / 'training_split/training_fmri/lh_training_fmri.npy'} has {len(lh)} rows")
        test_dir = d / "test_split/test_fmri"
        if all((test_dir / f"{h}_test_fmri.npy").exists() for h in HEMIS):
            test_parts = open_fmri(test_dir, "test")
            _, test_ids = image_files(d / "test_split/test_images", "test")
            if [a.shape[1] for a in test_parts] != [lh.shape[1], rh.shape[1]] or len(test_ids) != len(test_parts[0]):
                raise DataError(f"{test_dir}: test fMRI {[a.shape for a in test_parts]} does not match the training "
                                f"vertices ({lh.shape[1]}, {rh.shape[1]}) and {len(test_ids)} test images")
            fmri, test_fmri, train_ids = gather([lh, rh]), gather(test_parts), ids
            split = {"test_split": f"challenge test split ({test_dir})"}
        else:
            order = np.argsort(ids)
            n_test = max(2, int(round(self.test_fraction * len(ids))))
            is_test = np.zeros(len(ids), dtype=bool)
            is_test[order[np.random.default_rng(self.split_seed).permutation(len(ids))[:n_test]]] = True
            fmri, test_fmri = gather([lh, rh], np.flatnonzero(~is_test)), gather([lh, rh], np.flatnonzero(is_test))
            train_ids, test_ids = ids[~is_test], ids[is_test]
            split = {"test_split": f"held out {n_test} of {len(ids)} training images ({self.test_fraction:.0%}, "
                                   f"split_seed {self.split_seed}): no public test fMRI"}
        n_lh = lh.shape[1]
        keep = finite_columns(fmri, test_fmri)
        fmri, test_fmri = drop_columns(fmri, keep), drop_columns(test_fmri, keep)
        rois, roi_info = self.rois(d, n_lh, keep)
        nc, nc_source = self.noise_ceiling(self.nc_files(subj), keep)
        subject = Subject(name=subject_name(subj), train=Responses(train_ids, fmri),
                          test=Responses(test_ids, test_fmri), rois=rois, noise_ceiling=nc, nc_source=nc_source)
        all_ids = np.r_[train_ids, test_ids]
        meta = {**split, "n_train_images": len(train_ids), "n_test_images": len(test_ids),
                "n_vertices": {"lh": int(keep[:n_lh].sum()), "rh": int(keep[n_lh:].sum())},
                "nan_vertices": {"handling": "drop", "dropped": int((~keep).sum())}, **roi_info,
                "noise_ceiling": nc_source, "stim_ids": all_ids}
        return subject, meta

    def rois(self, d: Path, n_lh: int, keep: np.ndarray) -> tuple[dict, dict]:
        n_total = keep.size
        rois = {"lh": np.arange(n_total) < n_lh, "rh": np.arange(n_total) >= n_lh}
        missing = []
        for mapping in sorted((d / "roi_masks").glob("mapping_*.npy")):
            roi = mapping.name[len("mapping_"):-len(".npy")]
            names = read_label_names(mapping)
            paths = [d / "roi_masks" / f"{h}.{roi}_challenge_space.npy" for h in HEMIS]
            if not all(p.exists() for p in paths):
                missing += [p.name for p in paths if not p.exists()]
                continue
            labels = [load_npy(p) for p in paths]
            for p, lab, n in zip(paths, labels, (n_lh, n_total - n_lh)):
                if lab.shape != (n,):
                    raise DataError(f"{p}: {lab.shape[0] if lab.ndim == 1 else lab.shape} labels, "
                                    f"the fMRI has {n} vertices")
            labels = [integer_labels(p, lab, names, mapping.name) for p, lab in zip(paths, labels)]
            rois.update(label_rois(np.concatenate(labels), names))
        rois, empty = finish_rois({k: v[keep] for k, v in rois.items()})
        return rois, {"roi_files_missing": missing, "rois_empty": empty}

    @staticmethod
    def noise_ceiling(files: list[Path], keep: np.ndarray) -> tuple[np.ndarray | None, str]:
        if not files:
            return None, ("unavailable: Algonauts 2023 ships no single trials (give noise_ceiling files to use "
                          "published ceilings)")
        nc = np.concatenate([load_npy(p).reshape(-1) for p in files]).astype(np.float32)
        if nc.shape != keep.shape:
            raise DataError(f"{files[-1]}: {nc.size} noise-ceiling values, the fMRI has {keep.size} vertices")
        if not np.isfinite(nc[keep]).all() or nc[keep].min() < 0 or nc[keep].max() > 100:
            raise DataError(f"{files[0]}: noise ceilings must be finite and within [0, 100] %")
        fraction = nc[keep].max() <= 1
        units = "fractions, ×100" if fraction else "%"
        return (nc * (100 if fraction else 1))[keep], f"provided: {', '.join(p.name for p in files)} ({units})"

    def captions_of(self, ids: np.ndarray):
        """``(captions, info, signature)``: COCO captions through ``nsd_root``, read on first use."""
        if self.nsd is None or self.captions == "none":
            status = "not loaded (captions='none')" if self.captions == "none" else \
                "unavailable: give nsd_root (and coco_annotations) to add COCO captions"
            return {}, {"status": status}, None
        coco = CocoCaptions(ids, self.nsd.stim_info, self.annotations, self.captions,
                            self.cache_dir if self.cache else None, self.nsd.expdesign)
        captions = LazyCaptions(coco)
        if self.captions == "required":
            captions.read()  # asked for explicitly: read and checked now, before any compute
        return captions, captions.info, coco.signature()


class _ArraysAndDicts(pickle.Unpickler):
    """Unpickles numpy arrays of plain Python objects and nothing that could run code."""

    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: bytes in protocol 2

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_label_names(path: Path) -> dict[int, str]:
    """A ``mapping_<roi>.npy``: an .npy holding a pickled {label: name} dictionary (0-d object array)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(f)
            value = _ArraysAndDicts(f).load() if dtype.hasobject else None
        mapping = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
        return {int(k): str(v) for k, v in mapping.items()}
    except (ValueError, AttributeError, TypeError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"{path}: not a {{label: name}} dictionary ({type(e).__name__}: {e})") from None


def inspect(root: Path) -> dict | None:
    """What of the Algonauts 2023 layout is under ``root``, or None if it is not there."""
    folders = sorted(p.parent for p in root.glob("subj0[1-8]/training_split"))
    if not folders:
        return None
    problems, notes = [], []
    report = {"layout": "algonauts2023", "description": "Algonauts 2023 challenge data", "root": str(root),
              "subjects": {}, "problems": problems, "notes": notes}
    for d in folders:
        entry = {}
        try:
            lh, rh = open_fmri(d / "training_split/training_fmri", "training")
            entry.update(images=len(lh), vertices={"lh": lh.shape[1], "rh": rh.shape[1]})
            _, ids = image_files(d / "training_split/training_images", "train")
            if len(ids) != len(lh):
                problems.append(f"{d / 'training_split/training_images'}: {len(ids)} images, "
                                f"the fMRI has {len(lh)} rows")
            for roi_file in sorted((d / "roi_masks").glob("[lr]h.*_challenge_space.npy")):
                n = entry["vertices"][roi_file.name[:2]]
                if load_npy(roi_file, mmap=True).shape != (n,):
                    problems.append(f"{roi_file}: not {n} labels (the {roi_file.name[:2]} vertices)")
        except DataError as e:
            problems.append(str(e))
        test_images = d / "test_split/test_images"
        entry["test_images"] = len(list(test_images.glob("*.png"))) if test_images.is_dir() else 0
        entry["roi_classes"] = sorted(p.name[len("mapping_"):-4] for p in (d / "roi_masks").glob("mapping_*.npy"))
        if not entry["roi_classes"]:
            notes.append(f"{d / 'roi_masks'}: no mapping_<roi>.npy files (only lh/rh ROIs)")
        entry["test_fmri"] = (d / "test_split/test_fmri").is_dir()
        report["subjects"][d.name] = entry
    if not all(e["test_fmri"] for e in report["subjects"].values()):
        notes.append("no test fMRI (public release): the loader holds out part of the training images as test split")
    return report
