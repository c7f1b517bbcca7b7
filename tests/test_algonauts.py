"""The Algonauts 2023 loader on a miniature challenge folder."""
import os

import numpy as np
import pytest

from conftest import tiny_config
from brainharness.datasets.algonauts import Algonauts2023
from brainharness.errors import ConfigError, DataError
from brainharness.runner import Runner
from nsd_layouts import build_algonauts, build_nsd, coco_caption


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("alg")
    return root, build_algonauts(root, subjects=(1, 2))


def test_ids_responses_and_held_out_split(mini):
    root, truth = mini
    ds = Algonauts2023(root=root, subject=[1, 2], cache=False).load()
    s, t = ds.subject("subj01"), truth[1]
    ids = np.r_[s.train.stim_ids, s.test.stim_ids]
    assert sorted(ids) == sorted(t["ids"]) and len(s.test.stim_ids) == 16  # 10 % of 160
    rows = np.searchsorted(t["ids"], s.test.stim_ids)  # file names carry the 0-based 73k id
    np.testing.assert_array_equal(s.test.averaged, t["fmri"][rows])
    assert np.array_equal(ds.stimuli.images(s.test.stim_ids[:2]), t["images"][rows[:2]])
    again = Algonauts2023(root=root, cache=False).load().subject("subj01")
    assert np.array_equal(again.test.stim_ids, s.test.stim_ids)  # deterministic
    other = Algonauts2023(root=root, split_seed=1, test_fraction=0.25, cache=False).load()
    assert len(other.subject("subj01").test.stim_ids) == 40
    assert "no public test fMRI" in ds.info["subjects"]["subj01"]["test_split"]
    assert s.noise_ceiling is None and s.nc_source.startswith("unavailable")


def test_rois_from_mapping_files(mini):
    root, _ = mini
    s = Algonauts2023(root=root, cache=False).load().subject("subj01")
    labels = np.r_[np.load(root / "subj01/roi_masks/lh.prf-visualrois_challenge_space.npy"),
                   np.load(root / "subj01/roi_masks/rh.prf-visualrois_challenge_space.npy")]
    assert np.array_equal(s.rois["V1"], np.isin(labels, (1, 2))) and np.array_equal(s.rois["hV4"], labels == 7)
    assert s.rois["lh"].sum() == 40 and s.rois["rh"].sum() == 30
    assert {"FFA", "FBA", "VWFA", "EBA", "PPA"} <= set(s.rois)


def test_noise_ceiling_files_and_test_fmri_when_provided(tmp_path):
    truth = build_algonauts(tmp_path, n_images=60)
    nc = np.linspace(0, 80, 70)
    np.save(tmp_path / "lh_nc.npy", nc[:40])
    np.save(tmp_path / "rh_nc.npy", nc[40:])
    template = str(tmp_path / "{hemi}_nc.npy")
    s = Algonauts2023(root=tmp_path, noise_ceiling=template, cache=False).load().subject("subj01")
    assert np.allclose(s.noise_ceiling, nc) and s.nc_source.startswith("provided: lh_nc.npy, rh_nc.npy (%)")
    np.save(tmp_path / "frac.npy", nc / 100)
    s = Algonauts2023(root=tmp_path, noise_ceiling=tmp_path / "frac.npy", cache=False).load().subject("subj01")
    assert np.allclose(s.noise_ceiling, nc, atol=1e-4) and "fractions, ×100" in s.nc_source
    np.save(tmp_path / "short.npy", nc[:50])
    with pytest.raises(DataError, match="short.npy: 50 noise-ceiling values, the fMRI has 70 vertices"):
        Algonauts2023(root=tmp_path, noise_ceiling=tmp_path / "short.npy", cache=False).load()
    with pytest.raises(ConfigError, match="put {subject}"):
        Algonauts2023(root=tmp_path, subject=[1, 2], noise_ceiling=tmp_path / "frac.npy")
    test_dir = tmp_path / "subj01/test_split/test_fmri"
    test_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(test_dir / "lh_test_fmri.npy", rng.standard_normal((12, 40)).astype(np.float32))
    np.save(test_dir / "rh_test_fmri.npy", rng.standard_normal((12, 30)).astype(np.float32))
    ds = Algonauts2023(root=tmp_path, cache=False).load()
    s = ds.subject("subj01")
    assert np.array_equal(s.test.stim_ids, truth[1]["test_ids"]) and len(s.train.stim_ids) == 60
    assert ds.info["subjects"]["subj01"]["test_split"].startswith("challenge test split")


def test_captions_through_an_nsd_layout(tmp_path):
    build_algonauts(tmp_path / "alg", n_images=40, id_range=400)
    nsd = build_nsd(tmp_path / "nsd", n_sessions=1)
    ds = Algonauts2023(root=tmp_path / "alg", nsd_root=nsd.root, captions="required", cache=False).load()
    i = int(ds.stimuli.ids[0])
    assert ds.stimuli.captions[i] == [coco_caption(i, k) for k in range(5)] and len(ds.stimuli.captions) == 40
    lazy = Algonauts2023(root=tmp_path / "alg", nsd_root=nsd.root, cache=False).load()
    assert lazy.info["captions"]["status"] == "read on first use" and dict(lazy.stimuli.captions) == \
        dict(ds.stimuli.captions)
    with pytest.raises(ConfigError, match="captions='required' needs nsd_root"):
        Algonauts2023(root=tmp_path / "alg", captions="required")


def _break(root, case):
    d = root / "subj01"
    if case == "missing_image":
        next((d / "training_split/training_images").glob("train-0007_*.png")).unlink()
        return "training_images", "not 1..59 without gaps"
    if case == "bad_name":
        (d / "training_split/training_images/extra.png").write_bytes(b"")
        return "extra.png", "not named train-NNNN_nsd-XXXXX.png"
    if case == "hemisphere_rows":
        np.save(d / "training_split/training_fmri/rh_training_fmri.npy", np.zeros((59, 30), np.float32))
        return "rh_training_fmri.npy", "59 images, lh has 60"
    if case == "roi_length":
        np.save(d / "roi_masks/rh.floc-faces_challenge_space.npy", np.zeros(29))
        return "rh.floc-faces_challenge_space.npy", "29 labels, the fMRI has 30 vertices"
    if case == "mapping_not_dict":
        np.save(d / "roi_masks/mapping_floc-faces.npy", np.arange(3))
        return "mapping_floc-faces.npy", "not a {label: name} dictionary"
    if case == "missing_fmri":
        (d / "training_split/training_fmri/lh_training_fmri.npy").unlink()
        return "lh_training_fmri.npy", "not found"
    if case == "nsd_id_range":
        first = next((d / "training_split/training_images").glob("train-0001_*.png"))
        first.rename(first.with_name("train-0001_nsd-73000.png"))
        return "train-0001_nsd-73000.png", "nsd id outside NSD's 73000 images (0-based ids 0..72999)"
    if case == "image_count":
        next((d / "training_split/training_images").glob("train-0060_*.png")).unlink()
        return "training_images", "59 images", "lh_training_fmri.npy has 60 rows"
    if case in ("roi_unknown_label", "roi_fraction"):
        path = d / "roi_masks/lh.floc-faces_challenge_space.npy"
        labels = np.load(path)
        labels[3] = 9 if case == "roi_unknown_label" else 1.5
        np.save(path, labels)
        if case == "roi_unknown_label":
            return "lh.floc-faces_challenge_space.npy", "label 9 has no name in mapping_floc-faces.npy"
        return "lh.floc-faces_challenge_space.npy", "must be whole numbers, found 1.5"
    if case == "mapping_runs_code":  # a pickle that would call a function on load
        np.save(d / "roi_masks/mapping_floc-faces.npy", np.array(os.getcwd, dtype=object), allow_pickle=True)
        return "mapping_floc-faces.npy", "refusing to load posix.getcwd"
    if case == "complex_fmri":
        path = d / "training_split/training_fmri/rh_training_fmri.npy"
        np.save(path, np.load(path).astype(np.complex64))
        return "rh_training_fmri.npy", "responses of type complex64, expected real numbers"


@pytest.mark.parametrize("case", ["missing_image", "bad_name", "hemisphere_rows", "roi_length", "mapping_not_dict",
                                  "missing_fmri", "nsd_id_range", "image_count", "roi_unknown_label", "roi_fraction",
                                  "mapping_runs_code", "complex_fmri"])
def test_bad_files_give_one_line_errors(tmp_path, case):
    build_algonauts(tmp_path, n_images=60)
    needles = _break(tmp_path, case)
    with pytest.raises(DataError) as e:
        Algonauts2023(root=tmp_path, cache=False).load()
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_encoding_runs_end_to_end(mini, tmp_path):
    root, _ = mini
    cfg = tiny_config(tmp_path, dataset={"name": "algonauts2023", "root": str(root), "subject": [1, 2],
                                         "test_fraction": 0.2},
                      backbones=[{"name": "pixels", "size": 8}], tasks=[{"name": "encoding"}])
    records = Runner(cfg, progress=False).run()
    assert [r["key"]["subject"] for r in records] == ["subj01", "subj02"]
    for rec in records:
        assert rec["status"] == "complete" and rec["main_score"] == "median_r2" and rec["scores"]["median_r2"] > 0.1
        assert rec["dataset"]["noise_ceiling"].startswith("unavailable")
        assert {r["roi"] for r in rec["tables"]["per_roi"]} >= {"V1", "lh", "rh"}
