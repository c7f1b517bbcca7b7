"""Readers of the files of NSD's official layout (paths, beta sessions, volumes, colour tables,
the image brick); the layout is described in :mod:`.nsd`, the design in :mod:`.nsd_design`,
the captions in :mod:`.nsd_captions`."""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from brainharness.errors import DataError
from .nsd_common import require_file, short_hash, subject_name
from .subject_cache import file_signature

SCALE = 300.0  # int16 betas store percent signal change × 300
CHUNK_BYTES = 64 << 20  # raw betas read per block


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
                    return (x, y, z), t, _betas_dtype(self.path, ds.dtype)
            import nibabel as nib

            img = nib.load(self.path)
            if len(img.shape) != 4:
                raise DataError(f"{self.path}: expected a 4-D (X, Y, Z, trials) volume, got shape {img.shape}")
            *xyz, t = img.shape
            return tuple(xyz), t, _betas_dtype(self.path, img.get_data_dtype())
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


def _betas_dtype(path: Path, dtype) -> np.dtype:
    """NSD stores betas as int16 (= beta × 300); floats are taken as betas already divided."""
    dtype = np.dtype(dtype)
    if dtype != np.int16 and dtype.kind != "f":
        raise DataError(f"{path}: betas of type {dtype}; NSD stores int16 (beta × 300), or give floats")
    return dtype


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


def volume_shape(path: Path) -> tuple[int, ...]:
    """The shape of a NIfTI volume from its header (no voxel is read)."""
    import nibabel as nib

    try:
        return tuple(nib.load(path).shape)
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
# Images
# --------------------------------------------------------------------------------------------
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


def imgbrick_shape(path: Path) -> tuple[int, ...]:
    """Shape of ``imgBrick``, checked to be (images, H, W, 3) uint8 as NSD ships it (73000×425×425×3)."""
    require_file(path, "the NSD images")
    try:
        with h5py.File(path, "r") as f:
            shape, dtype = f["imgBrick"].shape, f["imgBrick"].dtype
    except (OSError, KeyError) as e:
        raise DataError(f"{path}: no readable 'imgBrick' dataset ({e})") from None
    if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
        raise DataError(f"{path}: imgBrick should be (images, H, W, 3) uint8, got {shape} {dtype}")
    return shape


def imgbrick_reader(path: Path, ids: np.ndarray) -> tuple[H5ImageReader, str]:
    """Lazy reader of ``imgBrick`` rows (= 0-based 73k ids) and the stimulus-set fingerprint."""
    shape = imgbrick_shape(path)
    if ids.size and ids.max() >= shape[0]:
        raise DataError(f"{path}: imgBrick has {shape[0]} images, the design refers to id {int(ids.max())}")
    return H5ImageReader(path, "imgBrick", ids, shape[1:]), "nsd-imgBrick-" + short_hash(file_signature([path]))
