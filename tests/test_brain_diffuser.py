"""The brain-diffuser processed_data loader on a miniature built from a miniature NSD."""
import numpy as np
import pytest

from conftest import tiny_config
from brainharness.datasets.brain_diffuser import BrainDiffuser
from brainharness.errors import DataError
from brainharness.runner import Runner
from nsd_layouts import build_brain_diffuser, build_nsd, coco_caption, independent_noise_ceiling


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
    assert np.array_equal(ds.stimuli.images(test_ids[:3]), nsd.images[test_ids[:3]])
    assert ds.stimuli.captions[int(test_ids[0])] == [coco_caption(int(test_ids[0]), k) for k in range(5)]
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
        return "nsd_train_stim_sub1.npy", "H, W, 3) uint8 images, got ("
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


@pytest.mark.parametrize("case", ["missing_stim", "row_mismatch", "voxel_mismatch", "pickled", "shuffled_images",
                                  "missing_captions_required"])
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
    assert ds.stimuli.captions == {} and info["captions_info"]["train"].startswith("unavailable")
    again = BrainDiffuser(root=nsd.root, cache_dir=tmp_path / "cache").load()
    assert again.info["cache"]["subj01"]["status"] == "hit"
    assert np.array_equal(again.subject("subj01").test.averaged, ds.subject("subj01").test.averaged)
