"""Layer-wise encoding (seed 003): known-truth brain-to-layer map, one-pass multi-layer
extraction, selection on validation only, and the Table 13-shaped leaderboard."""
from __future__ import annotations

import csv
import re
from dataclasses import replace

import h5py
import numpy as np
import pytest

import brainharness.tasks.layerwise  # noqa: F401  (registers layerwise_encoding before the entry point exists)
from conftest import tiny_config
from brainharness.backbone import Backbone, StimulusBatch
from brainharness.data import Responses
from brainharness.errors import ConfigError, HarnessError
from brainharness.features import FeatureCache
from brainharness.runner import Runner
from brainharness.leaderboard import build_tables, write_leaderboard
from brainharness.tasks.layerwise import BEST_LAYER_SECTION
from brainharness.tasks.layerwise import resolve_layers
from test_features import stimuli

EARLY = ("V1", "V2", "V3", "hV4")
CATEGORY = ("EBA", "FBA", "OFA", "FFA", "OPA", "PPA", "OWFA", "VWFA")
TASK = {"name": "layerwise_encoding", "layers": ["mix.*", "pixels"]}


@pytest.fixture(scope="module")
def lw_run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("lw"), tasks=[TASK],
                      backbones=[{"name": "oracle", "label": "oracle-mix"}, {"name": "pixels", "size": 8}])
    runner = Runner(cfg, progress=False)
    return runner, {r["key"]["backbone"]: r for r in runner.run()}


# -- known truth ------------------------------------------------------------------------------
def test_oracle_mix_layers_map_early_rois_first_and_category_rois_last(lw_run):
    runner, records = lw_run
    rec = records["oracle-mix"]
    chosen = {row["roi"]: row["layer"] for row in rec["tables"]["per_roi"]}
    assert rec["details"]["layers"] == [f"mix.{k}" for k in range(5)]
    assert rec["details"]["unmatched_layer_patterns"] == ["pixels"]
    assert {chosen[r] for r in EARLY} == {"mix.0"}, chosen
    assert {chosen[r] for r in CATEGORY} == {"mix.4"}, chosen
    # the voxel-level map (validation Pearson r) agrees for the retinotopic voxels
    side = runner.store.per_voxel(rec["_path"])
    rois = runner.dataset.subject("subj01").rois
    early = np.any([rois[r] for r in EARLY], 0)
    assert np.mean(side["best_layer_index"][early] == 0) > 0.8
    # the chosen layers are near the ceiling; the full matrix is kept, labelled descriptive
    assert all(row["median_nc_r2"] > 70 for row in rec["tables"]["per_roi"] if row["roi"] != "nsdgeneral")
    assert len(rec["tables"]["layer_scores"]) == 5 * (1 + len(rois))
    assert "descriptive" in rec["details"]["layer_scores"]
    assert rec["main_score"] == "median_nc_r2" and rec["scores"]["best_layer_index"] == 0


def test_mix_layer_endpoints_are_the_generating_features(lw_run):
    runner, _ = lw_run
    oracle, stim = runner.backbone({"name": "oracle", "label": "oracle-mix"}), runner.dataset.stimuli
    ids = runner.dataset.subject("subj01").train.stim_ids[:20]
    out = oracle.encode_layers(StimulusBatch(stim, ids), ["mix.0", "mix.4"])
    rows = stim.rows(ids)
    low, cat = stim.extras["features_low"][rows], stim.extras["features_category"][rows]
    np.testing.assert_allclose(out["mix.0"][:, :low.shape[1]], low, atol=1e-6)
    np.testing.assert_allclose(out["mix.4"][:, low.shape[1]:], cat, atol=1e-6)
    assert not np.allclose(out["mix.0"][:, low.shape[1]:], cat)  # category block: other stimuli's
    assert oracle.layer == "all"  # the default layer did not move


# -- one pass, per-layer files, resume ----------------------------------------------------------
class MultiLayer(Backbone):
    """Three layers from one 'forward pass'; counts passes and can fail after k of them."""

    registry_name = "multi"
    fail_after: int | None = None

    def __init__(self, **kw):
        self.passes, self.seen = 0, []
        super().__init__(batch_size=4, **kw)

    def layers(self):
        return ["a", "b", "c"]

    def encode(self, batch, layer):
        raise AssertionError("encode_layers must be used")

    def encode_layers(self, batch, layers):
        if self.fail_after is not None and self.passes >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.passes += 1
        self.seen.append((len(batch.ids), tuple(layers)))
        x = batch.images.reshape(len(batch.ids), -1).astype(np.float32)
        return {layer: x[:, :3] * (1 + "abc".index(layer)) for layer in layers}


def test_one_pass_writes_one_cache_file_per_layer_and_resumes(tmp_path):
    cache, stim, ids = FeatureCache(tmp_path), stimuli(), np.arange(100, 118)
    bb = MultiLayer()
    bb.fail_after = 2
    with pytest.raises(KeyboardInterrupt):
        cache.features_multi(bb, stim, ids, ["a", "b", "c"])
    partial = sorted(tmp_path.rglob("*.partial"))
    assert len(partial) == 3 and not list(tmp_path.rglob("*.h5"))
    for path in partial:
        with h5py.File(path) as f:
            assert f.attrs["n_done"] == 8
    bb.fail_after = None
    feats, info = cache.features_multi(bb, stim, ids, ["a", "b", "c"])
    assert {i["cache"] for i in info.values()} == {"resumed at row 8"}
    # one call per batch for all three layers: 2 before the interruption, 3 after it (18 rows)
    assert bb.seen == [(4, ("a", "b", "c"))] * 4 + [(2, ("a", "b", "c"))]
    assert len(list(tmp_path.rglob("*.h5"))) == 3 and len({i["key"] for i in info.values()}) == 3
    x = stim.images(ids).reshape(18, -1)[:, :3].astype(np.float32)
    for k, layer in enumerate("abc"):
        np.testing.assert_array_equal(feats[layer], x * (1 + k))
        single, i = cache.features(bb, stim, ids, layer)  # the single-layer API reads the same file
        assert i["cache"] == "hit" and i["key"] == info[layer]["key"]
        np.testing.assert_array_equal(single, feats[layer])
    assert bb.passes == 5


def test_only_missing_layers_are_encoded(tmp_path):
    cache, stim, ids = FeatureCache(tmp_path), stimuli(), np.arange(100, 118)
    bb = MultiLayer()
    cache.features(bb, stim, ids, "b")
    bb.seen.clear()
    _, info = cache.features_multi(bb, stim, ids, ["a", "b"])
    assert info["b"]["cache"] == "hit" and info["a"]["cache"] == "miss"
    assert {layers for _, layers in bb.seen} == {("a",)}


def test_default_encode_layers_loops_over_encode(tmp_path):
    from test_features import Counting

    bb = Counting()
    feats, _ = FeatureCache(tmp_path).features_multi(bb, stimuli(), np.arange(100, 118), ["mean", "max"])
    assert bb.calls == 2 * 5 and set(feats) == {"mean", "max"}


def test_runner_prefetches_all_layers_in_one_call(lw_run, monkeypatch):
    runner, _ = lw_run
    calls = []
    orig = runner.cache.features_multi

    def spy(backbone, stimuli, ids, layers, progress=False):
        calls.append(list(layers))
        return orig(backbone, stimuli, ids, layers, progress)

    monkeypatch.setattr(runner.cache, "features_multi", spy)
    rec = runner.run_unit("subj01", runner.cfg["backbones"][0], TASK, experiment="prefetch", track=False)
    assert calls == [[f"mix.{k}" for k in range(5)]]
    assert set(rec["features"]) == set(calls[0])


# -- the layer is chosen on validation only -----------------------------------------------------
def test_validation_mode_never_sees_the_test_split(lw_run, monkeypatch):
    runner, _ = lw_run
    seen = []
    for name in ("features", "features_multi"):
        orig = getattr(runner.cache, name)

        def spy(backbone, stimuli, ids, *a, _orig=orig, **kw):
            seen.append(np.asarray(ids))
            return _orig(backbone, stimuli, ids, *a, **kw)

        monkeypatch.setattr(runner.cache, name, spy)
    rec = runner.run_unit("subj01", runner.cfg["backbones"][0], TASK, evaluated_on="validation",
                          experiment="val", track=False)
    test_ids = set(runner.dataset.subject("subj01").test.stim_ids.tolist())
    assert seen and all(not (set(s.tolist()) & test_ids) for s in seen)
    assert rec["evaluated_on"] == "validation"


def test_test_split_cannot_change_the_chosen_layers(lw_run, monkeypatch):
    """Replace the test responses by noise: the chosen layers and their validation scores stay
    the same (only the reported test scores change), although the noise would have picked others."""
    runner, records = lw_run
    real = records["oracle-mix"]
    subject = runner.dataset.subject("subj01")
    rng = np.random.default_rng(1)
    noisy = Responses(subject.test.stim_ids, rng.standard_normal(subject.test.averaged.shape).astype(np.float32))
    monkeypatch.setitem(runner.dataset.subjects, "subj01", replace(subject, test=noisy))
    rec = runner.run_unit("subj01", runner.cfg["backbones"][0], TASK, experiment="noisy-test", track=False)

    def chosen(r):
        return {row["roi"]: row["layer"] for row in r["tables"]["per_roi"]}

    def column(r, name):
        return [(row["roi"], row["layer"], row[name]) for row in r["tables"]["layer_scores"]]

    assert chosen(rec) == chosen(real) and rec["details"]["best_layer"] == real["details"]["best_layer"]
    assert column(rec, "validation") == column(real, "validation")
    assert column(rec, "test") != column(real, "test")
    by_test = {}
    for roi, layer, value in column(rec, "test"):
        if value is not None and value > by_test.get(roi, (None, -1))[1]:
            by_test[roi] = (layer, value)
    assert any(by_test[r][0] != chosen(real)[r] for r in by_test if r in chosen(real))


def test_selection_reader_refuses_ids_outside_the_fit_split():
    read = brainharness.tasks.layerwise._only(lambda ids, layer=None: np.zeros((len(ids), 1)), np.array([1, 2, 3]))
    assert read(np.array([1, 3])).shape == (2, 1)
    with pytest.raises(HarnessError, match="outside the fit split"):
        read(np.array([3, 4]))


def test_layer_specs():
    readable = ["embedding", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert resolve_layers("every", readable) == (readable, [])
    assert resolve_layers("blocks.*", readable, 2) == (["blocks.0", "blocks.2"], [])
    assert resolve_layers(["blocks.3", "embedding", "mix.*"], readable) == (["blocks.3", "embedding"], ["mix.*"])
    with pytest.raises(ConfigError, match="no readable layer matches"):
        resolve_layers(["mix.*"], readable)
    for bad in ({"layer_stride": 0}, {"layers": 3}, {"validation_fraction": 1.0}):
        with pytest.raises(ConfigError):
            brainharness.tasks.layerwise.LayerwiseEncodingTask(**bad)


# -- leaderboard ------------------------------------------------------------------------------
def test_leaderboard_is_shaped_like_table_13_with_best_layers_and_heatmaps(lw_run, tmp_path):
    runner, records = lw_run
    rec = records["oracle-mix"]
    root = runner.cfg["results_dir"]
    df = build_tables(root)["layerwise_encoding"]
    assert df.attrs["layout"] == "layerwise"
    assert df.attrs["value_columns"][:13] == ["all", "V1", "V2", "V3", "hV4", "EBA", "FBA", "OFA", "FFA", "OPA",
                                              "PPA", "OWFA", "VWFA"]
    paths = write_leaderboard(root, tmp_path / "lb")
    with open(paths["layerwise_encoding"]["csv"], newline="") as f:
        rows = {(r["backbone"], r["experiment"]): r for r in csv.DictReader(f)}  # other tests add experiments
    oracle = rows[("oracle-mix", "t")]
    assert float(oracle["all"]) == pytest.approx(rec["scores"]["median_nc_r2"])
    cells = {row["roi"]: row for row in rec["tables"]["per_roi"]}
    assert float(oracle["FFA"]) == pytest.approx(cells["FFA"]["median_nc_r2"])
    assert float(oracle["hV4"]) == pytest.approx(cells["hV4"]["median_nc_r2"])
    assert oracle["V1 layer"] == "mix.0" and oracle["FFA layer"] == "mix.4" and oracle["all layer"] == "mix.0"
    assert oracle["layer"] == "mix.0…mix.4 (5)" and rows[("pixels", "t")]["V1 layer"] == "pixels"

    md = paths["layerwise_encoding"]["md"].read_text()
    best = md.split(f"### {BEST_LAYER_SECTION}")[1]
    line = next(l for l in best.splitlines() if "| oracle-mix |" in l and "| t |" in l)
    assert line.count("mix.4") == len(CATEGORY) + 1  # + the layer-range column
    assert "nan" not in md.lower()
    heatmaps = [p for name, p in paths["layerwise_encoding"].items() if name.startswith("layers_")]
    assert len(heatmaps) == len(df) and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in heatmaps)
    assert any("oracle-mix" in p.name for p in heatmaps)
    html_path = paths["layerwise_encoding"]["html"]
    html = html_path.read_text()
    shown = re.findall(r'<img [^>]*src="([^"]+\.png)"', html)  # the site links its plots
    assert len(shown) >= 4 and all((html_path.parent / f).is_file() for f in shown) and BEST_LAYER_SECTION in html
    assert BEST_LAYER_SECTION.split(" (")[0] in paths["layerwise_encoding"]["tex"].read_text()
