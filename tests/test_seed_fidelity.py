"""Seed table definitions pinned on hand-made inputs (issue 15): each published column is set
beside the harness quantity its authors actually computed."""
from __future__ import annotations

import numpy as np
import pytest

from brainharness.metrics import top1_from_similarity, top1_retrieval
from brainharness.tasks.contrastive import query_text_similarity
from brainharness.tasks.decoding_layout import PAPER_COLUMNS, stage_notes


# What the seed-000 authors' evaluation computes (slavaheroes/brain-decoding-with-blip2, inference.py with
# MindEye's cosine-similarity helper), restated here: the helper returns cosine similarities *transposed*,
# so the rows are the items of its second argument; top-1 asks, per row, whether the row's own item wins.
def _authors_similarity(first, second):
    a = first.reshape(len(first), -1)
    b = second.reshape(len(second), -1)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a @ b.T).T


def _authors_top1(similarity) -> float:
    similarity = np.asarray(similarity)
    return float(np.mean(similarity.argmax(1) == np.arange(len(similarity))))


def _full_set(fn, *args):
    """The harness's protocol with every item a candidate (any draw is then a permutation of the set)."""
    return fn(*args, n_candidates=len(args[0]), n_trials=2, seed=0)["mean"]


def test_table1_columns_are_what_the_authors_code_computed():
    rng = np.random.default_rng(3)
    n, q, d = 60, 4, 12
    image = rng.normal(size=(n, q * d))
    brain = image + 2.2 * rng.normal(size=(n, q * d))
    brain[:, :d] += 3.0 * rng.normal(size=(1, d))  # a shared hub component: the two directions now differ
    texts = rng.normal(size=(n, d))
    shared = texts[:, None, :] + 2.0 * rng.normal(size=(n, q, d))
    shared /= np.linalg.norm(shared, axis=-1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=-1, keepdims=True)

    # the authors' inference.py (image & brain, then text & brain)
    code = {"I→B": _authors_top1(_authors_similarity(brain, image)),
            "B→I": _authors_top1(_authors_similarity(image, brain))}
    logits_per_brain = (shared @ texts.T).max(axis=1)  # (brain, text): best query per pair
    code["T→B"] = _authors_top1(logits_per_brain)
    code["B→T"] = _authors_top1(logits_per_brain.T)

    sim = query_text_similarity(shared, texts)  # (brain, text), as tasks/decoding.py scores it
    harness = {"brain→image": _full_set(top1_retrieval, brain, image),
               "image→brain": _full_set(top1_retrieval, image, brain),
               "brain→text": _full_set(top1_from_similarity, sim),
               "text→brain": _full_set(top1_from_similarity, sim.T)}
    assert harness["brain→image"] != pytest.approx(harness["image→brain"], abs=0.02)  # the directions differ
    assert harness["brain→text"] != pytest.approx(harness["text→brain"], abs=0.02)
    for label, direction in PAPER_COLUMNS.items():
        assert harness[direction] == pytest.approx(code[label], abs=1e-6), label
    assert PAPER_COLUMNS["I→B"] == "image→brain" and PAPER_COLUMNS["B→I"] == "brain→image"

    record = {"tables": {"retrieval": [{"stage": 1, "direction": d, "mean": v} for d, v in harness.items()]}}
    assert any("I→B = image→brain, B→I = brain→image, T→B = brain→text" in n for n in stage_notes([record]))


def test_table13_shows_seed003s_raw_roi_averaged_r2():
    from brainharness.tasks.layerwise import LAYERWISE_RAW_TABLE, LAYERWISE_TABLE, MODEL_NOTE

    record = {"main_score": "median_nc_r2", "scores": {"median_nc_r2": 40.0, "mean_r2": 0.052},
              "tables": {"per_roi": [{"roi": "V1", "median_nc_r2": 61.0, "mean_r2": 0.081},
                                     {"roi": "hV4", "median_nc_r2": 33.0, "mean_r2": 0.034},
                                     {"roi": "nsdgeneral", "median_nc_r2": 40.0, "mean_r2": 0.05}]}}
    raw, _ = LAYERWISE_RAW_TABLE.columns.values(record)
    assert raw == {"all": 0.052, "V1": 0.081, "V4": 0.034}  # the paper's quantity, not the normalised median
    normalised, _ = LAYERWISE_TABLE.columns.values(record)
    assert normalised == {"all": 40.0, "V1": 61.0, "V4": 33.0}
    (row,) = LAYERWISE_RAW_TABLE.rows(record)
    assert row.record["main_score"] == "mean_r2" and record["main_score"] == "median_nc_r2"
    assert "not seed 003's FactorTopy" in MODEL_NOTE and LAYERWISE_RAW_TABLE.notes([record]) == [MODEL_NOTE]


def test_seed004_score_is_the_unthresholded_mean_of_r2_over_nc():
    from brainharness.tasks.aligned_encoding import _scores

    actual = np.array([[0.0, 1, 2], [1, 0, 1], [2, 2, 0], [3, 1, 2]])
    pred = np.array([[0.0, 1, 0], [1, 1, 2], [2, 0, 1], [3, 2, 0]])  # r: 1, ~0.30, r < 0
    nc = np.array([50.0, 5.0, 80.0])  # the second voxel is below the usual threshold of 10
    pv, sc, _ = _scores(pred, actual, nc, {}, 10.0)
    r2 = np.clip(pv["pearson_r"], 0, None) ** 2
    expected = 100 * np.mean(np.minimum(r2 / (nc / 100), 1.0))
    assert sc["mean_nc_r2_all"] == pytest.approx(expected, rel=1e-6)
    assert sc["n_voxels_kept"] == 2 and sc["mean_nc_r2"] == pytest.approx(pv["nc_r2"][[0, 2]].mean())
    assert sc["mean_nc_r2_all"] < sc["mean_nc_r2"] - 10  # the thresholded summary leaves the second voxel out
