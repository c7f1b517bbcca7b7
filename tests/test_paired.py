"""Encoding intervals and the paired test against the best row (issue 17): bootstrap over test
images stored in the record when it is scored, compared resample by resample on the leaderboard,
Holm-corrected over the rows of a block. Records are scored with the real metric code."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_leaderboard import _weights, encoding_record
from brainharness.leaderboard import build_tables, write_leaderboard
from brainharness.metrics import encoding_scores, pearson_r
from brainharness.metrics.bootstrap import encoding_bootstrap, holm, paired_bootstrap_p, resampled_r
from brainharness.results import ResultStore
from brainharness.tasks.encoding import BOOTSTRAP_KEY, bootstrap_entry

N, V = 200, 300
RNG = np.random.default_rng(7)
ACTUAL = RNG.standard_normal((N, V))
NC = np.full(V, 60.0)
ROIS = {"V1": np.arange(V) < 100, "hV4": np.arange(V) >= 200}


def _pred(noise: float, seed: int) -> np.ndarray:
    return ACTUAL + noise * np.random.default_rng(seed).standard_normal((N, V))


def _save(store: ResultStore, name: str, pred: np.ndarray, *, seed: int = 0, ids=None) -> dict:
    """An encoding record scored like the task scores it (point estimates, intervals, draws)."""
    _, scores, per_roi = encoding_scores(pred, ACTUAL, NC, ROIS)
    draws = encoding_bootstrap(pred, ACTUAL, NC, ROIS, n_boot=400, seed=seed)
    record = encoding_record(name, _weights("none"), scores["median_nc_r2"], {})
    record["scores"].update(scores)
    record["tables"] = {"per_roi": per_roi, "bootstrap": [bootstrap_entry(
        "median_nc_r2", draws, 400, seed, np.arange(N) if ids is None else ids, record["scores"], per_roi)]}
    store.save(record, {BOOTSTRAP_KEY.format("median_nc_r2"): draws[""]})
    return record


def test_resampled_r_equals_pearson_on_the_resampled_rows():
    pred = _pred(1.0, 1)
    idx = np.random.default_rng(3).integers(0, N, size=(50, N))  # what resampled_r draws from seed 3
    (_, r), = list(resampled_r(pred, ACTUAL, 50, 3))
    for k in (0, 17, 49):
        np.testing.assert_allclose(r[k], pearson_r(pred[idx[k]], ACTUAL[idx[k]]), atol=1e-5)


def test_intervals_hold_the_point_estimate_and_are_reproducible():
    pred = _pred(1.0, 1)
    _, scores, per_roi = encoding_scores(pred, ACTUAL, NC, ROIS)
    a = encoding_bootstrap(pred, ACTUAL, NC, ROIS, n_boot=300, seed=5)
    b = encoding_bootstrap(pred, ACTUAL, NC, ROIS, n_boot=300, seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # seeded
    assert not np.array_equal(a[""], encoding_bootstrap(pred, ACTUAL, NC, ROIS, n_boot=300, seed=6)[""])
    before = dict(scores)
    bootstrap_entry("median_nc_r2", a, 300, 5, np.arange(N), scores, per_roi)
    assert {k: scores[k] for k in before} == before  # point estimates untouched
    assert scores["median_nc_r2_ci_low"] < scores["median_nc_r2"] < scores["median_nc_r2_ci_high"]
    for row in per_roi:
        assert row["median_nc_r2_ci_low"] < row["median_nc_r2"] < row["median_nc_r2_ci_high"]


def test_paired_p_and_holm():
    d = np.linspace(0.1, 1.0, 99)
    assert paired_bootstrap_p(d, d) == 1.0  # identical draws: no difference
    assert paired_bootstrap_p(d + 1.0, d) == pytest.approx(2 / 100)  # every resample favours a
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.02]), [0.02])


def test_leaderboard_ties_and_separates_rows_by_the_paired_test(tmp_path):
    store = ResultStore(tmp_path / "r")
    _save(store, "good", _pred(0.5, 1))
    _save(store, "good-copy", _pred(0.5, 1))  # identical predictions → tied
    _save(store, "bad", _pred(3.0, 2))  # clearly worse → not tied
    _save(store, "other-seed", _pred(3.0, 2), seed=1)  # other resamples: not comparable
    df = build_tables(tmp_path / "r")["encoding"].set_index("backbone")
    assert df.at["good", "rank"] == 1 and bool(df.at["good", "tied_with_best"])
    assert bool(df.at["good-copy", "tied_with_best"]) and df.at["good-copy", "p_vs_best"] == 1.0
    assert not bool(df.at["bad", "tied_with_best"]) and df.at["bad", "p_vs_best"] < 0.05
    # Holm over the two rows compared: the smaller raw p (2/401) doubled
    assert df.at["bad", "p_vs_best"] == pytest.approx(2 * 2 / 401)
    assert df["tied_with_best"].isna()["other-seed"] and np.isnan(df.at["other-seed", "p_vs_best"])

    out = tmp_path / "lb"
    paths = write_leaderboard(tmp_path / "r", out, plots=False)
    md = paths["encoding"]["md"].read_text()
    assert "| vs best |" in md and "tied with best (p=1)" in md and "worse than best (p=0.01)" in md
    doc = json.loads((out / "leaderboard.json").read_text())
    rows = {e["identity"]["backbone"]: e["rows"][0] for e in doc["entries"]}
    assert rows["bad"]["tied_with_best"] is False and rows["good-copy"]["tied_with_best"] is True
    assert rows["other-seed"]["tied_with_best"] is None
    rec = ResultStore(tmp_path / "r").records()
    good = next(r for r in rec if r["key"]["backbone"] == "good")
    assert rows["good"]["scores"]["all"]["ci_low"] == pytest.approx(good["scores"]["median_nc_r2_ci_low"])
    hv4 = good["tables"]["per_roi"][1]
    assert hv4["roi"] == "hV4"
    assert rows["good"]["scores"]["hV4"]["ci_high"] == pytest.approx(hv4["median_nc_r2_ci_high"])
    assert 'title="95 % CI' in (out / "index.html").read_text()


def test_a_different_test_set_is_never_compared(tmp_path):
    store = ResultStore(tmp_path / "r")
    _save(store, "good", _pred(0.5, 1))
    _save(store, "bad", _pred(3.0, 2), ids=np.arange(N) + 1000)  # same size, other images
    df = build_tables(tmp_path / "r")["encoding"]
    assert df["tied_with_best"].isna().all() and df["p_vs_best"].isna().all()


def _save_retrieval(store: ResultStore, name: str, noise: float, *, n_trials: int = 20):
    """A retrieval record scored like the task scores it (real top-1 trials, per-item hit rates)."""
    from test_leaderboard import retrieval_record
    from brainharness.metrics import top1_retrieval
    from brainharness.tasks.retrieval import ITEMS_TABLE, item_entry
    images = np.random.default_rng(11).standard_normal((N, 32))
    brain = images + noise * np.random.default_rng(12).standard_normal((N, 32))
    kw = dict(n_candidates=100, n_trials=n_trials, seed=0, per_item=True)
    rows = [{"direction": "brain→image", **top1_retrieval(brain, images, **kw)},
            {"direction": "image→brain", **top1_retrieval(images, brain, **kw)}]
    per_voxel: dict = {}
    paired = [item_entry(r, np.arange(N), per_voxel) for r in rows]
    record = retrieval_record(name, _weights("pretrained", name), {})
    record.update(main_score="brain→image", scores={r["direction"]: r["mean"] for r in rows},
                  tables={"retrieval": rows, ITEMS_TABLE: paired})
    return store.save(record, per_voxel)


def test_retrieval_rows_are_compared_with_the_best_over_test_items(tmp_path):
    store = ResultStore(tmp_path / "r")
    good = _save_retrieval(store, "good", 0.8)
    _save_retrieval(store, "good-copy", 0.8)  # identical hits → tied
    _save_retrieval(store, "bad", 3.0)  # clearly worse → not tied
    _save_retrieval(store, "other-trials", 3.0, n_trials=21)  # other candidate sets: not comparable
    hits = store.per_voxel(good)
    assert {"items_brain_to_image", "items_image_to_brain"} <= set(hits)
    assert hits["items_brain_to_image"].shape == (N,) and np.isfinite(hits["items_brain_to_image"]).sum() > N / 2
    df = build_tables(tmp_path / "r")["retrieval"].set_index("backbone")
    assert df.at["good", "rank"] == 1 and bool(df.at["good", "tied_with_best"])
    assert df.at["good", "main_score"] > df.at["bad", "main_score"] + 0.2
    assert df.at["bad", "p_vs_best"] == pytest.approx(2 * 2 / 2001)  # every resample favours good; Holm × 2
    assert bool(df.at["good-copy", "tied_with_best"]) and df.at["good-copy", "p_vs_best"] == 1.0
    assert not bool(df.at["bad", "tied_with_best"]) and df.at["bad", "p_vs_best"] < 0.05
    assert df["tied_with_best"].isna()["other-trials"] and np.isnan(df.at["other-trials", "p_vs_best"])
