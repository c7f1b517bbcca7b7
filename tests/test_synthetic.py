"""The built-in synthetic dataset: determinism, on-disk cache, data-model shapes and the truth."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import re

import h5py
import numpy as np
import pytest

from brainharness import registry
from brainharness.errors import ConfigError, DataError
from brainharness.metrics.noise_ceiling import ncsnr, noise_ceiling
from brainharness.datasets.synthetic import SyntheticDataset
from brainharness.datasets.synthetic_responses import (CATEGORY_FEATURE_NAMES, PRESENCE_COLUMNS, ROI_NAMES,
                                                       low_level_features, zscore_columns)

# Medium: enough stimuli for a regression on all 224 generating features; several sessions.
MEDIUM = dict(n_train=800, n_test=200, n_voxels=130, image_size=32, seed=3, trials_per_session=300)
TINY = dict(n_train=40, n_test=12, n_voxels=26, image_size=16, n_subjects=2, seed=5, trials_per_session=50)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    return SyntheticDataset(cache_dir=tmp_path_factory.mktemp("cache"), **MEDIUM).load()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return SyntheticDataset(cache_dir=tiny_dir, **TINY).load()


def _ridge_r(x_train, y_train, x_test, y_test, alpha=1.0):
    """Pearson r per voxel of a ridge fitted on train (intercept via centring)."""
    mx, my = x_train.mean(0), y_train.mean(0)
    a, b = x_train - mx, y_train - my
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ b)
    pred = (x_test - mx) @ w + my
    pc, yc = pred - pred.mean(0), y_test - y_test.mean(0)
    return (pc * yc).sum(0) / np.sqrt((pc**2).sum(0) * (yc**2).sum(0))


def _all_averaged(ds, subject="subj01"):
    """Averaged responses of every stimulus, rows in stimulus-row order."""
    s = ds.subjects[subject]
    out = np.empty((len(ds.stimuli), s.n_voxels), dtype=np.float32)
    out[ds.stimuli.rows(s.train.stim_ids)] = s.train.averaged
    out[ds.stimuli.rows(s.test.stim_ids)] = s.test.averaged
    return out


# -- plugin, parameters ------------------------------------------------------------------------
def test_registered_under_its_name():
    assert registry.datasets.get("synthetic") is SyntheticDataset
    assert "synthetic" in registry.datasets.names()


@pytest.mark.parametrize("bad, name", [
    ({"n_train": 0}, "n_train"), ({"n_test": -3}, "n_test"), ({"n_train": 10.5}, "n_train"),
    ({"n_train": True}, "n_train"), ({"n_voxels": 5}, "n_voxels"), ({"n_voxels": "many"}, "n_voxels"), ({"image_size": 8}, "image_size"),
    ({"n_subjects": 0}, "n_subjects"), ({"seed": -1}, "seed"), ({"seed": "a"}, "seed"), ({"repeats": 1}, "repeats"),
    ({"trials_per_session": 0}, "trials_per_session"), ({"noise_fraction": 1.5}, "noise_fraction"),
    ({"noise_fraction": "x"}, "noise_fraction"), ({"cache_dir": 3}, "cache_dir"),
])
def test_invalid_parameters_raise_config_error(bad, name, tmp_path):
    kw = {"cache_dir": tmp_path, **bad}
    with pytest.raises(ConfigError, match=name) as e:
        SyntheticDataset(**kw)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "datasets").exists()


def test_default_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BRAINHARNESS_CACHE", str(tmp_path / "env-cache"))
    d = SyntheticDataset()
    assert d.path.parent == tmp_path / "env-cache" / "datasets"
    assert d.path.name == f"synthetic-{d.hash}.h5"
    assert not d.path.exists()  # constructing generates nothing


def test_hash_covers_every_parameter_but_not_the_cache_dir(tmp_path):
    base = SyntheticDataset(cache_dir=tmp_path)
    assert SyntheticDataset(cache_dir=tmp_path / "other").hash == base.hash
    changed = [dict(n_train=999), dict(n_test=301), dict(n_voxels=999), dict(image_size=32), dict(n_subjects=2),
               dict(seed=1), dict(repeats=4), dict(trials_per_session=700), dict(noise_fraction=0.2)]
    hashes = {SyntheticDataset(cache_dir=tmp_path, **kw).hash for kw in changed}
    assert len(hashes) == len(changed) and base.hash not in hashes
    # the stimulus fingerprint depends on the stimuli only
    assert SyntheticDataset(cache_dir=tmp_path, n_voxels=50).fingerprint == base.fingerprint
    assert SyntheticDataset(cache_dir=tmp_path, seed=1).fingerprint != base.fingerprint
    assert SyntheticDataset(cache_dir=tmp_path, image_size=32).fingerprint != base.fingerprint


# -- data model ------------------------------------------------------------------------------
def test_shapes_and_dtypes(medium):
    n = MEDIUM["n_train"] + MEDIUM["n_test"]
    st = medium.stimuli
    assert medium.name == "synthetic"
    assert np.array_equal(st.ids, np.arange(n))
    assert st.fingerprint.startswith("synthetic-")
    assert list(medium.subjects) == ["subj01"]
    s = medium.subjects["subj01"]
    assert len(s.train.stim_ids) == MEDIUM["n_train"] and len(s.test.stim_ids) == MEDIUM["n_test"]
    assert not np.intersect1d(s.train.stim_ids, s.test.stim_ids).size
    assert np.array_equal(np.sort(np.concatenate([s.train.stim_ids, s.test.stim_ids])), st.ids)
    for split, resp in (("train", s.train), ("test", s.test)):
        assert resp.averaged.dtype == np.float32 and resp.trials.dtype == np.float32
        assert resp.averaged.shape == (len(resp.stim_ids), MEDIUM["n_voxels"])
        assert resp.trials.shape == (3 * len(resp.stim_ids), MEDIUM["n_voxels"])
        assert np.all(resp.repeats() == 3)
        assert np.all(np.isfinite(resp.trials))
    assert s.noise_ceiling.shape == (MEDIUM["n_voxels"],) and s.noise_ceiling.dtype == np.float32
    assert s.nc_source == "estimated from single trials (NSD formula)"
    assert {"noise_ceiling", "signal_sd", "noise_sd"} <= set(s.truth)
    for key, arr in s.truth.items():
        assert arr.shape == (MEDIUM["n_voxels"],), key

    ex = st.extras
    assert ex["features_low"].shape == (n, 192) and ex["features_category"].shape == (n, len(CATEGORY_FEATURE_NAMES))
    assert np.array_equal(ex["features_all"], np.concatenate([ex["features_low"], ex["features_category"]], 1))
    for key in ("features_low", "features_category", "features_all"):
        x = ex[key]
        assert x.dtype == np.float32
        assert np.allclose(x.mean(0), 0, atol=1e-4)
        sd = x.std(0)
        assert np.all(np.isclose(sd, 1, atol=1e-3) | (sd == 0))
    assert ex["category_presence"].shape == (n, len(PRESENCE_COLUMNS)) and ex["category_presence"].dtype == bool

    images = st.images(st.ids[:5])
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    info = medium.info
    assert info["version"] == SyntheticDataset.VERSION and info["path"].endswith(".h5")
    assert all(info[k] == v for k, v in MEDIUM.items())


def test_rois(medium):
    s = medium.subjects["subj01"]
    assert set(s.rois) == set(ROI_NAMES)
    assert s.rois["nsdgeneral"].all()
    named = [r for r in ROI_NAMES if r != "nsdgeneral"]
    stacked = np.stack([s.rois[r] for r in named])
    assert stacked.sum(0).max() == 1  # named ROIs do not overlap
    assert 0 < (stacked.sum(0) == 0).sum() < MEDIUM["n_voxels"] / 2  # some voxels in no named ROI
    for r in named:  # every ROI gets a fair share, with signal voxels
        assert s.rois[r].sum() >= 4, r
        assert (s.rois[r] & ~s.truth["pure_noise"]).any(), r


def test_every_roi_nonempty_at_minimum_size(tmp_path):
    ds = SyntheticDataset(cache_dir=tmp_path, n_train=20, n_test=6, n_voxels=13, image_size=16).load()
    s = ds.subjects["subj01"]
    assert all(s.rois[r].sum() >= 1 for r in ROI_NAMES)


def test_averages_are_means_of_the_zscored_trials(medium):
    s = medium.subjects["subj01"]
    for resp in (s.train, s.test):
        order = np.argsort(resp.trial_stim, kind="stable")
        grouped = resp.trials[order].reshape(-1, 3, resp.n_voxels)
        ids = np.unique(resp.trial_stim)
        expected = grouped.mean(1)[np.searchsorted(ids, resp.stim_ids)]
        np.testing.assert_allclose(resp.averaged, expected, atol=1e-5)


def test_trials_are_zscored_within_sessions(medium):
    with h5py.File(medium.info["path"], "r") as f:
        g = f["subjects/subj01"]
        trials = np.concatenate([g["train/trials"][:], g["test/trials"][:]])
        sessions = np.concatenate([g["train/trial_session"][:], g["test/trial_session"][:]])
    n_sessions = medium.info["n_sessions"]["subj01"]
    assert n_sessions == 10 and len(np.unique(sessions)) == 10
    for sess in range(n_sessions):
        block = trials[sessions == sess].astype(np.float64)
        assert abs(len(block) - MEDIUM["trials_per_session"]) <= 1
        np.testing.assert_allclose(block.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(block.std(0), 1, atol=1e-3)


def test_low_level_features_are_computed_from_the_stored_images(medium):
    st = medium.stimuli
    recomputed = zscore_columns(low_level_features(st.images(st.ids)))
    np.testing.assert_allclose(recomputed, st.extras["features_low"], atol=1e-3)


# -- noise ceiling and truth -------------------------------------------------------------------
def test_estimated_noise_ceiling_is_the_nsd_formula_on_all_trials(medium):
    s = medium.subjects["subj01"]
    trials = np.concatenate([s.train.trials, s.test.trials])
    stim = np.concatenate([s.train.trial_stim, s.test.trial_stim])
    expected = noise_ceiling(ncsnr(trials, stim, repeats=3), s.test.repeats())
    np.testing.assert_allclose(s.noise_ceiling, expected, atol=1e-3)


def test_estimated_noise_ceiling_tracks_the_truth(medium):
    s = medium.subjects["subj01"]
    truth = s.truth["noise_ceiling"]
    assert np.corrcoef(s.noise_ceiling, truth)[0, 1] >= 0.9
    signal = ~s.truth["pure_noise"]
    assert 20 <= np.median(truth) <= 60
    assert truth[signal].min() < 15 and truth[signal].max() > 80  # a wide spread of SNRs
    expected = 100 * s.truth["signal_sd"] ** 2 / (s.truth["signal_sd"] ** 2 + s.truth["noise_sd"] ** 2 / 3)
    np.testing.assert_allclose(truth, expected, rtol=1e-4, atol=1e-4)


def test_pure_noise_voxels(medium):
    s = medium.subjects["subj01"]
    pure = s.truth["pure_noise"]
    assert 0.05 <= pure.mean() <= 0.15  # noise_fraction 0.1
    assert np.all(s.truth["noise_ceiling"][pure] == 0) and np.all(s.truth["signal_sd"][pure] == 0)
    assert np.all(s.truth["signal_sd"][~pure] > 0.5)
    assert s.noise_ceiling[pure].mean() < 5 and s.noise_ceiling[pure].max() < 25
    # their averaged responses predict nothing: no correlation with any generating feature beyond chance
    x = medium.stimuli.extras["features_all"]
    y = _all_averaged(medium)[:, pure]
    r = (zscore_columns(x).T @ zscore_columns(y)) / len(x)
    assert np.abs(r).max() < 0.2


def test_no_pure_noise_when_noise_fraction_is_zero(tmp_path):
    s = SyntheticDataset(cache_dir=tmp_path, n_train=30, n_test=10, n_voxels=30, image_size=16,
                         noise_fraction=0.0).load().subjects["subj01"]
    assert not s.truth["pure_noise"].any() and np.all(s.truth["noise_ceiling"] > 0)


def test_oracle_regression_reaches_the_noise_ceiling(medium):
    s, st = medium.subjects["subj01"], medium.stimuli
    x = st.extras["features_all"]
    r = _ridge_r(x[st.rows(s.train.stim_ids)], s.train.averaged, x[st.rows(s.test.stim_ids)], s.test.averaged,
                 alpha=20.0)
    truth = s.truth["noise_ceiling"]
    high = truth > 60
    assert high.sum() >= 10
    ratio = r[high] ** 2 / (truth[high] / 100)
    assert 0.85 <= np.median(ratio) <= 1.1
    assert np.median(r[s.truth["pure_noise"]] ** 2) < 0.05
    # the same features with the stimuli shuffled predict nothing
    perm = np.random.default_rng(0).permutation(len(x))
    r_shuffled = _ridge_r(x[perm][st.rows(s.train.stim_ids)], s.train.averaged, x[perm][st.rows(s.test.stim_ids)],
                          s.test.averaged, alpha=20.0)
    assert np.median(r_shuffled[high] ** 2) < 0.05


# -- tuning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("roi, category", [("FFA", "face"), ("OFA", "face"), ("EBA", "body"), ("FBA", "body"),
                                           ("PPA", "place"), ("OPA", "place"), ("VWFA", "word"), ("OWFA", "word")])
def test_category_areas_prefer_their_category(medium, roi, category):
    s = medium.subjects["subj01"]
    y = _all_averaged(medium)[:, s.rois[roi] & ~s.truth["pure_noise"]].mean(1)
    pres = medium.stimuli.extras["category_presence"]
    contrast = {c: y[pres[:, k]].mean() - y[~pres[:, k]].mean() for k, c in enumerate(PRESENCE_COLUMNS)}
    assert contrast[category] > 0.3
    assert all(contrast[category] > v for c, v in contrast.items() if c != category)


def test_early_visual_areas_are_low_level_and_category_areas_are_not(medium):
    s, st = medium.subjects["subj01"], medium.stimuli
    tr, te = st.rows(s.train.stim_ids), st.rows(s.test.stim_ids)

    def score(layer, roi):
        x = st.extras[layer]
        cols = s.rois[roi] & (s.truth["noise_ceiling"] > 40)
        r = _ridge_r(x[tr], s.train.averaged[:, cols], x[te], s.test.averaged[:, cols], alpha=20.0)
        return np.median(r**2 / (s.truth["noise_ceiling"][cols] / 100))

    assert score("features_low", "V1") > score("features_category", "V1") + 0.2
    for roi in ("FFA", "PPA", "EBA", "VWFA"):
        assert score("features_category", roi) > score("features_low", roi) + 0.1, roi


# -- captions ----------------------------------------------------------------------------------
WORDS = {
    "face": r"\bfaces?\b",
    "body": r"\b(person|persons|people|man|woman|someone)\b",
    "word": r"\b(signs?|writing|text|letters|words|boards?)\b",
    "place": r"\b(street|road|field|park|yard|lawn|beach|desert|sand|grass|house|building|tower|city)\b",
    "object": r"\b(balls?|sphere|box|boxes|cube|crate|triangles?|pyramid|triangular|cone|objects|shapes|toys)\b",
}


def test_captions_describe_the_scene(medium):
    st = medium.stimuli
    pres = st.extras["category_presence"]
    assert set(st.captions) == set(st.ids.tolist())
    n_five = 0
    for row, i in enumerate(st.ids):
        caps = st.captions[int(i)]
        assert 1 <= len(caps) <= 5 and len(set(caps)) == len(caps)
        assert all(isinstance(c, str) and c and c[0].isupper() for c in caps)
        n_five += len(caps) == 5
        text = " ".join(caps).lower()
        for k, cat in enumerate(PRESENCE_COLUMNS):
            mentioned = re.search(WORDS[cat], text) is not None
            if pres[row, k]:
                assert mentioned, (cat, caps)
            elif cat in ("face", "word", "place"):  # their vocabulary is used for nothing else
                assert not mentioned, (cat, caps)
        for k, cat in enumerate(PRESENCE_COLUMNS):  # the first caption names everything
            if pres[row, k]:
                assert re.search(WORDS[cat], caps[0].lower()), (cat, caps[0])
    assert n_five >= 0.95 * len(st.ids)
    all_caps = [c for caps in st.captions.values() for c in caps]
    assert len(set(all_caps)) > 0.9 * len(all_caps)  # varied
    assert all(st.descriptions[int(i)] for i in st.ids)


def test_captions_name_colours(medium):
    st = medium.stimuli
    colours = r"\b(red|orange|yellow|green|blue|purple|pink|brown)\b"
    with_colour = sum(any(re.search(colours, c) for c in st.captions[int(i)]) for i in st.ids)
    assert with_colour > 0.8 * len(st.ids)


# -- determinism and caching -------------------------------------------------------------------
def test_same_seed_same_data_different_seed_different(tiny, tmp_path):
    again = SyntheticDataset(cache_dir=tmp_path, **TINY).load()
    assert again.info["path"] != tiny.info["path"] and os.path.basename(again.info["path"]) == \
        os.path.basename(tiny.info["path"])
    for name in ("subj01", "subj02"):
        a, b = tiny.subjects[name], again.subjects[name]
        for x, y in ((a.train.averaged, b.train.averaged), (a.test.trials, b.test.trials),
                     (a.train.trial_stim, b.train.trial_stim), (a.noise_ceiling, b.noise_ceiling),
                     (a.truth["noise_ceiling"], b.truth["noise_ceiling"])):
            assert np.array_equal(x, y)
        assert all(np.array_equal(a.rois[r], b.rois[r]) for r in ROI_NAMES)
    assert np.array_equal(tiny.stimuli.images(tiny.stimuli.ids), again.stimuli.images(again.stimuli.ids))
    assert tiny.stimuli.captions == again.stimuli.captions
    for k in tiny.stimuli.extras:
        assert np.array_equal(tiny.stimuli.extras[k], again.stimuli.extras[k])

    other = SyntheticDataset(cache_dir=tmp_path, **{**TINY, "seed": TINY["seed"] + 1}).load()
    assert not np.array_equal(other.stimuli.images(other.stimuli.ids), tiny.stimuli.images(tiny.stimuli.ids))
    assert other.stimuli.captions != tiny.stimuli.captions
    assert not np.array_equal(other.subjects["subj01"].train.averaged, tiny.subjects["subj01"].train.averaged)
    assert other.stimuli.fingerprint != tiny.stimuli.fingerprint


def test_subjects_share_stimuli_but_not_voxels(tiny):
    a, b = tiny.subjects["subj01"], tiny.subjects["subj02"]
    assert np.array_equal(a.test.stim_ids, b.test.stim_ids)
    assert not np.array_equal(a.train.trial_stim, b.train.trial_stim)  # own trial order
    assert not np.array_equal(a.train.averaged, b.train.averaged)


def test_a_stimulus_does_not_depend_on_the_other_sizes(tiny, tmp_path):
    bigger = SyntheticDataset(cache_dir=tmp_path, **{**TINY, "n_train": 60, "n_voxels": 40}).load()
    ids = tiny.stimuli.ids
    assert np.array_equal(bigger.stimuli.images(ids), tiny.stimuli.images(ids))
    assert all(bigger.stimuli.captions[int(i)] == tiny.stimuli.captions[int(i)] for i in ids)


def _files(folder):
    """Dataset files and leftovers in a cache folder (the lock file is expected and ignored)."""
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock"))


def test_second_load_reuses_the_file(tiny, tiny_dir, monkeypatch):
    d = SyntheticDataset(cache_dir=tiny_dir, **TINY)
    assert str(d.path) == tiny.info["path"]
    mtime = d.path.stat().st_mtime_ns

    def fail(self):
        raise AssertionError("regenerated an existing dataset")

    monkeypatch.setattr(SyntheticDataset, "generate", fail)
    again = d.load()
    assert d.path.stat().st_mtime_ns == mtime
    assert np.array_equal(again.subjects["subj02"].test.averaged, tiny.subjects["subj02"].test.averaged)
    assert _files(d.path.parent) == [d.path.name]  # no temporary files left


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    d = SyntheticDataset(cache_dir=tmp_path, n_train=20, n_test=6, n_voxels=20, image_size=16)

    def boom(self, *args):
        raise RuntimeError("interrupted")

    with monkeypatch.context() as m:
        m.setattr(SyntheticDataset, "_write_subject", boom)
        with pytest.raises(RuntimeError, match="interrupted"):
            d.load()
    assert _files(tmp_path / "datasets") == []
    (tmp_path / "datasets" / f"{d.path.name}.tmp-1-dead").write_bytes(b"left by a killed run")
    ds = d.load()
    assert _files(tmp_path / "datasets") == [d.path.name]
    assert ds.subjects["subj01"].n_voxels == 20


def test_incomplete_file_is_reported(tmp_path):
    d = SyntheticDataset(cache_dir=tmp_path, n_train=20, n_test=6, n_voxels=20, image_size=16)
    d.path.parent.mkdir(parents=True)
    d.path.write_bytes(b"not an hdf5 file")
    with pytest.raises(DataError, match="delete it"):
        d.load()


# -- images ------------------------------------------------------------------------------------
def test_read_images_any_order_and_duplicates(tiny):
    st = tiny.stimuli
    all_images = st.read_images(np.arange(len(st)))
    rows = np.array([7, 3, 3, 50, 0, 7, 51])
    np.testing.assert_array_equal(st.read_images(rows), all_images[rows])
    sparse = np.array([51, 0])  # the non-contiguous read path
    np.testing.assert_array_equal(st.read_images(sparse), all_images[sparse])
    np.testing.assert_array_equal(st.images([12, 4]), all_images[st.rows([12, 4])])
    assert st.read_images(np.array([], dtype=int)).shape == (0, 16, 16, 3)
    with pytest.raises(DataError):
        st.read_images(np.array([len(st)]))
    # images differ from one another and are not blank
    assert len({im.tobytes() for im in all_images}) == len(st)
    assert all(im.std() > 5 for im in all_images)


def _read_first(reader):
    return reader(np.array([1, 0]))


def test_image_reader_survives_pickling_and_fork(tiny):
    reader = tiny.stimuli.read_images
    expected = reader(np.array([1, 0]))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reader))(np.array([1, 0])), expected)
    if "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(1) as pool:
            np.testing.assert_array_equal(pool.apply(_read_first, (reader,)), expected)


def _load_summary(kw):
    ds = SyntheticDataset(**kw).load()
    return ds.info["path"], ds.subjects["subj01"].test.averaged.sum()


def test_concurrent_loaders_share_one_generation(tmp_path):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork")
    kw = dict(cache_dir=str(tmp_path), n_train=60, n_test=20, n_voxels=30, image_size=16)
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_load_summary, [kw] * 3)
    assert len({r[0] for r in results}) == 1 and len({float(r[1]) for r in results}) == 1
    assert _files(tmp_path / "datasets") == [os.path.basename(results[0][0])]
