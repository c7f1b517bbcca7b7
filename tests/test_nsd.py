"""The NSD official-layout loader on miniature copies of the layout (see nsd_layouts.py)."""
import json
import os

import h5py
import numpy as np
import pytest

from conftest import tiny_config
from brainharness.data import Dataset, Responses, Subject
from brainharness.errors import ConfigError, DataError
from brainharness.datasets.nsd import NSD
from brainharness.datasets.nsd_common import drop_columns
from brainharness.runner import Runner
from nsd_layouts import (BETA, UNUSED_LABEL, build_nsd, coco_caption, independent_noise_ceiling, independent_zscored,
                         nsd_paths, write_session, write_volume)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return build_nsd(tmp_path_factory.mktemp("nsd"), subjects=(1, 2), formats=("hdf5", "nifti"))


@pytest.fixture(scope="module")
def loaded(mini):
    return NSD(root=mini.root, subject=[1, 2], format="hdf5", cache=False).load()


def fresh(tmp_path, **kw):
    return build_nsd(tmp_path / "nsd", **kw)


def one_line_error(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_trials_images_and_splits_follow_the_design(mini, loaded):
    assert isinstance(loaded, Dataset) and set(loaded.subjects) == {"subj01", "subj02"}
    for k, name in ((1, "subj01"), (2, "subj02")):
        truth, s = mini.subjects[k], loaded.subject(name)
        assert s.n_voxels == truth.mask.sum()
        assert np.array_equal(s.test.trial_stim, truth.trial_ids[truth.trial_test])  # chronological within split
        assert np.array_equal(s.train.trial_stim, truth.trial_ids[~truth.trial_test])
        assert set(s.test.stim_ids) <= set(mini.shared) and not set(s.train.stim_ids) & set(mini.shared)
        assert np.array_equal(s.train.stim_ids, np.unique(truth.trial_ids[~truth.trial_test]))
    # images are read lazily from imgBrick, row = 0-based 73k id
    ids = loaded.subject("subj01").test.stim_ids[:5]
    assert np.array_equal(loaded.stimuli.images(ids), mini.images[ids])
    assert loaded.stimuli.fingerprint.startswith("nsd-imgBrick-")
    info = loaded.info["subjects"]["subj01"]
    assert info["sessions"] == [1, 2, 3, 4] and info["sessions_in_nsd"] == 40 and info["formats"] == ["hdf5"]
    assert loaded.info["beta_version"] == BETA and loaded.info["root"] == str(mini.root)


def test_zscored_trials_and_averages_match_an_independent_computation(mini, loaded):
    truth, s = mini.subjects[1], loaded.subject("subj01")
    z = independent_zscored(truth)
    np.testing.assert_allclose(s.test.trials, z[truth.trial_test], atol=2e-5)
    np.testing.assert_allclose(s.train.trials, z[~truth.trial_test], atol=2e-5)
    for r, sel in ((s.train, ~truth.trial_test), (s.test, truth.trial_test)):
        expect = np.stack([z[sel][truth.trial_ids[sel] == i].mean(0) for i in r.stim_ids])
        np.testing.assert_allclose(r.averaged, expect, atol=2e-5)


def test_noise_ceiling_matches_an_independent_computation(mini, loaded):
    for k, name in ((1, "subj01"), (2, "subj02")):
        s = loaded.subject(name)
        counts = s.test.repeats()
        assert set(counts) > {3}, "the miniature must exercise the mixed-repeat correction"
        expect = independent_noise_ceiling(mini.subjects[k])
        np.testing.assert_allclose(s.noise_ceiling / 100, expect / 100, rtol=0, atol=1e-6)
        assert "mixed-repeat" in s.nc_source


def test_hdf5_and_nifti_give_the_same_subject(mini, loaded):
    nifti = NSD(root=mini.root, subject=1, format="nifti", cache=False).load().subject("subj01")
    h5 = loaded.subject("subj01")
    np.testing.assert_allclose(nifti.train.trials, h5.train.trials, atol=1e-6)
    np.testing.assert_allclose(nifti.noise_ceiling, h5.noise_ceiling, atol=1e-4)
    assert {k: v.tolist() for k, v in nifti.rois.items()} == {k: v.tolist() for k, v in h5.rois.items()}


def test_rois_standard_names_unions_and_empty_ones(mini, loaded):
    s, truth = loaded.subject("subj01"), mini.subjects[1]
    labels = {roi: vol[truth.mask] for roi, vol in truth.roi_volumes.items()}
    assert np.array_equal(s.rois["V1v"], labels["prf-visualrois"] == 1)
    assert np.array_equal(s.rois["V1"], np.isin(labels["prf-visualrois"], (1, 2)))
    assert np.array_equal(s.rois["FFA"], np.isin(labels["floc-faces"], (2, 3)))
    assert np.array_equal(s.rois["FBA"], np.isin(labels["floc-bodies"], (2, 3)))
    assert np.array_equal(s.rois["VWFA"], np.isin(labels["floc-words"], (2, 3)))
    assert s.rois["nsdgeneral"].all()
    assert {"V2", "V3", "hV4", "EBA", "OFA", "OPA", "PPA", "OWFA", "RSC"} <= set(s.rois)
    assert "mTL-words" not in s.rois and loaded.info["subjects"]["subj01"]["rois_empty"] == ["mTL-words"]
    assert UNUSED_LABEL == ("floc-words", 5)


def test_ctab_names_are_read_and_defaults_used_without_it(tmp_path):
    m = fresh(tmp_path, n_sessions=3)
    label = nsd_paths(m.root, 1)["label"]
    (label / "floc-places.mgz.ctab").write_text("0 Unknown 0 0 0 0\n1 OPA 1 1 1 0\n2 PPA 1 1 1 0\n3 RSC-x 1 1 1 0\n")
    (label / "floc-faces.mgz.ctab").unlink()
    ds = NSD(root=m.root, cache=False).load()
    assert "RSC-x" in ds.subject("subj01").rois and "RSC" not in ds.subject("subj01").rois
    roi_labels = ds.info["subjects"]["subj01"]["roi_labels"]
    assert roi_labels["floc-faces"] == "default labels" and roi_labels["floc-places"] == "floc-places.mgz.ctab"


def test_captions_through_the_stimulus_table(mini, loaded, tmp_path):
    i = int(loaded.subject("subj01").test.stim_ids[0])
    assert loaded.stimuli.captions[i] == [coco_caption(i, k) for k in range(5)]  # de-duplicated, stripped
    assert loaded.info["captions"]["status"] == "loaded" and loaded.info["captions"]["n_without_captions"] == 0
    m = fresh(tmp_path, n_sessions=3, captions=False)
    ds = NSD(root=m.root, cache=False).load()
    assert ds.info["captions"]["status"] == "read on first use"  # nothing opened until a task asks
    assert ds.stimuli.captions == {} and "captions_train2017.json" not in str(ds.info)  # annotations folder missing
    assert ds.info["captions"]["status"].startswith("unavailable")
    with pytest.raises(DataError) as e:
        NSD(root=m.root, captions="required", cache=False).load()
    one_line_error(e, "annotations", "not found", "captions='required'")


def test_captions_are_cached_and_follow_their_sources(mini, loaded, tmp_path):
    ds = NSD(root=mini.root, subject=[1, 2], format="hdf5", cache_dir=tmp_path).load()
    assert dict(ds.stimuli.captions) == dict(loaded.stimuli.captions)  # what a caption task sees is unchanged
    (cached,) = (tmp_path / "datasets").glob("captions-*.json")
    stored = json.loads(cached.read_text())
    assert stored["captions"][str(ds.stimuli.ids[0])] == loaded.stimuli.captions[int(ds.stimuli.ids[0])]
    again = NSD(root=mini.root, subject=[1, 2], format="hdf5", cache_dir=tmp_path).load()
    assert dict(again.stimuli.captions) == dict(loaded.stimuli.captions)
    assert again.info["captions"]["status"] == "loaded"
    assert again.info["source_signature"]["captions"] == ds.info["source_signature"]["captions"]
    stim_info = nsd_paths(mini.root, 1)["design"] / "nsd_stim_info_merged.csv"
    os.utime(stim_info, ns=(stim_info.stat().st_atime_ns, stim_info.stat().st_mtime_ns + 10**9))
    changed = NSD(root=mini.root, subject=[1, 2], format="hdf5", cache_dir=tmp_path).load()
    assert changed.info["source_signature"]["captions"] != ds.info["source_signature"]["captions"]
    assert changed.info["source_signature"]["subj01"] == ds.info["source_signature"]["subj01"]  # subject not rebuilt


def test_subject_cache_reopens_and_follows_source_changes(tmp_path):
    m = fresh(tmp_path, n_sessions=3)
    first = NSD(root=m.root, cache_dir=tmp_path / "cache").load()
    again = NSD(root=m.root, cache_dir=tmp_path / "cache").load()
    assert first.info["cache"]["subj01"]["status"] == "written" and again.info["cache"]["subj01"]["status"] == "hit"
    a, b = first.subject("subj01"), again.subject("subj01")
    for split in ("train", "test"):
        for field in ("stim_ids", "averaged", "trials", "trial_stim"):
            assert np.array_equal(getattr(getattr(a, split), field), getattr(getattr(b, split), field))
    assert np.array_equal(a.noise_ceiling, b.noise_ceiling) and a.nc_source == b.nc_source
    assert a.rois.keys() == b.rois.keys() and first.stimuli.captions == again.stimuli.captions
    assert first.info["subjects"] == again.info["subjects"]
    session = nsd_paths(m.root, 1)["betas"] / "betas_session02.hdf5"
    os.utime(session, ns=(session.stat().st_atime_ns, session.stat().st_mtime_ns + 10**9))
    assert NSD(root=m.root, cache_dir=tmp_path / "cache").load().info["cache"]["subj01"]["status"] == "written"
    assert len(list((tmp_path / "cache/datasets").glob("*.tmp-*"))) == 0


def test_incomplete_subject_and_first_n_sessions(tmp_path):
    m = fresh(tmp_path, n_sessions=3)
    ds = NSD(root=m.root, sessions=2, cache=False).load()
    s = ds.subject("subj01")
    assert ds.info["subjects"]["subj01"]["sessions"] == [1, 2]
    assert len(s.train.trial_stim) + len(s.test.trial_stim) == 120
    assert s.noise_ceiling is not None or s.nc_source.startswith("unavailable")
    with pytest.raises(DataError) as e:
        NSD(root=m.root, sessions=5, cache=False).load()
    one_line_error(e, "betas_session04.hdf5", "missing session")


def _mutations(m):
    p = nsd_paths(m.root, 1)
    truth = m.subjects[1]

    def missing_session():
        (p["betas"] / "betas_session02.hdf5").unlink()
        return "betas_session02.hdf5", "missing session"

    def wrong_shape():
        write_session(p["betas"], 3, truth.betas[2][:, :-1], "hdf5")
        return "betas_session03.hdf5", "does not match nsdgeneral.nii.gz"

    def mask_mismatch():
        write_volume(p["roi"] / "nsdgeneral.nii.gz", np.ones((5, 7, 5), np.int16))
        return "betas_session01.hdf5", "(6, 7, 5) does not match nsdgeneral.nii.gz (5, 7, 5)"

    def roi_mismatch():
        write_volume(p["roi"] / "floc-faces.nii.gz", np.ones((6, 7, 4), np.int16))
        return "floc-faces.nii.gz", "does not match nsdgeneral"

    def no_betas_key():
        with h5py.File(p["betas"] / "betas_session01.hdf5", "w") as f:
            f["data"] = np.zeros(3)
        return "betas_session01.hdf5", "no 'betas' dataset"

    def corrupt_file():
        (p["betas"] / "betas_session02.hdf5").write_bytes(b"not hdf5")
        return "betas_session02.hdf5", "unreadable"

    def no_design():
        (p["design"] / "nsd_expdesign.mat").unlink()
        return "nsd_expdesign.mat", "not found"

    def no_images():
        (p["stimuli"] / "nsd_stimuli.hdf5").unlink()
        return "nsd_stimuli.hdf5", "not found"

    def wrong_beta_version():
        p["betas"].rename(p["betas"].with_name("betas_assumehrf"))
        return BETA, "beta versions here: betas_assumehrf"

    return locals()


@pytest.mark.parametrize("case", ["missing_session", "wrong_shape", "mask_mismatch", "roi_mismatch", "no_betas_key",
                                  "corrupt_file", "no_design", "no_images", "wrong_beta_version"])
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, case):
    m = fresh(tmp_path, n_sessions=3)
    needles = _mutations(m)[case]()
    with pytest.raises(DataError) as e:
        NSD(root=m.root, cache=False).load()
    one_line_error(e, *needles)


def test_nan_voxels_are_dropped_and_recorded_or_raise(tmp_path):
    m = fresh(tmp_path, n_sessions=3)
    p, truth = nsd_paths(m.root, 1), m.subjects[1]
    betas = truth.betas[1].astype(np.float32) / 300
    xyz = np.argwhere(truth.mask)[[0, 5]]
    betas[tuple(xyz.T)] = np.nan
    (p["betas"] / "betas_session02.hdf5").unlink()
    write_session(p["betas"], 2, betas, "nifti")  # float NIfTI, as stored values
    ds = NSD(root=m.root, cache=False).load()
    s, info = ds.subject("subj01"), ds.info["subjects"]["subj01"]
    assert s.n_voxels == truth.mask.sum() - 2 and np.isfinite(s.train.trials).all()
    assert info["nan_voxels"] == {"handling": "drop", "dropped": 2, "files": ["betas_session02.nii.gz"]}
    assert info["formats"] == ["hdf5", "nifti"] and all(v.shape == (s.n_voxels,) for v in s.rois.values())
    z = np.delete(independent_zscored(truth), [0, 5], axis=1)
    np.testing.assert_allclose(s.test.trials, z[truth.trial_test], atol=2e-5)
    with pytest.raises(DataError) as e:
        NSD(root=m.root, nan_voxels="error", cache=False).load()
    one_line_error(e, "betas_session02.nii.gz", "2 nsdgeneral voxels have NaN/inf")


@pytest.mark.parametrize("params, needle", [
    ({"subject": 9}, "subject must be 1..8"), ({"sessions": 0}, "sessions must be"),
    ({"format": "mat"}, "format must be one of"), ({"nan_voxels": "zero"}, "nan_voxels must be one of"),
    ({"subjetc": 1}, "nsd: unknown parameter 'subjetc'; did you mean 'subject'"),
])
def test_bad_parameters(mini, params, needle):
    with pytest.raises(ConfigError, match=needle):
        NSD(root=mini.root, **params)


def test_drop_columns_compacts_in_place():
    a = np.arange(35, dtype=np.float32).reshape(7, 5)
    expect = a[:, [0, 2, 3]].copy()
    out = drop_columns(a, np.array([1, 0, 1, 1, 0], bool), block_rows=2)
    assert np.array_equal(out, expect) and np.shares_memory(out, a) and out.flags.c_contiguous


def test_encoding_runs_end_to_end_with_a_positive_score(mini, tmp_path):
    cfg = tiny_config(tmp_path, dataset={"name": "nsd", "root": str(mini.root), "subject": 1},
                      backbones=[{"name": "pixels", "size": 8}], tasks=[{"name": "encoding", "nc_threshold": 5}])
    (rec,) = Runner(cfg, progress=False).run()
    assert rec["status"] == "complete" and rec["main_score"] == "median_nc_r2"
    assert rec["scores"]["median_nc_r2"] > 20 and rec["scores"]["median_r2"] > 0.1
    assert rec["dataset"]["info"]["layout"] == "nsd-official" and "mixed-repeat" in rec["dataset"]["noise_ceiling"]
    assert {r["roi"] for r in rec["tables"]["per_roi"]} >= {"V1", "FFA", "nsdgeneral"}


def test_one_data_model_with_the_synthetic_dataset(loaded):
    from brainharness.datasets.synthetic import SyntheticDataset

    synth = SyntheticDataset(n_train=20, n_test=10, n_voxels=20, image_size=16).load()
    for ds in (synth, loaded):
        s = next(iter(ds.subjects.values()))
        assert isinstance(ds, Dataset) and isinstance(s, Subject) and isinstance(s.test, Responses)
        assert s.test.trials is not None and s.noise_ceiling.shape == (s.n_voxels,)
        assert s.train.averaged.dtype == np.float32 and "nsdgeneral" in s.rois
