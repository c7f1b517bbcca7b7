"""Miniature copies of the three NSD layouts, written file by file as the real ones are.

Same file names, HDF5 keys, dtypes and axis orders as distributed (HDF5 betas (trials, Z, Y, X)
int16 = value × 300, NIfTI (X, Y, Z, trials), 1-based ``masterordering``/``subjectim``/``sharedix``
and a 0/1 ``stimpattern`` (sessions × 12 runs × slots) in a MATLAB file written by scipy, CSV by
pandas with its index column, COCO caption json; brain-diffuser's arrays as its
``prepare_nsddata.py`` writes them: float64 responses and float64 stimuli from ``np.zeros``,
fixed-width unicode captions padded with ''), only tiny: a 6×7×5 volume, sessions of 60 trials,
a few hundred 24×24 images. Responses are linear in the mean colour of
a 4×4 grid of image cells plus noise, so the ``pixels`` backbone can predict them. Every
builder returns the generating truth so tests can recompute what the loaders should give.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from scipy.io import savemat

VOLUME = (6, 7, 5)  # X, Y, Z
IMAGE_SIZE = 24
GRID = 4
BETA = "betas_fithrf_GLMdenoise_RR"
ROI_LABELS = {
    "prf-visualrois": ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"],
    "floc-faces": ["OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"],
    "floc-bodies": ["EBA", "FBA-1", "FBA-2", "mTL-bodies"],
    "floc-places": ["OPA", "PPA", "RSC"],
    "floc-words": ["OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"],
}
UNUSED_LABEL = ("floc-words", 5)  # never assigned: the loader must list mTL-words as empty


# --------------------------------------------------------------------------------------------
# Images and responses
# --------------------------------------------------------------------------------------------
def make_images(n: int, seed: int = 0, size: int = IMAGE_SIZE) -> np.ndarray:
    """Random colour grids (GRID × GRID cells) with pixel noise, uint8 (n, size, size, 3)."""
    rng = np.random.default_rng([seed, 1])
    cells = rng.uniform(20, 235, size=(n, GRID, GRID, 3))
    img = np.repeat(np.repeat(cells, size // GRID, axis=1), size // GRID, axis=2)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def image_features(images: np.ndarray) -> np.ndarray:
    n, s = len(images), images.shape[1] // GRID
    f = images.reshape(n, GRID, s, GRID, s, 3).mean((2, 4)).reshape(n, -1)
    return (f - f.mean(0)) / f.std(0)


def voxel_signal(images: np.ndarray, n_voxels: int, seed: int, pure_noise: int = 3) -> np.ndarray:
    """Unit-variance signal (n_images, n_voxels), linear in the grid colours; the last voxels are 0."""
    feats = image_features(images)
    w = np.random.default_rng([seed, 2]).standard_normal((feats.shape[1], n_voxels))
    signal = feats @ w
    signal /= signal.std(0)
    signal[:, n_voxels - pure_noise:] = 0
    return signal


# --------------------------------------------------------------------------------------------
# NSD official layout
# --------------------------------------------------------------------------------------------
@dataclass
class SubjectTruth:
    mask: np.ndarray  # nsdgeneral > 0, (X, Y, Z)
    betas: list[np.ndarray]  # per session int16 (X, Y, Z, trials)
    trial_ids: np.ndarray  # 0-based 73k id of every written trial
    trial_test: np.ndarray
    roi_volumes: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class MiniNSD:
    root: Path
    images: np.ndarray
    shared: np.ndarray  # 0-based 73k ids of the shared images
    subjects: dict[int, SubjectTruth]
    design_trials: int


def nsd_paths(root: Path, subj: int) -> dict[str, Path]:
    s = f"subj{subj:02d}"
    return {"betas": root / f"nsddata_betas/ppdata/{s}/func1pt8mm/{BETA}",
            "roi": root / f"nsddata/ppdata/{s}/func1pt8mm/roi", "label": root / f"nsddata/freesurfer/{s}/label",
            "design": root / "nsddata/experiments/nsd", "stimuli": root / "nsddata_stimuli/stimuli/nsd"}


def write_session(folder: Path, session: int, betas_xyzt: np.ndarray, fmt: str) -> Path:
    """One session as NSD ships it: HDF5 ``betas`` (trials, Z, Y, X), or NIfTI (X, Y, Z, trials)."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "hdf5":
        path = folder / f"betas_session{session:02d}.hdf5"
        with h5py.File(path, "w") as f:
            f.create_dataset("betas", data=np.ascontiguousarray(betas_xyzt.transpose(3, 2, 1, 0)))
    else:
        path = folder / f"betas_session{session:02d}.nii.gz"
        nib.save(nib.Nifti1Image(betas_xyzt, np.eye(4)), path)
    return path


def write_volume(path: Path, vol: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)


def build_nsd(root: Path, *, subjects=(1,), n_sessions: int = 4, trials_per_session: int = 60,
              design_sessions: int = 6, n_images: int = 400, n_shared: int = 20, formats=("hdf5",),
              captions: bool = True, seed: int = 0) -> MiniNSD:
    """Write a miniature NSD tree; each subject sees ``design_sessions × trials_per_session / 3``
    images three times each, of which the first ``n_sessions`` sessions are written."""
    root = Path(root)
    rng = np.random.default_rng([seed, 10])
    n_design = design_sessions * trials_per_session
    n_per_subject = n_design // 3
    images = make_images(n_images, seed)
    shared = np.sort(rng.choice(n_images, n_shared, replace=False))
    pool = rng.permutation(np.setdiff1d(np.arange(n_images), shared))
    subjectim = np.zeros((8, n_per_subject), dtype=np.int64)
    for s in range(8):  # shared first (1-based), then images of this subject only where the pool allows
        own = np.resize(np.roll(pool, s * (n_per_subject - n_shared)), n_per_subject - n_shared)
        subjectim[s] = np.r_[shared, own] + 1
    masterordering = rng.permutation(np.repeat(np.arange(1, n_per_subject + 1), 3))
    paths = nsd_paths(root, subjects[0])
    paths["design"].mkdir(parents=True, exist_ok=True)
    savemat(paths["design"] / "nsd_expdesign.mat",
            {"masterordering": masterordering[None, :].astype(np.float64), "subjectim": subjectim.astype(np.float64),
             "sharedix": (shared + 1)[None, :].astype(np.float64), "basiccnt": np.zeros((3, design_sessions)),
             "stimpattern": stimpattern(design_sessions, trials_per_session)})
    _write_stim_info(paths["design"] / "nsd_stim_info_merged.csv", n_images, shared, subjectim, masterordering)
    paths["stimuli"].mkdir(parents=True, exist_ok=True)
    with h5py.File(paths["stimuli"] / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=images, chunks=(1, IMAGE_SIZE, IMAGE_SIZE, 3))
    if captions:
        _write_coco(paths["stimuli"] / "annotations", n_images)
    truth = {s: _build_subject(root, s, images, subjectim[s - 1], masterordering, n_sessions, trials_per_session,
                               n_shared, formats, seed) for s in subjects}
    return MiniNSD(root, images, shared, truth, n_design)


def stimpattern(n_sessions: int, trials_per_session: int, runs: int = 12) -> np.ndarray:
    """sessions × runs × slots of 0/1 (1 = a stimulus trial), ``trials_per_session`` ones per session,
    each run opening with a blank slot, as NSD's runs of 75 slots hold 62 or 63 trials."""
    per_run = [len(a) for a in np.array_split(np.arange(trials_per_session), runs)]
    pattern = np.zeros((n_sessions, runs, max(per_run) + 2), dtype=np.float64)
    for r, n in enumerate(per_run):
        pattern[:, r, 1:1 + n] = 1
    return pattern


def _build_subject(root, subj, images, subjectim_row, masterordering, n_sessions, tps, n_shared, formats, seed):
    rng = np.random.default_rng([seed, 20, subj])
    paths = nsd_paths(root, subj)
    general = rng.choice([-1, 0, 1], size=VOLUME, p=(0.15, 0.25, 0.6)).astype(np.int16)
    mask = general > 0
    write_volume(paths["roi"] / "nsdgeneral.nii.gz", general)
    rois = {}
    for roi, names in ROI_LABELS.items():
        labels = np.where(general >= 0, rng.integers(0, len(names) + 1, size=VOLUME), -1).astype(np.int16)
        if roi == UNUSED_LABEL[0]:
            labels[labels == UNUSED_LABEL[1]] = 0
        write_volume(paths["roi"] / f"{roi}.nii.gz", labels)
        paths["label"].mkdir(parents=True, exist_ok=True)
        (paths["label"] / f"{roi}.mgz.ctab").write_text(
            "0 Unknown 0 0 0 0\n" + "".join(f"{i} {n} 0 0 0 0\n" for i, n in enumerate(names, 1)))
        rois[roi] = labels
    n_trials = n_sessions * tps
    order = masterordering[:n_trials]
    trial_ids = subjectim_row[order - 1] - 1
    signal = voxel_signal(images, int(np.prod(VOLUME)), seed + subj)
    noise_sd = rng.uniform(0.3, 1.5, size=VOLUME).reshape(-1)
    betas = []
    for k in range(n_sessions):
        ids = trial_ids[k * tps:(k + 1) * tps]
        gain = np.exp(rng.normal(0, 0.2, size=noise_sd.shape))
        offset = rng.normal(0, 0.5, size=noise_sd.shape)
        value = 2 + gain * (signal[ids] + noise_sd * rng.standard_normal((tps, noise_sd.size))) + offset
        raw = np.clip(np.rint(value * 300), -32768, 32767).astype(np.int16)  # (trials, X*Y*Z) in C order
        betas.append(np.ascontiguousarray(raw.reshape(tps, *VOLUME).transpose(1, 2, 3, 0)))
        for fmt in formats:
            write_session(paths["betas"], k + 1, betas[-1], fmt)
    return SubjectTruth(mask, betas, trial_ids, order <= n_shared, rois)


def _write_stim_info(path, n_images, shared, subjectim, masterordering):
    table = pd.DataFrame({"cocoId": 100000 + 7 * np.arange(n_images),
                          "cocoSplit": np.where(np.arange(n_images) % 5 == 0, "val2017", "train2017"),
                          "nsdId": np.arange(n_images), "shared1000": np.isin(np.arange(n_images), shared)})
    for s in range(8):
        reps = np.zeros((n_images, 3), dtype=np.int64)
        for trial, k in enumerate(masterordering, 1):  # 1-based trial numbers
            nsd_id = subjectim[s, k - 1] - 1
            slot = np.argmax(reps[nsd_id] == 0)
            reps[nsd_id, slot] = trial
        table[f"subject{s + 1}"] = reps[:, 0] > 0
        for r in range(3):
            table[f"subject{s + 1}_rep{r}"] = reps[:, r]
    table.to_csv(path)


def coco_caption(nsd_id: int, k: int) -> str:
    return f"Image {nsd_id} shows a coloured grid, take {k}."


def _write_coco(folder: Path, n_images: int):
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train2017", "val2017"):
        ids = [i for i in range(n_images) if (i % 5 == 0) == (split == "val2017")]
        anns = [{"id": 10 * i + k, "image_id": 100000 + 7 * i, "caption": coco_caption(i, k)}
                for i in ids for k in range(5)]
        anns += [{"id": 10 * i + 9, "image_id": 100000 + 7 * i, "caption": coco_caption(i, 0) + " "} for i in ids]
        data = {"info": {}, "images": [{"id": 100000 + 7 * i} for i in ids], "annotations": anns}
        (folder / f"captions_{split}.json").write_text(json.dumps(data))


def masked_trials(truth: SubjectTruth) -> list[np.ndarray]:
    """Per session, the raw values ÷ 300 of the nsdgeneral voxels (C order of X, Y, Z): (trials, V)."""
    return [b[truth.mask].T.astype(np.float64) / 300 for b in truth.betas]


def independent_zscored(truth: SubjectTruth) -> np.ndarray:
    """All written trials, z-scored per voxel within session in float64 (no harness code)."""
    return np.concatenate([(b - b.mean(0)) / b.std(0) for b in masked_trials(truth)])


def independent_noise_ceiling(truth: SubjectTruth) -> np.ndarray:
    """NC (%) of the test images' averages, straight from the NSD formula (Allen et al. 2022):
    noise variance = mean over images with 3 trials of the ddof=1 variance of their z-scored
    trials; ncsnr = sqrt(max(0, 1 − σ²))/σ; NC = 100·ncsnr²/(ncsnr² + mean over test images of 1/n)."""
    z, ids = independent_zscored(truth), truth.trial_ids
    uniq, counts = np.unique(ids, return_counts=True)
    noise_var = np.mean([z[ids == i].var(0, ddof=1) for i in uniq[counts == 3]], axis=0)
    snr = np.sqrt(np.clip(1 - noise_var, 0, None)) / np.sqrt(noise_var)
    test_counts = counts[np.isin(uniq, ids[truth.trial_test])]
    return 100 * snr ** 2 / (snr ** 2 + np.mean(1 / test_counts))


# --------------------------------------------------------------------------------------------
# brain-diffuser preprocessed layout (derived from a miniature NSD, as its prepare script does)
# --------------------------------------------------------------------------------------------
def curated_annots(n_images: int) -> np.ndarray:
    """Like ``COCO_73k_annots_curated.npy``: fixed-width unicode, images × 5, '' where an image has fewer."""
    return np.array([[coco_caption(i, k) if k < 5 - (i % 7 == 3) else "" for k in range(5)] for i in range(n_images)])


def curated_captions(nsd_id: int) -> list[str]:
    return [c for c in curated_annots(nsd_id + 1)[nsd_id] if c]


def build_brain_diffuser(nsd: MiniNSD, subj: int = 1, root: Path | None = None, captions: bool = True) -> dict:
    """``processed_data/subjXX/nsd_{train,test}_{fmriavg_nsdgeneral,stim,cap}_subN.npy`` from ``nsd``'s
    written sessions, step by step as brain-diffuser's ``data/prepare_nsddata.py``: the nsdgeneral
    voxels of every trial (raw ×300 units), images of each split in order of first appearance,
    ``np.zeros`` float64 arrays filled row by row (responses = mean of the image's trials, stimuli
    = the imgBrick image), captions copied from the curated annotations with their dtype."""
    truth = nsd.subjects[subj]
    folder = Path(root or nsd.root) / "processed_data" / f"subj{subj:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    fmri_trials = np.concatenate([b[truth.mask].T.astype(np.float32) for b in truth.betas])  # get_fdata, ×300
    annots = curated_annots(len(nsd.images))
    out = {}
    for split, sel in (("train", ~truth.trial_test), ("test", truth.trial_test)):
        trials_of: dict[int, list[int]] = {}
        for trial in np.flatnonzero(sel):  # dict insertion order = first appearance
            trials_of.setdefault(int(truth.trial_ids[trial]), []).append(trial)
        ids = np.array(list(trials_of), dtype=np.int64)
        fmri = np.zeros((len(ids), fmri_trials.shape[1]))
        stim = np.zeros((len(ids), *nsd.images.shape[1:]))
        caps = np.empty((len(ids), 5), dtype=annots.dtype)
        for i, nsd_id in enumerate(ids):
            stim[i] = nsd.images[nsd_id]
            fmri[i] = fmri_trials[sorted(trials_of[nsd_id])].mean(0)
            caps[i] = annots[nsd_id]
        np.save(folder / f"nsd_{split}_fmriavg_nsdgeneral_sub{subj}.npy", fmri)
        np.save(folder / f"nsd_{split}_stim_sub{subj}.npy", stim)
        if captions:
            np.save(folder / f"nsd_{split}_cap_sub{subj}.npy", caps)
        out[split] = (ids, fmri)
    return out


# --------------------------------------------------------------------------------------------
# Algonauts 2023 challenge layout
# --------------------------------------------------------------------------------------------
def build_algonauts(root: Path, *, subjects=(1,), n_images: int = 160, n_test_images: int = 12,
                    n_vertices=(40, 30), id_range: int = 73000, seed: int = 0) -> dict:
    """``subjXX/training_split/{training_fmri,training_images}``, ``test_split/test_images``,
    ``roi_masks`` (challenge-space label arrays + ``mapping_<roi>.npy`` dicts)."""
    root = Path(root)
    rng = np.random.default_rng([seed, 30])
    images = make_images(n_images + n_test_images, seed + 5)
    nsd_ids = np.sort(rng.choice(id_range, n_images + n_test_images, replace=False))
    out = {}
    for subj in subjects:
        d = root / f"subj{subj:02d}"
        train_ids = nsd_ids[:n_images]
        signal = voxel_signal(images[:n_images], sum(n_vertices), seed + subj)
        noise = rng.uniform(0.3, 1.0, sum(n_vertices)) * rng.standard_normal((n_images, sum(n_vertices)))
        fmri = (signal + noise).astype(np.float32)
        fmri = (fmri - fmri.mean(0)) / fmri.std(0)
        (d / "training_split/training_fmri").mkdir(parents=True, exist_ok=True)
        np.save(d / "training_split/training_fmri/lh_training_fmri.npy", fmri[:, :n_vertices[0]])
        np.save(d / "training_split/training_fmri/rh_training_fmri.npy", fmri[:, n_vertices[0]:])
        for split, folder, ids, imgs in (("train", "training_split/training_images", train_ids, images[:n_images]),
                                         ("test", "test_split/test_images", nsd_ids[n_images:], images[n_images:])):
            (d / folder).mkdir(parents=True, exist_ok=True)
            for i, (nsd_id, img) in enumerate(zip(ids, imgs), 1):
                Image.fromarray(img).save(d / folder / f"{split}-{i:04d}_nsd-{nsd_id:05d}.png")
        roi_dir = d / "roi_masks"
        roi_dir.mkdir(parents=True, exist_ok=True)
        for roi, names in ROI_LABELS.items():
            np.save(roi_dir / f"mapping_{roi}.npy", {0: "Unknown", **{i: n for i, n in enumerate(names, 1)}},
                    allow_pickle=True)
            for hemi, n in zip(("lh", "rh"), n_vertices):
                np.save(roi_dir / f"{hemi}.{roi}_challenge_space.npy",
                        rng.integers(0, len(names) + 1, size=n).astype(np.float64))
        for hemi, n in zip(("lh", "rh"), n_vertices):
            np.save(roi_dir / f"{hemi}.all-vertices_fsaverage_space.npy", np.r_[np.ones(n), np.zeros(5)])
        out[subj] = {"ids": train_ids, "fmri": fmri, "test_ids": nsd_ids[n_images:], "images": images}
    return out
