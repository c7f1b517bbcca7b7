"""The Natural Scenes Dataset in its official layout (Allen et al. 2022), read as distributed.

Layout under ``root`` (the folder that holds ``nsddata``, ``nsddata_betas``, ``nsddata_stimuli``)::

    nsddata/experiments/nsd/nsd_expdesign.mat          masterordering (1×30000), subjectim (8×10000),
                                                       sharedix — all 1-based
    nsddata/experiments/nsd/nsd_stim_info_merged.csv   nsdId (0-based) → cocoId, cocoSplit
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

Documented handling, recorded in ``Dataset.info``: voxels with NaN/inf betas in any session
are dropped (``nan_voxels="drop"``) or raise (``"error"``); voxels constant within a session
become 0 there (counted); ROI files that are missing and ROIs with no nsdgeneral voxel are
listed and left out; missing caption files leave the captions empty (``captions="auto"``) or
raise (``"required"``); a subject with fewer sessions than NSD's count is loaded with the
sessions present (a gap in the numbering raises).
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import numbers
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from brainharness.data import Dataset, Responses, Stimuli, Subject
from brainharness.errors import ConfigError, DataError
from brainharness.metrics.noise_ceiling import ncsnr, noise_ceiling, zscore_within_sessions
from brainharness.registry import register_dataset
from .subject_cache import cached_subject, file_signature, resolve_cache_dir

log = logging.getLogger(__name__)

SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}  # completed NSD sessions
BETA_VERSIONS = ("betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf")
SCALE = 300.0  # int16 betas store percent signal change × 300
ROI_FILES = ("prf-visualrois", "floc-faces", "floc-bodies", "floc-places", "floc-words")
DEFAULT_LABELS = {
    "prf-visualrois": {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"},
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"},
    "floc-bodies": {1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"},
    "floc-places": {1: "OPA", 2: "PPA", 3: "RSC"},
    "floc-words": {1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"},
}
COMPOSITES = {"V1": ("V1v", "V1d"), "V2": ("V2v", "V2d"), "V3": ("V3v", "V3d"), "FFA": ("FFA-1", "FFA-2"),
              "FBA": ("FBA-1", "FBA-2"), "VWFA": ("VWFA-1", "VWFA-2")}
CHUNK_BYTES = 64 << 20  # raw betas read per block
VOXEL_BLOCK = 2048  # voxels per block in column-wise passes
NC_BLOCK = 512  # voxels per block in the noise ceiling (ncsnr makes ~5 copies of its input block)


# --------------------------------------------------------------------------------------------
# Parameters shared by the NSD-derived loaders
# --------------------------------------------------------------------------------------------
def subject_number(value) -> int:
    """1..8 from ``1``, ``"1"``, ``"subj01"``."""
    if isinstance(value, str):
        m = re.fullmatch(r"(?:subj)?0*(\d+)", value.strip().lower())
        if m is None:
            raise ConfigError(f"subject must be 1..8 or 'subjNN', got {value!r}")
        value = int(m.group(1))
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= 8:
        raise ConfigError(f"subject must be 1..8 or 'subjNN', got {value!r}")
    return int(value)


def subject_list(value) -> list[int]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError("subject: give at least one subject")
    return sorted({subject_number(v) for v in values})


def subject_name(n: int) -> str:
    return f"subj{n:02d}"


def choice(name: str, value, options) -> str:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def check_params(cls):
    """Class decorator for loaders: keyword arguments outside ``cls.accepts`` → ConfigError with a hint."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, **params):
        unknown = sorted(set(params) - set(cls.accepts))
        if unknown:
            close = difflib.get_close_matches(unknown[0], cls.accepts, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (accepts: {', '.join(cls.accepts)})"
            raise ConfigError(f"{getattr(cls, 'registry_name', cls.__name__)}: unknown parameter {unknown[0]!r}{hint}")
        init(self, **params)

    cls.__init__ = __init__
    return cls


def short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def existing_dir(path, what: str) -> Path:
    if path is None or not isinstance(path, (str, Path)):
        raise ConfigError(f"{what}: give the folder as a path, got {path!r}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: folder not found ({what})")
    return path


# --------------------------------------------------------------------------------------------
# Files of the official layout
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    root: Path
    space: str = "func1pt8mm"

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata/experiments/nsd/nsd_expdesign.mat"

    @property
    def stim_info(self) -> Path:
        return self.root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv"

    @property
    def imgbrick(self) -> Path:
        return self.root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"

    @property
    def annotations(self) -> Path:
        return self.root / "nsddata_stimuli/stimuli/nsd/annotations"

    def roi(self, subj: int, name: str) -> Path:
        return self.root / f"nsddata/ppdata/{subject_name(subj)}/{self.space}/roi/{name}.nii.gz"

    def ctab(self, subj: int, name: str) -> Path:
        return self.root / f"nsddata/freesurfer/{subject_name(subj)}/label/{name}.mgz.ctab"

    def betas_dir(self, subj: int, version: str) -> Path:
        return self.root / f"nsddata_betas/ppdata/{subject_name(subj)}/{self.space}/{version}"


SESSION_RE = re.compile(r"betas_session(\d+)\.(hdf5|nii\.gz)$")
FORMATS = {"hdf5": "hdf5", "nii.gz": "nifti"}


def find_sessions(folder: Path) -> dict[int, dict[str, Path]]:
    """Session number → {format: file} of the beta files in ``folder``."""
    found: dict[int, dict[str, Path]] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = SESSION_RE.match(p.name)
        if m:
            found.setdefault(int(m.group(1)), {})[FORMATS[m.group(2)]] = p
    return found


@dataclass(frozen=True)
class SessionFile:
    path: Path
    fmt: str  # hdf5 | nifti

    def header(self) -> tuple[tuple[int, int, int], int, np.dtype]:
        """(X, Y, Z) volume shape, number of trials, stored dtype — without reading data."""
        try:
            if self.fmt == "hdf5":
                with h5py.File(self.path, "r") as f:
                    ds = _betas_dataset(f, self.path)
                    t, z, y, x = ds.shape
                    return (x, y, z), t, ds.dtype
            import nibabel as nib

            img = nib.load(self.path)
            if len(img.shape) != 4:
                raise DataError(f"{self.path}: expected a 4-D (X, Y, Z, trials) volume, got shape {img.shape}")
            *xyz, t = img.shape
            return tuple(xyz), t, img.get_data_dtype()
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path}: unreadable betas file ({e})") from None

    def read(self, coords: np.ndarray) -> np.ndarray:
        """Betas of the voxels at ``coords`` (3 × V: X, Y, Z) → float32 (trials, V); ÷300 if stored as integers."""
        try:
            return self._read_hdf5(coords) if self.fmt == "hdf5" else self._read_nifti(coords)
        except (OSError, ValueError, EOFError, zlib.error) as e:  # truncated or corrupt files
            raise DataError(f"{self.path}: cannot read betas ({type(e).__name__}: {e})") from None

    def _read_hdf5(self, coords):
        lo, hi = coords.min(1), coords.max(1) + 1
        x, y, z = coords - lo[:, None]
        with h5py.File(self.path, "r") as f:
            ds = _betas_dataset(f, self.path)
            n = ds.shape[0]
            out = np.empty((n, coords.shape[1]), dtype=np.float32)
            step = max(1, CHUNK_BYTES // (int(np.prod(hi - lo)) * ds.dtype.itemsize))
            for t0 in range(0, n, step):  # h5py axis order (trials, Z, Y, X): a bounding-box hyperslab
                block = ds[t0:t0 + step, lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
                out[t0:t0 + step] = block[:, z, y, x]
            return _descale(out, ds.dtype)

    def _read_nifti(self, coords):
        import nibabel as nib

        img = nib.load(self.path, keep_file_open=True)  # one gzip stream read forward, block by block
        *xyz, n = img.shape
        out = np.empty((n, coords.shape[1]), dtype=np.float32)
        step = max(1, CHUNK_BYTES // (int(np.prod(xyz)) * img.get_data_dtype().itemsize))
        x, y, z = coords
        for t0 in range(0, n, step):
            block = np.asanyarray(img.dataobj[..., t0:t0 + step])
            out[t0:t0 + step] = block[x, y, z, :].T
        # a header scaling (scl_slope/scl_inter) has already been applied by nibabel: no ÷300 then
        scaled = getattr(img.dataobj, "slope", 1.0) != 1.0 or getattr(img.dataobj, "inter", 0.0) != 0.0
        return _descale(out, np.float32 if scaled else img.get_data_dtype())


def _betas_dataset(f: h5py.File, path: Path):
    if "betas" not in f:
        raise DataError(f"{path}: no 'betas' dataset (has: {', '.join(f.keys()) or 'nothing'})")
    ds = f["betas"]
    if ds.ndim != 4:
        raise DataError(f"{path}: 'betas' should be (trials, Z, Y, X), got shape {ds.shape}")
    return ds


def _descale(out: np.ndarray, dtype) -> np.ndarray:
    if np.issubdtype(np.dtype(dtype), np.integer):
        out /= SCALE
    return out


def read_volume(path: Path) -> np.ndarray:
    import nibabel as nib

    if not path.exists():
        raise DataError(f"{path}: not found")
    try:
        return np.asanyarray(nib.load(path).dataobj)
    except Exception as e:  # nibabel raises many types on bad files
        raise DataError(f"{path}: unreadable NIfTI ({e})") from None


def read_ctab(path: Path) -> dict[int, str]:
    """FreeSurfer colour table: ``index name [r g b a]`` per line; labels ≤ 0 are outside."""
    labels = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#"):
            try:
                index = int(parts[0])
            except ValueError:
                raise DataError(f"{path}: bad colour-table line {line!r}") from None
            if index > 0:
                labels[index] = parts[1]
    return labels


# --------------------------------------------------------------------------------------------
# Experimental design, captions, images
# --------------------------------------------------------------------------------------------
@dataclass
class Design:
    path: Path
    masterordering: np.ndarray  # 1-based indices into a subject's 10k images, one per trial
    subjectim: np.ndarray  # (8, 10000) 1-based 73k ids
    n_shared: int

    def trials(self, subj: int, n_trials: int) -> tuple[np.ndarray, np.ndarray]:
        """0-based 73k id and test flag (shared image) of the first ``n_trials`` trials of ``subj``."""
        if n_trials > len(self.masterordering):
            raise DataError(f"{self.path}: masterordering lists {len(self.masterordering)} trials, "
                            f"the sessions loaded hold {n_trials}")
        if subj > self.subjectim.shape[0]:
            raise DataError(f"{self.path}: subjectim has {self.subjectim.shape[0]} rows, no subject {subj}")
        order = self.masterordering[:n_trials]
        return self.subjectim[subj - 1, order - 1] - 1, order <= self.n_shared

    def first_appearance(self, subj: int) -> tuple[np.ndarray, np.ndarray]:
        """Train and test 73k ids in order of first appearance over all trials (brain-diffuser's order)."""
        ids, test = self.trials(subj, len(self.masterordering))
        out = []
        for sel in (~test, test):
            uniq, first = np.unique(ids[sel], return_index=True)
            out.append(uniq[np.argsort(first)])
        return out[0], out[1]


def read_design(path: Path) -> Design:
    from scipy.io import loadmat

    if not path.exists():
        raise DataError(f"{path}: not found (needed to map trials to images)")
    try:
        m = loadmat(path, variable_names=["masterordering", "subjectim", "sharedix"])
    except Exception as e:  # scipy raises NotImplementedError for v7.3, ValueError for junk
        raise DataError(f"{path}: unreadable MATLAB file ({type(e).__name__}: {e})") from None
    for key in ("masterordering", "subjectim"):
        if key not in m:
            raise DataError(f"{path}: no variable {key!r}")
    order = np.asarray(m["masterordering"]).reshape(-1).astype(np.int64)
    subjectim = np.atleast_2d(np.asarray(m["subjectim"])).astype(np.int64)
    n_shared = int(np.asarray(m["sharedix"]).size) if "sharedix" in m else 1000
    if order.size == 0 or order.min() < 1 or order.max() > subjectim.shape[1] or subjectim.min() < 1:
        raise DataError(f"{path}: masterordering/subjectim are not 1-based indices within range")
    return Design(path, order, subjectim, n_shared)


def coco_captions(ids: np.ndarray, stim_info: Path, annotations: Path, mode: str) -> tuple[dict, dict]:
    """Captions of 0-based 73k ids via nsd_stim_info_merged.csv (nsdId → cocoId, cocoSplit) and COCO json."""
    if mode == "none":
        return {}, {"status": "not loaded (captions='none')"}
    missing = [p for p in (stim_info, annotations) if not p.exists()]
    if missing:
        return _no_captions(f"{missing[0]}: not found", mode)
    import pandas as pd

    try:
        table = pd.read_csv(stim_info, usecols=["nsdId", "cocoId", "cocoSplit"]).set_index("nsdId")
    except (ValueError, KeyError, OSError) as e:
        raise DataError(f"{stim_info}: unreadable stimulus table ({e})") from None
    if not table.index.is_unique:
        raise DataError(f"{stim_info}: nsdId values repeat")
    unknown = np.setdiff1d(ids, table.index.to_numpy())
    if unknown.size:
        raise DataError(f"{stim_info}: no row for nsdId {int(unknown[0])} ({unknown.size} ids missing)")
    rows = table.loc[ids]
    wanted = {}
    for split in sorted(set(rows["cocoSplit"])):
        path = annotations / f"captions_{split}.json"
        if not path.exists():
            return _no_captions(f"{path}: not found", mode)
        wanted[path] = set(rows.loc[rows["cocoSplit"] == split, "cocoId"].astype(int))
    by_coco: dict[int, list[str]] = {}
    for path, coco_ids in wanted.items():
        try:
            anns = json.loads(path.read_text())["annotations"]
        except (ValueError, KeyError, OSError) as e:
            raise DataError(f"{path}: unreadable COCO captions ({type(e).__name__}: {e})") from None
        for ann in anns:
            if ann["image_id"] in coco_ids:
                text = str(ann["caption"]).strip()
                if text and text not in by_coco.setdefault(ann["image_id"], []):
                    by_coco[ann["image_id"]].append(text)
    captions = {int(i): by_coco[c] for i, c in zip(ids, rows["cocoId"].astype(int)) if c in by_coco}
    lacking = [int(i) for i in ids if int(i) not in captions]
    if lacking and mode == "required":
        coco = int(rows.loc[lacking[0], "cocoId"])
        raise DataError(f"{annotations}: no caption for cocoId {coco} (nsd id {lacking[0]}; "
                        f"{len(lacking)} images without captions)")
    return captions, {"status": "loaded", "source": str(annotations), "n_images": len(captions),
                      "n_without_captions": len(lacking)}


def _no_captions(reason: str, mode: str) -> tuple[dict, dict]:
    if mode == "required":
        raise DataError(f"{reason} (captions='required')")
    return {}, {"status": f"unavailable: {reason}"}


class H5ImageReader:
    """Images of the stimulus rows from an HDF5 image array (row of stimulus i = ``source_rows[i]``).

    Opens the file per call (fork-safe, picklable)."""

    def __init__(self, path: Path, key: str, source_rows: np.ndarray, shape: tuple):
        self.path, self.key = Path(path), key
        self.source_rows, self.shape = np.asarray(source_rows, dtype=np.int64), tuple(shape)

    def __call__(self, rows) -> np.ndarray:
        src = self.source_rows[np.asarray(rows, dtype=np.int64).reshape(-1)]
        if src.size == 0:
            return np.empty((0, *self.shape), dtype=np.uint8)
        uniq, inverse = np.unique(src, return_inverse=True)
        try:
            with h5py.File(self.path, "r") as f:
                block = f[self.key][uniq]  # h5py wants increasing indices
        except (OSError, KeyError) as e:
            raise DataError(f"{self.path}: cannot read images ({e})") from None
        return block[inverse.reshape(-1)]


def imgbrick_reader(path: Path, ids: np.ndarray) -> tuple[H5ImageReader, str]:
    """Lazy reader of ``imgBrick`` rows (= 0-based 73k ids) and the stimulus-set fingerprint."""
    if not path.exists():
        raise DataError(f"{path}: not found (the NSD images)")
    try:
        with h5py.File(path, "r") as f:
            shape = f["imgBrick"].shape
    except (OSError, KeyError) as e:
        raise DataError(f"{path}: no readable 'imgBrick' dataset ({e})") from None
    if len(shape) != 4 or shape[3] != 3:
        raise DataError(f"{path}: imgBrick should be (images, H, W, 3), got {shape}")
    if ids.size and ids.max() >= shape[0]:
        raise DataError(f"{path}: imgBrick has {shape[0]} images, the design refers to id {int(ids.max())}")
    return H5ImageReader(path, "imgBrick", ids, shape[1:]), "nsd-imgBrick-" + short_hash(file_signature([path]))


# --------------------------------------------------------------------------------------------
# Helpers shared by the NSD-derived loaders
# --------------------------------------------------------------------------------------------
def drop_columns(a: np.ndarray, keep: np.ndarray, block_rows: int = 1024) -> np.ndarray:
    """``a[:, keep]`` for a C-contiguous 2-D array, compacted in place (no second full copy).

    Row block ``r`` is written to flat positions ``[r0·k, r1·k)``, which never reach rows not yet
    read (they start at ``r1·n_cols``). Returns a contiguous view on ``a``'s buffer."""
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return a
    a = np.ascontiguousarray(a)
    n, k = a.shape[0], int(keep.sum())
    flat = a.reshape(-1)
    for r0 in range(0, n, block_rows):
        r1 = min(n, r0 + block_rows)
        flat[r0 * k:r1 * k] = a[r0:r1][:, keep].reshape(-1)
    return flat[:n * k].reshape(n, k)


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """``np.load`` without pickles (optionally memory-mapped); problems name the file."""
    if not path.exists():
        raise DataError(f"{path}: not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: not accepted for these files
        raise DataError(f"{path}: not a plain numpy array ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e})") from None


def gather(arrays: list[np.ndarray], rows: np.ndarray | None = None, block: int = 1024) -> np.ndarray:
    """float32 copy of ``rows`` (default all) of the 2-D ``arrays`` placed side by side.

    Reads block by block, so memory-mapped inputs of any dtype never have a second full copy."""
    n = len(arrays[0]) if rows is None else len(rows)
    out = np.empty((n, sum(a.shape[1] for a in arrays)), dtype=np.float32)
    for r0 in range(0, n, block):
        sel = slice(r0, r0 + block) if rows is None else rows[r0:r0 + block]
        c = 0
        for a in arrays:
            out[r0:r0 + block, c:c + a.shape[1]] = a[sel]
            c += a.shape[1]
    return out


def finite_columns(*arrays: np.ndarray, block: int = VOXEL_BLOCK) -> np.ndarray:
    """Columns with only finite values in every array (checked in column blocks)."""
    n = arrays[0].shape[1]
    ok = np.ones(n, dtype=bool)
    for a in arrays:
        for v0 in range(0, n, block):
            ok[v0:v0 + block] &= np.isfinite(a[:, v0:v0 + block]).all(0)
    return ok


def average_trials(trials: np.ndarray, trial_stim: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Sorted stimulus ids and the mean of each one's trials (row blocks: bounded temporaries)."""
    ids, inverse = np.unique(trial_stim, return_inverse=True)
    out = np.zeros((len(ids), trials.shape[1]), dtype=np.float32)
    for r0 in range(0, len(inverse), block):
        inv = inverse[r0:r0 + block]
        order = np.argsort(inv, kind="stable")
        rank = np.empty_like(order)
        sorted_inv = inv[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
        rank[order] = np.arange(len(inv)) - np.repeat(starts, np.diff(np.r_[starts, len(inv)]))
        for k in range(int(rank.max()) + 1 if len(inv) else 0):  # rows of one rank hit distinct images
            sel = rank == k
            out[inv[sel]] += trials[r0:r0 + block][sel]
    out /= np.bincount(inverse, minlength=len(ids))[:, None].astype(np.float32)
    return ids, out


def pooled_ncsnr(parts: list[Responses], block: int = NC_BLOCK) -> np.ndarray:
    """ncsnr from the single trials of several splits together, voxel block by voxel block."""
    stim = np.concatenate([p.trial_stim for p in parts])
    n = parts[0].n_voxels
    out = np.empty(n, dtype=np.float32)
    for v0 in range(0, n, block):
        out[v0:v0 + block] = ncsnr(np.concatenate([p.trials[:, v0:v0 + block] for p in parts]), stim)
    return out


def test_noise_ceiling(train: Responses, test: Responses) -> tuple[np.ndarray | None, str]:
    """NC (%) of the test averages from all single trials (NSD formula, mixed-repeat correction)."""
    try:
        snr = pooled_ncsnr([train, test])
    except DataError as e:
        return None, f"unavailable: {e}"
    return noise_ceiling(snr, test.repeats()), "estimated from single trials (NSD formula, mixed-repeat correction)"


def label_rois(labels: np.ndarray, names: dict[int, str]) -> dict[str, np.ndarray]:
    return {name: labels == index for index, name in names.items() if index > 0}


def finish_rois(rois: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Add the unions (V1 = V1v ∪ V1d, FFA = FFA-1 ∪ FFA-2 …); drop and list the empty ROIs."""
    for name, parts in COMPOSITES.items():
        if name not in rois and all(p in rois for p in parts):
            rois[name] = np.logical_or.reduce([rois[p] for p in parts])
    empty = sorted(name for name, mask in rois.items() if not mask.any())
    return {k: v for k, v in rois.items() if v.any()}, empty


def public_meta(metas: dict[str, dict]) -> dict[str, dict]:
    """Per-subject metadata for ``Dataset.info`` (the numpy arrays stay in the subject cache)."""
    return {n: {k: v for k, v in m.items() if not isinstance(v, np.ndarray)} for n, m in metas.items()}


def union_stimuli(metas: dict[str, dict]) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Union of the subjects' stimulus ids (meta ``stim_ids``) and captions (meta ``captions``, popped)."""
    ids = np.unique(np.concatenate([m["stim_ids"] for m in metas.values()]))
    captions = {int(k): v for m in metas.values() for k, v in m.pop("captions").items()}
    return ids, captions


# --------------------------------------------------------------------------------------------
# The dataset plugin
# --------------------------------------------------------------------------------------------
@register_dataset("nsd")
@check_params
class NSD:
    """NSD in its official layout: per-session betas (HDF5/NIfTI), nsdgeneral + ROIs, shared1000 = test.

    Parameters: ``root`` (folder with ``nsddata``, ``nsddata_betas``, ``nsddata_stimuli``), ``subject`` (1–8,
    ``"subjNN"`` or a list), ``sessions`` (``"all"`` present, or the first N), ``beta_version``
    (default ``betas_fithrf_GLMdenoise_RR``), ``format`` (``auto``: HDF5 where present, else
    NIfTI; or ``hdf5`` / ``nifti``), ``space`` (``func1pt8mm``), ``nan_voxels`` (``drop`` |
    ``error``), ``captions`` (``auto`` | ``required`` | ``none``), ``coco_annotations`` (folder
    with ``captions_{train,val}2017.json``; default under ``nsddata_stimuli``), ``cache``
    (save/reuse the preprocessed subject under ``<cache_dir>/datasets/``) and ``cache_dir``.
    """

    VERSION = "1"
    accepts = ("root", "subject", "sessions", "beta_version", "format", "space", "nan_voxels", "captions",
               "coco_annotations", "cache", "cache_dir")

    def __init__(self, root=None, subject=1, sessions="all", beta_version: str = BETA_VERSIONS[0],
                 format: str = "auto", space: str = "func1pt8mm", nan_voxels: str = "drop", captions: str = "auto",
                 coco_annotations=None, cache: bool = True, cache_dir=None):
        self.root = existing_dir(root, "nsd: root")
        self.subjects = subject_list(subject)
        if sessions != "all" and (isinstance(sessions, bool) or not isinstance(sessions, numbers.Integral)
                                  or sessions < 1):
            raise ConfigError(f"nsd: sessions must be 'all' or a positive integer, got {sessions!r}")
        self.sessions = sessions
        if not isinstance(beta_version, str) or not beta_version:
            raise ConfigError(f"nsd: beta_version must be a folder name such as {BETA_VERSIONS[0]!r}")
        self.beta_version = beta_version
        self.format = choice("nsd: format", format, ("auto", "hdf5", "nifti"))
        self.layout = Layout(self.root, choice("nsd: space", space, ("func1pt8mm", "func1mm")))
        self.nan_voxels = choice("nsd: nan_voxels", nan_voxels, ("drop", "error"))
        self.captions = choice("nsd: captions", captions, ("auto", "required", "none"))
        self.annotations = Path(coco_annotations).expanduser() if coco_annotations else self.layout.annotations
        self.cache = bool(cache)
        self.cache_dir = resolve_cache_dir(cache_dir)

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

    def sources(self, subj: int, files: list[SessionFile]) -> list[Path]:
        paths = [f.path for f in files] + [self.layout.expdesign, self.layout.roi(subj, "nsdgeneral")]
        for name in ROI_FILES:
            paths += [p for p in (self.layout.roi(subj, name), self.layout.ctab(subj, name)) if p.exists()]
        if self.captions != "none":
            paths += [p for p in (self.layout.stim_info, *self.annotations.glob("captions_*2017.json")) if p.exists()]
        return paths

    def params(self, files: list[SessionFile]) -> dict:
        return {"loader": "nsd", "version": self.VERSION, "beta_version": self.beta_version, "space": self.layout.space,
                "files": [f"{f.path.name}:{f.fmt}" for f in files], "nan_voxels": self.nan_voxels,
                "captions": self.captions}

    # -- loading -------------------------------------------------------------------------
    def load(self) -> Dataset:
        start = time.perf_counter()
        subjects, metas, caches = {}, {}, {}
        for subj in self.subjects:
            name = subject_name(subj)
            subjects[name], metas[name], caches[name] = self.subject(subj)
        ids, captions = union_stimuli(metas)
        reader, fingerprint = imgbrick_reader(self.layout.imgbrick, ids)
        stimuli = Stimuli(ids=ids, read_images=reader, captions=captions, fingerprint=fingerprint)
        info = {"name": "nsd", "layout": "nsd-official", "root": str(self.root), "space": self.layout.space,
                "beta_version": self.beta_version, "format_requested": self.format,
                "scale": "int16 betas ÷ 300", "zscore": "each voxel within each session (ddof=0)",
                "voxels": "nsdgeneral > 0, NIfTI (X, Y, Z) C order",
                "test_split": "shared1000 (masterordering ≤ len(sharedix))",
                "images": str(self.layout.imgbrick), "fingerprint": fingerprint,
                "subjects": public_meta(metas),
                "cache": caches, "load_seconds": round(time.perf_counter() - start, 3)}
        return Dataset(name="nsd", stimuli=stimuli, subjects=subjects, info=info)

    def subject(self, subj: int) -> tuple[Subject, dict, dict]:
        """One subject (from the subject cache when possible): ``(subject, meta, cache_info)``."""
        files = self.session_files(subj)
        return cached_subject(self.cache_dir if self.cache else None, "nsd", subject_name(subj),
                              {**self.params(files), "subject": subj}, self.sources(subj, files),
                              lambda: self.load_subject(subj, files))

    def load_subject(self, subj: int, files: list[SessionFile]) -> tuple[Subject, dict]:
        name = subject_name(subj)
        mask_path = self.layout.roi(subj, "nsdgeneral")
        general = read_volume(mask_path)
        coords = np.array(np.nonzero(general > 0))  # (3, V): X, Y, Z in C order
        if coords.shape[1] == 0:
            raise DataError(f"{mask_path}: no voxel > 0")
        counts = []
        for f in files:
            xyz, n, _ = f.header()
            if tuple(xyz) != general.shape:
                raise DataError(f"{f.path}: volume {tuple(xyz)} does not match {mask_path.name} {general.shape}")
            counts.append(n)
        design = read_design(self.layout.expdesign)
        trial_ids, trial_test = design.trials(subj, sum(counts))
        if not trial_test.any() or trial_test.all():
            raise DataError(f"{files[-1].path.parent}: the {len(files)} sessions loaded hold no "
                            f"{'test (shared)' if not trial_test.any() else 'training'} trials")
        captions, caption_info = coco_captions(np.unique(trial_ids), self.layout.stim_info, self.annotations,
                                               self.captions)
        split_trials, bad, notes = self.read_sessions(files, counts, coords, trial_test)
        keep = ~bad
        responses = {}
        for split, sel in (("train", ~trial_test), ("test", trial_test)):
            trials = drop_columns(split_trials.pop(split), keep)
            ids, averaged = average_trials(trials, trial_ids[sel])
            responses[split] = Responses(ids, averaged, trials, trial_ids[sel])
        coords = coords[:, keep]
        rois, roi_info = self.rois(subj, general.shape, coords)
        nc, nc_source = test_noise_ceiling(responses["train"], responses["test"])
        subject = Subject(name=name, train=responses["train"], test=responses["test"], rois=rois,
                          noise_ceiling=nc, nc_source=nc_source)
        meta = {"sessions": [int(SESSION_RE.match(f.path.name).group(1)) for f in files],
                "sessions_in_nsd": SESSIONS[subj], "formats": sorted({f.fmt for f in files}),
                "trials": int(sum(counts)), "n_voxels": int(keep.sum()), "volume": list(general.shape),
                "n_train_images": len(responses["train"].stim_ids), "n_test_images": len(responses["test"].stim_ids),
                "nan_voxels": {"handling": self.nan_voxels, "dropped": int(bad.sum()), "files": notes["nan_files"]},
                "constant_in_a_session_voxels": int((notes["constant"] & keep).sum()), **roi_info,
                "noise_ceiling": nc_source, "captions_info": caption_info, "captions": captions,
                "stim_ids": np.unique(trial_ids), "voxel_xyz": coords.T.astype(np.int16)}
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

    def rois(self, subj: int, shape, coords: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
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
            rois.update(label_rois(np.rint(vol[tuple(coords)]).astype(np.int64), names))
        rois, empty = finish_rois(rois)
        return rois, {"roi_files_missing": missing, "rois_empty": empty, "roi_labels": names_from}


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
    design = _try(problems, read_design, layout.expdesign)
    if design is not None:
        report["design"] = {"trials": len(design.masterordering), "subjects": design.subjectim.shape[0],
                            "images_per_subject": design.subjectim.shape[1], "shared": design.n_shared}
    if layout.imgbrick.exists():
        try:
            with h5py.File(layout.imgbrick, "r") as f:
                report["images"] = {"n": int(f["imgBrick"].shape[0]), "shape": list(f["imgBrick"].shape[1:])}
        except (OSError, KeyError) as e:
            problems.append(f"{layout.imgbrick}: no readable 'imgBrick' ({e})")
    else:
        problems.append(f"{layout.imgbrick}: not found (the NSD images)")
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


def _try(problems: list, fn, *args):
    try:
        return fn(*args)
    except DataError as e:
        problems.append(str(e))
        return None


def _inspect_subject(layout: Layout, subj: int, design, problems: list, notes: list) -> dict:
    entry = {"sessions_in_nsd": SESSIONS[subj]}
    general = _try(problems, read_volume, layout.roi(subj, "nsdgeneral"))
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
        trials = 0
        for n, files in sorted(found.items()):
            for fmt, path in files.items():
                head = _try(problems, SessionFile(path, fmt).header)
                if head is None:
                    continue
                if general is not None and tuple(head[0]) != general.shape:
                    problems.append(f"{path}: volume {tuple(head[0])} does not match nsdgeneral {general.shape}")
            trials += head[1] if head else 0
        formats = sorted({f for files in found.values() for f in files})
        entry["betas"][folder.name] = {"sessions": len(found), "formats": formats, "trials": int(trials)}
        if len(found) < SESSIONS[subj]:
            notes.append(f"{folder}: {len(found)} of NSD's {SESSIONS[subj]} sessions (loaded as an incomplete subject)")
        if design is not None and trials > len(design.masterordering):
            problems.append(f"{folder}: {trials} trials, {design.path.name} lists {len(design.masterordering)}")
    if not entry["betas"]:
        problems.append(f"{betas}: no beta files for {subject_name(subj)}")
    return entry
