"""Each task owns its leaderboard layout: a task defined in this file (registered in-process)
gets its own tables, columns, ranking direction, reference rows and notes with no change to the
leaderboard; a record whose task plugin is not installed gets the default layout and a note."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from brainharness import registry
from brainharness.layout import DEFAULT_LAYOUT, Layout, Row, Scores, Table
from brainharness.leaderboard import build_tables, render_markdown, write_leaderboard
from brainharness.registry import register_task
from brainharness.results import ResultStore
from brainharness.task import Task

ROOT = Path(__file__).resolve().parents[1]


def split_folds(record: dict) -> list[Row]:
    """One row per cross-validation fold, plus the chance level as a reference row."""
    folds = (record.get("tables") or {}).get("folds") or []
    rows = [Row({**record, "scores": {"error": f["error"], "n_items": f["n"]}, "main_score": "error"},
                {"system": f"fold {f['fold']}"}) for f in folds]
    if folds:
        rows.append(Row({**record, "scores": {"error": record["scores"]["chance_error"]}, "main_score": "error"},
                        {"system": "chance"}, reference="reference row: chance level"))
    return rows


@register_task("test-layout-error-rate")
class ErrorRateTask(Task):
    main_score = "error"
    layout = Layout(Table(suffix="folds", name="error-folds", title="classification error per fold",
                          description="lower is better", split=split_folds, labels=("system",),
                          columns=Scores((("error %", ("error", "errorpct")), ("n_items", ("nitems",)),
                                          ("recall", ("recall",))), always=2),
                          higher_is_better=False, notes=lambda rows: [f"{len(rows)} rows from the fold tables"]))


@register_task("test-layout-none-declared")
class PlainTask(Task):
    main_score = "acc"


def record(task: str, label: str, scores: dict, tables: dict, *, backbone="m", weights="pretrained", main="error"):
    return {
        "key": {"dataset": "synthetic", "subject": "subj01", "backbone": backbone, "weights": weights,
                "task": label, "experiment": "x"},
        "status": "complete", "evaluated_on": "test", "main_score": main, "scores": scores, "tables": tables,
        "backbone": {"name": backbone, "weights": {"source": weights, "id": None}, "layer": None},
        "task": {"name": task, "params": {}}, "dataset": {"name": "synthetic", "info": {}},
        "provenance": {"seed": 0}, "timings": {}, "tracking": {},
    }


def folds(*errors):
    return {"folds": [{"fold": k + 1, "error": e, "n": 40} for k, e in enumerate(errors)]}


def test_a_task_defined_here_renders_its_own_table_and_ranking(tmp_path):
    s = ResultStore(tmp_path / "r")
    # the key's task is a label; the layout comes from the plugin named in record["task"]
    # the main score is per fold (table rows): null among the record's own scores
    s.save(record("test-layout-error-rate", "errors-v1", {"chance_error": 50.0, "error": None}, folds(12.5, 8.0, 20.0)))
    s.save(record("test-layout-error-rate", "errors-v1", {"chance_error": 50.0, "error": None}, folds(1.0),
                  backbone="r", weights="random-init"))
    s.save(record("test-layout-error-rate", "errors-v1", {"error": 3.0}, {}, backbone="nofolds"))
    tables = build_tables(tmp_path / "r")
    assert set(tables) == {"errors-v1-folds", "errors-v1"}  # no fold table: shown in the default table

    df = tables["errors-v1-folds"]
    assert df.attrs["layout"] == "error-folds" and df.attrs["value_columns"] == ["error %", "n_items"]
    assert df.attrs["main_column"] == "error %" and df.attrs["formats"]["error %"] == "pct"
    ranked = df[df["ranked"]]
    assert list(ranked["system"]) == ["fold 2", "fold 1", "fold 3"]  # lower error is better
    assert list(ranked["rank"]) == [1, 2, 3] and list(ranked["error %"]) == [8.0, 12.5, 20.0]
    chance = df[df["system"] == "chance"].set_index("backbone")
    assert not chance.at["m", "ranked"] and chance.at["m", "not_ranked_reason"] == "reference row: chance level"
    assert df[df["backbone"] == "r"]["rank"].isna().all()  # random-init: never ranked

    md = render_markdown("errors-v1-folds", df)
    assert "## errors-v1-folds — classification error per fold" in md and "Lower is better." in md
    assert "Ranked by `error` (column error %), ascending" in md
    header = next(l for l in md.splitlines() if l.startswith("| rank"))
    assert [c.strip() for c in header.strip("|").split("|")][4] == "system" and "recall" not in header
    first = next(l for l in md.splitlines() if l.startswith("| 1 |"))
    assert "| fold 2 |" in first and "| 8.0 | 40 |" in first
    refs = md.split("#### Reference rows (not ranked)")[1].split("####")[0]  # listed with the reason, no rank
    assert "| reference row: chance level | synthetic | subj01 | m | chance |" in refs
    assert "- 6 rows from the fold tables" in md  # the layout's notes hook saw the table's rows

    assert tables["errors-v1"].attrs["layout"] == "generic" and tables["errors-v1"]["error"].iloc[0] == 3.0
    paths = write_leaderboard(tmp_path / "r", tmp_path / "lb")
    with open(paths["errors-v1-folds"]["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["system"] for r in rows[:3]] == ["fold 2", "fold 1", "fold 3"] and rows[0]["error %"] == "8.0"
    assert paths["errors-v1-folds"]["png"].read_bytes()[:4] == b"\x89PNG"


def test_unknown_task_gets_the_default_layout_and_a_note(tmp_path):
    s = ResultStore(tmp_path / "r")
    s.save(record("not-installed-task", "mine", {"n_items": 12, "acc": 0.5, "loss_pct": 12.5}, {}, main="acc"))
    s.save(record("test-layout-none-declared", "plain", {"acc": 0.25, "n_items": 3}, {}, main="acc"))
    tables = build_tables(tmp_path / "r")
    df = tables["mine"]
    assert df.attrs["value_columns"] == ["acc", "n_items", "loss_pct"]  # main score first
    assert df.attrs["notes"] == ["task plugin 'not-installed-task' is not installed: shown with the default "
                                 "layout (one column per scalar score)"]
    md = render_markdown("mine", df)
    assert "| 1 | synthetic | subj01 | m | pretrained | x | 0 | 0.500 | 12 | 12.5 |" in md
    assert "not installed" in md
    plain = tables["plain"]  # a registered task that declares no layout: the default, without a note
    assert PlainTask.layout is DEFAULT_LAYOUT and plain.attrs["notes"] == []
    assert plain.attrs["value_columns"] == ["acc", "n_items"] and plain["rank"].iloc[0] == 1


def test_builtin_tasks_declare_their_layouts():
    tables = {name: [t.table_name(name) for t in registry.tasks.get(name).layout.tables]
              for name in ("encoding", "retrieval", "layerwise_encoding", "aligned_encoding", "decoding")}
    assert tables["decoding"] == ["decoding-retrieval", "decoding-captioning", "decoding-roi-captions"]
    assert tables["encoding"] == ["encoding"] and tables["layerwise_encoding"] == ["layerwise_encoding", "layerwise_encoding-raw-r2"]
    assert registry.tasks.get("aligned_encoding").layout == registry.tasks.get("encoding").layout


def test_leaderboard_knows_no_task_by_name():
    names = set(registry.tasks.names()) | {"captioning", "layerwise", "roi_captions"}
    for path in sorted((ROOT / "leaderboard").glob("*.py")):
        src = path.read_text()
        for name in names:
            assert not re.search(rf"\b{re.escape(name)}\b", src, re.IGNORECASE), (path.name, name)
        assert not re.search(r"""["']layout["']\s*\)?\s*(==|!=|\bin\b|\bnot in\b)""", src), path.name
    assert not (ROOT / "leaderboard" / "decoding.py").exists()


def test_layout_needs_tables_with_distinct_names():
    with pytest.raises(TypeError):
        Layout()
    with pytest.raises(ValueError, match="differ"):
        Layout(Table(suffix="a"), Table(suffix="a"))
