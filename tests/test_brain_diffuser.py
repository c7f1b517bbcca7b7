"""The brain-diffuser processed_data loader on a miniature built from a miniature NSD the way
brain-diffuser's ``data/prepare_nsddata.py`` writes it (float64 stimuli and responses)."""
import numpy as np
import pytest

from conftest import tiny_config
from brainharness.datasets.brain_diffuser import BrainDiffuser, NpyImageReader
from brainharness.errors import DataError
from brainharness.runner import Runner
from nsd_layouts import build_brain_diffuser, build_nsd, curated_captions, independent_noise_ceiling


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    nsd = build_nsd(tmp_path_factory.mktemp("bd") / "data")
    return nsd, build_brain_diffuser(nsd)


def folder(nsd):
    return nsd.root / "processed_data" / "subj01"


def test_ids_from_the_design_and_train_statistics_zscore(mini):
    nsd, truth = mini
    ds = BrainDiffuser(root=nsd.root, cache=False).load()
    s = ds.subject("subj01")
    train_ids, train_raw = truth["train"]
    test_ids, test_raw = truth["test"]
    assert np.array_equal(s.train.stim_ids, train_ids) and np.array_equal(s.test.stim_ids, test_ids)
    mu, sd = (train_raw / 300).mean(0), (train_raw / 300).std(0, ddof=1)
    np.testing.assert_allclose(s.train.averaged, (train_raw / 300 - mu) / sd, atol=1e-5)
    np.testing.assert_allclose(s.test.averaged, (test_raw / 300 - mu) / sd, atol=1e-5)
    assert np.load(folder(nsd) / "nsd_test_stim_sub1.npy", mmap_mode="r").dtype == np.float64  # as the script writes
    images = ds.stimuli.images(test_ids[:3])
    assert images.dtype == np.uint8 and np.array_equal(images, nsd.images[test_ids[:3]])
    short = next(int(i) for i in train_ids if i % 7 == 3)  # its curated row has 4 captions and one ''
    assert ds.stimuli.captions[short] == curated_captions(short) and len(curated_captions(short)) == 4
    assert ds.stimuli.captions[int(test_ids[0])] == curated_captions(int(test_ids[0]))
    assert ds.info["captions"]["status"] == "loaded"
    assert "first-appearance" in ds.info["ids"] and s.rois["nsdgeneral"].all()


def test_without_trials_the_noise_ceiling_is_reported_unavailable(mini, tmp_path):
    nsd, _ = mini
    cfg = tiny_config(tmp_path, dataset={"name": "nsd-brain-diffuser", "root": str(nsd.root)},
                      backbones=[{"name": "pixels", "size": 8}], tasks=[{"name": "encoding"}])
    (rec,) = Runner(cfg, progress=False).run()
    assert rec["status"] == "complete" and rec["main_score"] == "median_r2" and rec["scores"]["median_r2"] > 0.1
    assert rec["dataset"]["noise_ceiling"].startswith("unavailable: the brain-diffuser layout has only")
    assert "median_nc_r2" not in rec["scores"]


def test_trials_from_the_official_layout_give_the_nsd_noise_ceiling(mini, tmp_path):
    nsd, _ = mini
    ds = BrainDiffuser(root=nsd.root, trials_root=nsd.root, trials_sessions=4, cache_dir=tmp_path).load()
    s = ds.subject("subj01")
    np.testing.assert_allclose(s.noise_ceiling / 100, independent_noise_ceiling(nsd.subjects[1]) / 100, atol=1e-6)
    assert len(s.test.trial_stim) == nsd.subjects[1].trial_test.sum() and "NSD single trials" in s.nc_source
    dataset = {"name": "nsd-brain-diffuser", "root": str(nsd.root), "trials_root": str(nsd.root), "trials_sessions": 4}
    cfg = tiny_config(tmp_path, dataset=dataset,
                      backbones=[{"name": "pixels", "size": 8}], tasks=[{"name": "encoding", "nc_threshold": 5}])
    (rec,) = Runner(cfg, progress=False).run()
    assert rec["main_score"] == "median_nc_r2" and rec["scores"]["median_nc_r2"] > 20
    with pytest.raises(DataError, match="first 3 sessions hold other train images"):
        BrainDiffuser(root=nsd.root, trials_root=nsd.root, trials_sessions=3, cache=False).load()


def test_positional_ids_without_a_design(mini, tmp_path):
    nsd, truth = mini
    build_brain_diffuser(nsd, root=tmp_path)
    ds = BrainDiffuser(root=tmp_path / "processed_data", cache=False).load()
    s = ds.subject("subj01")
    n = len(truth["train"][0])
    assert np.array_equal(s.train.stim_ids, 100000 + np.arange(n)) and s.test.stim_ids[0] == 100000 + n
    assert ds.info["ids"].startswith("positional")
    assert np.array_equal(ds.stimuli.images(s.test.stim_ids[:2]), nsd.images[truth["test"][0][:2]])


def _break(root, case):
    d = root / "processed_data" / "subj01"
    if case == "missing_stim":
        (d / "nsd_test_stim_sub1.npy").unlink()
        return "nsd_test_stim_sub1.npy", "not found"
    if case == "row_mismatch":
        np.save(d / "nsd_train_stim_sub1.npy", np.load(d / "nsd_train_stim_sub1.npy")[:-1])
        return "nsd_train_stim_sub1.npy", "H, W, 3) images (one per response row), got ("
    if case == "voxel_mismatch":
        np.save(d / "nsd_test_fmriavg_nsdgeneral_sub1.npy", np.load(d / "nsd_test_fmriavg_nsdgeneral_sub1.npy")[:, :-1])
        return "nsd_test_fmriavg_nsdgeneral_sub1.npy", "123 voxels"
    if case == "pickled":
        np.save(d / "nsd_train_fmriavg_nsdgeneral_sub1.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return "nsd_train_fmriavg_nsdgeneral_sub1.npy", "not a plain numpy array"
    if case == "shuffled_images":
        np.save(d / "nsd_test_stim_sub1.npy", np.load(d / "nsd_test_stim_sub1.npy")[::-1])
        return "nsd_test_stim_sub1.npy", "expdesign=False"
    if case == "missing_captions_required":
        (d / "nsd_train_cap_sub1.npy").unlink()
        return "nsd_train_cap_sub1.npy", "captions='required'"
    if case == "missing_fmri":
        (d / "nsd_train_fmriavg_nsdgeneral_sub1.npy").unlink()
        return "nsd_train_fmriavg_nsdgeneral_sub1.npy", "not found (brain-diffuser's averaged responses)"
    stim = d / "nsd_train_stim_sub1.npy"
    if case in ("fraction_stimuli", "range_stimuli", "nan_stimuli"):
        images = np.load(stim)
        images[0, 3, 4, 1] = {"fraction_stimuli": 12.5, "range_stimuli": 256.0, "nan_stimuli": np.nan}[case]
        np.save(stim, images)
        return "nsd_train_stim_sub1.npy", "row 0 holds", "not a whole number in 0..255"
    if case == "bool_stimuli":
        np.save(stim, np.load(stim) > 100)
        return "nsd_train_stim_sub1.npy", "images of type bool, expected values 0–255"
    if case == "complex_responses":
        fmri = d / "nsd_test_fmriavg_nsdgeneral_sub1.npy"
        np.save(fmri, np.load(fmri).astype(np.complex128))
        return "nsd_test_fmriavg_nsdgeneral_sub1.npy", "responses of type complex128, expected real numbers"
    if case == "fmri_3d":
        fmri = d / "nsd_train_fmriavg_nsdgeneral_sub1.npy"
        np.save(fmri, np.load(fmri)[:, :, None])
        return "nsd_train_fmriavg_nsdgeneral_sub1.npy", "expected images × voxels, got shape"
    if case == "nsdgeneral_voxels":
        for split in ("train", "test"):
            fmri = d / f"nsd_{split}_fmriavg_nsdgeneral_sub1.npy"
            np.save(fmri, np.load(fmri)[:, 1:])
        return "nsd_train_fmriavg_nsdgeneral_sub1.npy", "123 voxels, but", "nsdgeneral.nii.gz has 124 voxels > 0"
    caps = d / "nsd_test_cap_sub1.npy"
    if case == "object_captions":
        np.save(caps, np.load(caps).astype(object), allow_pickle=True)
        return "nsd_test_cap_sub1.npy", "not a plain numpy array"
    if case == "caption_rows":
        np.save(caps, np.load(caps)[:-1])
        return "nsd_test_cap_sub1.npy", "captions of shape (19, 5), expected (20 images, captions)"
    if case == "caption_numbers":
        np.save(caps, np.zeros((20, 5)))
        return "nsd_test_cap_sub1.npy", "captions of type float64; brain-diffuser writes fixed-width strings"


@pytest.mark.parametrize("case", ["missing_stim", "row_mismatch", "voxel_mismatch", "pickled", "shuffled_images",
                                  "missing_captions_required", "missing_fmri", "fraction_stimuli", "range_stimuli",
                                  "nan_stimuli", "bool_stimuli", "complex_responses", "fmri_3d", "nsdgeneral_voxels",
                                  "object_captions", "caption_rows", "caption_numbers"])
def test_bad_files_give_one_line_errors(tmp_path, case):
    nsd = build_nsd(tmp_path / "data", n_sessions=3)
    build_brain_diffuser(nsd)
    needles = _break(nsd.root, case)
    with pytest.raises(DataError) as e:
        BrainDiffuser(root=nsd.root, cache=False, captions="required").load()
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_nan_voxels_dropped_and_missing_captions_recorded(tmp_path):
    nsd = build_nsd(tmp_path / "data", n_sessions=3)
    build_brain_diffuser(nsd, captions=False)
    path = nsd.root / "processed_data/subj01/nsd_test_fmriavg_nsdgeneral_sub1.npy"
    fmri = np.load(path)
    fmri[3, 7] = np.nan
    np.save(path, fmri)
    ds = BrainDiffuser(root=nsd.root, cache_dir=tmp_path / "cache").load()
    info = ds.info["subjects"]["subj01"]
    assert ds.subject("subj01").n_voxels == fmri.shape[1] - 1 and info["nan_voxels"]["dropped"] == 1
    assert ds.stimuli.captions == {} and ds.info["captions"]["status"].startswith("unavailable")
    again = BrainDiffuser(root=nsd.root, cache_dir=tmp_path / "cache").load()
    assert again.info["cache"]["subj01"]["status"] == "hit"
    assert np.array_equal(again.subject("subj01").test.averaged, ds.subject("subj01").test.averaged)


def test_bad_values_in_a_later_row_are_named_when_that_row_is_read(tmp_path):
    nsd = build_nsd(tmp_path / "data", n_sessions=3)
    ids = build_brain_diffuser(nsd)["train"][0]
    stim = folder(nsd) / "nsd_train_stim_sub1.npy"
    images = np.load(stim)
    images[17, 0, 0, 0] = 0.25
    np.save(stim, images)
    ds = BrainDiffuser(root=nsd.root, cache=False).load()  # row 0 is fine: the load goes through
    assert np.array_equal(ds.stimuli.images(ids[:17]), nsd.images[ids[:17]])
    with pytest.raises(DataError) as e:
        ds.stimuli.images(ids[15:20])
    assert str(e.value) == f"{stim}: row 17 holds 0.25, not a whole number in 0..255 (image values)"


def test_images_are_converted_a_few_rows_at_a_time(tmp_path):
    path = tmp_path / "stim.npy"
    images = np.random.default_rng(0).integers(0, 256, (40, 6, 6, 3)).astype(np.float64)
    np.save(path, images)
    rows = np.array([39, 0, 17, 3, 3])
    reader = NpyImageReader([path], np.zeros(40, dtype=np.int64), np.arange(40), (6, 6, 3))
    reader.CHUNK = 2
    out = reader(rows)
    assert out.dtype == np.uint8 and np.array_equal(out, images[rows].astype(np.uint8))


@pytest.mark.parametrize("case", ["object_captions", "caption_rows"])
def test_broken_captions_fail_only_what_needs_captions(tmp_path, case):
    nsd = build_nsd(tmp_path / "data", n_sessions=3)
    build_brain_diffuser(nsd)
    needles = _break(nsd.root, case)
    ds = BrainDiffuser(root=nsd.root, cache=False).load()  # captions: auto, read on first use
    assert ds.subject("subj01").n_voxels == nsd.subjects[1].mask.sum()
    with pytest.raises(DataError) as e:
        len(ds.stimuli.captions)
    assert all(n in str(e.value) for n in needles), str(e.value)


def test_data_check_names_bad_stimuli_as_the_loader_does(tmp_path):
    from brainharness.datasets.datacheck import check_path

    nsd = build_nsd(tmp_path / "data", n_sessions=3)
    build_brain_diffuser(nsd)
    result = check_path(nsd.root)
    assert result["ok"] and [r["layout"] for r in result["layouts"]] == ["nsd", "nsd-brain-diffuser"]
    _break(nsd.root, "fraction_stimuli")
    with pytest.raises(DataError) as e:
        BrainDiffuser(root=nsd.root, cache=False).load()
    assert check_path(nsd.root)["layouts"][1]["problems"] == [str(e.value)]
