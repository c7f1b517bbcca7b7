"""The built-in synthetic dataset: deterministic, cached, and with the structure real data has."""
import numpy as np
import pytest

from harness.errors import ConfigError
from harness.ridge import RidgeCV
from harness.synthetic import PRESENCE_COLUMNS, SyntheticDataset

SMALL = dict(n_train=500, n_test=200, n_voxels=300, image_size=32, seed=5)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return SyntheticDataset(**SMALL, cache_dir=tmp_path_factory.mktemp("syn")).load()


def test_deterministic_and_seed_dependent(ds, tmp_path):
    again = SyntheticDataset(**SMALL, cache_dir=tmp_path).load()  # regenerated in another folder
    a, b = ds.subjects["subj01"], again.subjects["subj01"]
    np.testing.assert_array_equal(a.train.averaged, b.train.averaged)
    np.testing.assert_array_equal(ds.stimuli.images([0, 7]), again.stimuli.images([0, 7]))
    assert ds.stimuli.captions[3] == again.stimuli.captions[3]
    other = SyntheticDataset(**{**SMALL, "seed": 6}, cache_dir=tmp_path).load()
    assert not np.array_equal(ds.stimuli.images([0]), other.stimuli.images([0]))
    assert ds.stimuli.fingerprint != other.stimuli.fingerprint


def test_file_is_reused_and_no_temp_files_left(tmp_path):
    syn = SyntheticDataset(**SMALL, cache_dir=tmp_path)
    syn.load()
    mtime = syn.path.stat().st_mtime_ns
    syn.load()
    assert syn.path.stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [syn.path.name]


def test_shapes_and_split(ds):
    s = ds.subjects["subj01"]
    assert s.train.averaged.shape == (500, 300) and s.test.averaged.shape == (200, 300)
    assert s.train.averaged.dtype == np.float32
    assert not set(s.train.stim_ids) & set(s.test.stim_ids)
    assert (s.test.repeats() == 3).all() and len(s.train.trials) == 1500
    assert ds.stimuli.images(s.test.stim_ids[:4]).shape == (4, 32, 32, 3)
    x = ds.stimuli.extras["features_all"]
    assert x.shape[0] == 700 and x.shape[1] == ds.stimuli.extras["features_low"].shape[1] + \
        ds.stimuli.extras["features_category"].shape[1]
    # averaged rows are the means of their single trials
    sid = s.test.stim_ids[0]
    np.testing.assert_allclose(s.test.trials[s.test.trial_stim == sid].mean(0), s.test.averaged[0], atol=1e-5)


def test_noise_ceiling_tracks_truth(ds):
    s = ds.subjects["subj01"]
    assert np.corrcoef(s.noise_ceiling, s.truth["noise_ceiling"])[0, 1] > 0.9
    pure = s.truth["pure_noise"]
    assert pure.any() and (s.truth["noise_ceiling"][pure] == 0).all()
    assert np.median(s.noise_ceiling[pure]) < 5 < np.median(s.noise_ceiling[~pure])


@pytest.mark.parametrize("roi, category", [("FFA", "face"), ("PPA", "place"), ("VWFA", "word"), ("EBA", "body")])
def test_category_rois_prefer_their_category(ds, roi, category):
    s = ds.subjects["subj01"]
    stim = np.concatenate([s.train.stim_ids, s.test.stim_ids])
    resp = np.concatenate([s.train.averaged, s.test.averaged])[:, s.rois[roi]].mean(1)
    present = ds.stimuli.extras["category_presence"][ds.stimuli.rows(stim), PRESENCE_COLUMNS.index(category)]
    assert present.any() and (~present).any()
    assert resp[present].mean() - resp[~present].mean() > 0.3


def test_captions_mention_the_content(ds):
    words = {"face": ("face", "man", "woman", "person", "portrait", "head"),
             "word": ("sign", "text", "word", "writing", "letter")}
    pres = ds.stimuli.extras["category_presence"]
    for cat, vocab in words.items():
        rows = np.flatnonzero(pres[:, PRESENCE_COLUMNS.index(cat)])[:20]
        hits = [any(w in " ".join(ds.stimuli.captions[int(ds.stimuli.ids[r])]).lower() for w in vocab) for r in rows]
        assert np.mean(hits) > 0.9, cat
    caps = ds.stimuli.captions[0]
    assert len(caps) >= 3 and len(set(caps)) == len(caps)


def test_generating_features_explain_the_explainable_variance(ds):
    s = ds.subjects["subj01"]
    x = ds.stimuli.extras["features_all"]
    model = RidgeCV(np.logspace(-2, 4, 7), device="cpu").fit(x[ds.stimuli.rows(s.train.stim_ids)], s.train.averaged)
    pred = model.predict(x[ds.stimuli.rows(s.test.stim_ids)])
    a = s.test.averaged
    r = ((pred - pred.mean(0)) * (a - a.mean(0))).sum(0) / (pred.std(0) * a.std(0) * len(a))
    good = s.truth["noise_ceiling"] > 50
    assert np.median(100 * r[good] ** 2 / s.truth["noise_ceiling"][good] * 100) > 85


@pytest.mark.parametrize("bad", [{"n_train": 0}, {"n_voxels": "many"}, {"noise_fraction": 2}, {"image_size": 4}])
def test_invalid_parameters_are_named(bad, tmp_path):
    with pytest.raises(ConfigError, match=list(bad)[0]):
        SyntheticDataset(**{**SMALL, **bad}, cache_dir=tmp_path)
