"""The leaderboard groups rows by dataset identity (never pools two variants) and never ranks
controls: the oracle ceiling, its shuffled floor and layout reference rows are listed with their
reason; chance is a level line. Built from real tiny runs on two synthetic variants."""
from __future__ import annotations

import copy
import csv

import pytest

from conftest import tiny_config
from brainharness.backbones.baselines import Oracle, Pixels
from brainharness.leaderboard import build_tables, render_html, render_latex, render_markdown, write_leaderboard
from brainharness.leaderboard.identity import UNKNOWN_LABEL, control_of, dataset_variant
from brainharness.results import ResultStore
from brainharness.runner import Runner

BACKBONES = [{"name": "oracle", "layer": "all"},
             {"name": "oracle", "label": "oracle-shuffled", "layer": "all", "shuffle_seed": 1},
             {"name": "pixels", "size": 8}, {"name": "random-features", "size": 8, "n_features": 64}]
TASKS = [{"name": "encoding"}, {"name": "retrieval", "n_candidates": 50, "n_trials": 3}]
REASONS = {"oracle": "control: ceiling", "oracle-shuffled": "control: shuffled floor"}


@pytest.fixture(scope="module")
def two_variants(tmp_path_factory):
    """One store, two synthetic variants (data seed 0 and 1), each run for real."""
    root = tmp_path_factory.mktemp("variants")
    records = {}
    for seed in (0, 1):
        cfg = tiny_config(root, backbones=BACKBONES, tasks=TASKS, results_dir=str(root / "results" / f"seed{seed}"))
        cfg["dataset"] = {**cfg["dataset"], "seed": seed}
        for r in Runner(cfg, progress=False).run():
            records[(seed, r["key"]["backbone"], r["key"]["task"])] = r
    return root / "results", records


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_backbones_declare_their_controls(two_variants):
    assert Oracle.control({}) == "ceiling" and Oracle.control({"shuffle_seed": 0}) == "shuffled floor"
    assert Pixels.control({"size": 8}) is None
    _, records = two_variants
    stored = {b: records[(0, b, "encoding")]["backbone"]["control"] for b in ("oracle", "oracle-shuffled", "pixels")}
    assert stored == {"oracle": "ceiling", "oracle-shuffled": "shuffled floor", "pixels": None}


def test_two_variants_are_two_groups_each_ranked_on_its_own(two_variants, tmp_path):
    root, records = two_variants
    tables = build_tables(root)
    for task in ("encoding", "retrieval"):
        df = tables[task]
        assert df["data_id"].nunique() == 2 and df["dataset"].unique().tolist() == ["synthetic"]
        labels = df.drop_duplicates("data_id")["dataset variant"].tolist()
        assert len(set(labels)) == 2 and ["seed=1" in x for x in labels] == [False, True]
        for data_id, part in df.groupby("data_id"):
            ranked = part[part["ranked"]].sort_values("rank")
            assert sorted(ranked["backbone"]) == ["pixels", "random-features"]  # the controls are not competitors
            tied = ranked["main_score"].nunique() == 1  # ties share the lower rank
            assert list(ranked["rank"]) == ([1, 1] if tied else [1, 2]) and ranked["main_score"].is_monotonic_decreasing
            refs = part[part["reference"]].set_index("backbone")
            assert sorted(refs.index) == ["oracle", "oracle-shuffled"] and refs["rank"].isna().all()
            assert refs["not_ranked_reason"].to_dict() == REASONS
        # each row shows its own variant's score: the two pixels rows differ (different data)
        pix = df[df["backbone"] == "pixels"].set_index("dataset variant")["main_score"]
        seed = {v: 1 if "seed=1" in v else 0 for v in pix.index}
        for label, value in pix.items():
            assert value == pytest.approx(records[(seed[label], "pixels", task)]["scores"][
                records[(seed[label], "pixels", task)]["main_score"]])
        assert pix.iloc[0] != pix.iloc[1]

    paths = write_leaderboard(root, tmp_path / "lb")
    rows = _csv(paths["encoding"]["csv"])
    assert {r["dataset variant"] for r in rows} == set(tables["encoding"]["dataset variant"])
    assert all(r["data_id"] for r in rows)
    ranked = [(r["dataset variant"], r["backbone"], r["rank"]) for r in rows if r["ranked"] == "True"]
    assert sorted(r for _, _, r in ranked) == ["1", "1", "2", "2"]  # ranks restart per variant
    assert all(r["rank"] == "" for r in rows if r["backbone"].startswith("oracle"))

    md = paths["encoding"]["md"].read_text()
    blocks = md.split("### Dataset synthetic(")[1:]
    assert len(blocks) == 2
    for block in blocks:
        ranked_part, _, rest = block.partition("#### Reference rows (not ranked)")
        table_rows = [l for l in ranked_part.splitlines() if l.startswith("| ") and not l.startswith("| rank")]
        assert [l.split("|")[1].strip() for l in table_rows] == ["1", "2"]
        assert "oracle" not in ranked_part
        assert "| control: ceiling | synthetic | subj01 | oracle |" in rest
        assert "| control: shuffled floor | synthetic | subj01 | oracle-shuffled |" in rest
    html = render_html(tables)
    assert html.count("<h3>Dataset synthetic(") == 2 * len(tables) and "Reference rows (not ranked)" in html
    tex = render_latex("encoding", tables["encoding"])
    assert tex.count(r"\textbf{Dataset synthetic(") == 2 and "control: shuffled floor" in tex
    for name in ("png", "heatmap_png"):
        assert paths["encoding"][name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chance_is_a_level_not_a_row(two_variants):
    root, _ = two_variants
    df = build_tables(root)["retrieval"]
    levels = df.attrs["levels"]
    assert set(levels) == {(d, "subj01") for d in df["data_id"].unique()}
    assert all(v == [("chance (50 candidates)", pytest.approx(1 / 50))] for v in levels.values())
    assert "chance" not in set(df["backbone"])


def _strip(record: dict) -> dict:
    """The record as written before data ids, variant labels and control declarations existed."""
    old = copy.deepcopy({k: v for k, v in record.items() if not k.startswith("_")})
    old["key"].pop("data_id", None)
    old["dataset"].pop("variant", None)
    old["dataset"].pop("id", None)
    old["backbone"].pop("control", None)
    return old


def test_records_without_the_new_fields_group_by_their_info(two_variants, tmp_path):
    _, records = two_variants
    store = ResultStore(tmp_path / "old")
    for (seed, backbone, task), r in records.items():
        if task == "encoding":
            store.save(_strip(r))
    # the same data cached elsewhere is the same variant; a changed loader version is another one
    moved = _strip(records[(0, "pixels", "encoding")])
    moved["key"]["experiment"] = "moved-cache"
    moved["dataset"]["info"].update(cache_dir="/elsewhere", path="/elsewhere/x.h5")
    store.save(moved)
    df = build_tables(tmp_path / "old")["encoding"]
    assert df["data_id"].nunique() == 2 and all(d.startswith("info-") for d in df["data_id"])
    pix = df[df["backbone"] == "pixels"]
    same = pix[pix["data_id"] == pix[pix["experiment"] == "moved-cache"]["data_id"].iloc[0]]
    assert sorted(same["experiment"]) == ["moved-cache", "t"] and same["rank"].nunique() == 1  # one group, tied
    refs = df[df["reference"]].set_index(["dataset variant", "backbone"])["not_ranked_reason"]
    assert sorted(set(refs)) == ["control: ceiling", "control: shuffled floor"]  # asked of the plugin
    assert not df[df["backbone"].str.startswith("oracle")]["ranked"].any()

    relabelled = _strip(records[(0, "pixels", "encoding")])
    relabelled["key"]["experiment"] = "version-2"
    relabelled["dataset"]["info"]["version"] = "2"
    store.save(relabelled)
    df = build_tables(tmp_path / "old")["encoding"]
    assert df["data_id"].nunique() == 3
    assert df.drop_duplicates("data_id")["dataset variant"].nunique() == 3  # same readable label: id appended


def test_new_fields_are_preferred_and_unrecorded_parameters_say_so(two_variants):
    _, records = two_variants
    r = copy.deepcopy(records[(1, "pixels", "encoding")])
    r["key"]["data_id"], r["dataset"]["variant"] = "abc123", "seed=1"
    assert dataset_variant(r).id == "abc123" and dataset_variant(r).label == "seed=1"
    bare = {"key": {"dataset": "synthetic", "subject": "subj01"}, "dataset": {"name": "synthetic", "info": {}}}
    assert dataset_variant(bare).label == f"synthetic ({UNKNOWN_LABEL})"
    for r in records.values():  # derived from an old record's info, the label reads as the runner writes it
        assert dataset_variant(_strip(r)).label == r["dataset"]["variant"]
        assert dataset_variant(_strip(r)).id.startswith("info-")
    old = _strip(records[(1, "oracle-shuffled", "encoding")])
    assert control_of(old) == "shuffled floor" and control_of(_strip(records[(1, "pixels", "encoding")])) is None
