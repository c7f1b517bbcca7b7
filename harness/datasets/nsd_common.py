"""Parameters and array helpers shared by the NSD-derived loaders (nsd, nsd-brain-diffuser, algonauts)."""
from __future__ import annotations

import hashlib
import json
import numbers
import re
from pathlib import Path

import numpy as np

from brainharness.data import Responses
from brainharness.errors import ConfigError, DataError
from brainharness.metrics.noise_ceiling import ncsnr, noise_ceiling
from brainharness.params import PATH, Param

VOXEL_BLOCK = 2048  # voxels per block in column-wise passes
NC_BLOCK = 512  # voxels per block in the noise ceiling (ncsnr makes ~5 copies of its input block)
COMPOSITES = {"V1": ("V1v", "V1d"), "V2": ("V2v", "V2d"), "V3": ("V3v", "V3d"), "FFA": ("FFA-1", "FFA-2"),
              "FBA": ("FBA-1", "FBA-2"), "VWFA": ("VWFA-1", "VWFA-2")}


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


CAPTION_MODES = ("auto", "required", "none")


def root_param(doc: str) -> Param:
    return Param(type=PATH, required=True, doc=doc)


# The parameters every NSD-derived loader takes (besides root and its own).
SUBJECT = Param(1, (int, str, list), convert=subject_list, expect="1..8, 'subjNN' or a non-empty list of them",
                doc="subject(s): 1..8, 'subjNN' or a list")
CAPTIONS_MODE = Param("auto", choices=CAPTION_MODES, doc="COCO captions: auto (where found), required or none")
CACHE = Param(True, doc="save/reuse the preprocessed subject under <cache_dir>/datasets/")
CACHE_DIR = Param(None, PATH, doc="cache root (the runner sets the config's)")


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
# Arrays, noise ceiling, ROIs, metadata
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


def require_file(path: Path, why: str) -> Path:
    """``path`` if it is a file, else DataError ``<path>: not found (<why>)`` (the line `data check` prints too)."""
    if not path.is_file():
        raise DataError(f"{path}: not found ({why})")
    return path


def integer_labels(path: Path, values: np.ndarray, names: dict[int, str] | None = None,
                   named_in: str = "") -> np.ndarray:
    """ROI label values as int64: they must be whole numbers, and every label > 0 must have a name
    in ``names`` (from ``named_in``) — a label without a name would silently drop its voxels."""
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise DataError(f"{path}: ROI labels of type {values.dtype}, expected whole numbers")
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.rint(values))
        if bad.any():
            raise DataError(f"{path}: ROI labels must be whole numbers, found {values[bad].flat[0].item()!r}")
    labels = values.astype(np.int64)
    if names is not None:
        unknown = np.setdiff1d(np.unique(labels[labels > 0]), np.fromiter(names, dtype=np.int64))
        if unknown.size:
            raise DataError(f"{path}: label {int(unknown[0])} has no name in {named_in} "
                            f"(named: {', '.join(map(str, sorted(names)))})")
    return labels


def images_uint8(block: np.ndarray, path: Path, rows) -> np.ndarray:
    """``block`` (images read from ``path``, file rows ``rows``) as uint8.

    brain-diffuser saves its stimuli as float64 holding whole numbers 0–255; any numeric dtype is
    accepted when every value is a whole number in 0..255 (checked on the rows read), else the
    first bad row is named."""
    if block.dtype == np.uint8:
        return block
    if block.dtype.kind not in "iuf":
        raise DataError(f"{path}: images of type {block.dtype}, expected values 0–255 (uint8 or whole-number floats)")
    bad = (block < 0) | (block > 255)
    if block.dtype.kind == "f":
        bad |= block != np.rint(block)  # also NaN
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise DataError(f"{path}: row {int(np.asarray(rows)[i[0]])} holds {block[i].item()!r}, not a whole number in "
                        "0..255 (image values)")
    return block.astype(np.uint8)


def numeric_array(path: Path, a: np.ndarray, what: str) -> np.ndarray:
    """``a`` if it holds real numbers (float or integer), else DataError naming ``path``."""
    if a.dtype.kind not in "iuf":
        raise DataError(f"{path}: {what} of type {a.dtype}, expected real numbers")
    return a


def collect(problems: list, fn, *args):
    """``fn(*args)``, or None with its DataError line appended to ``problems`` (`data check` reports them all)."""
    try:
        return fn(*args)
    except DataError as e:
        problems.append(str(e))
        return None


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


def union_ids(metas: dict[str, dict]) -> np.ndarray:
    """Union of the subjects' stimulus ids (meta ``stim_ids``), sorted."""
    return np.unique(np.concatenate([m["stim_ids"] for m in metas.values()]))
