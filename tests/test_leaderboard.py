"""Leaderboard: built from the results store alone; missing stays missing; random-init never ranked."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from dataclasses import replace

from brainharness.layout import Layout
from brainharness.leaderboard import build_tables, render_all_markdown, render_markdown, write_leaderboard
from brainharness.registry import register_task
from brainharness.results import ResultStore
from brainharness.task import Task
from brainharness.tasks.decoding_layout import DECODING_LAYOUT

ROIS = ("V1", "V2", "V3", "hV4", "EBA", "FBA", "OFA", "FFA", "OPA", "PPA", "OWFA", "VWFA")


@register_task("test-captioning")
class CaptioningTask(Task):
    """A task scored by one caption-metric row per record: seed 000 Table 2 columns, as the
    decoding layout's captioning table declares them."""

    layout = Layout(replace(DECODING_LAYOUT.tables[1], suffix=None, split=None, labels=()))


def _weights(source, ident=None):
    return {"source": source, "id": ident, "revision": None}


def encoding_record(backbone, weights, all_score, roi_scores, *, subject="subj01", experiment="demo",
                    seed=0, status="complete", evaluated_on="test", layer="visual.blocks.11", family="clip"):
    per_roi = [{"roi": roi, "n_voxels": 50, "n_voxels_kept": 40, "mean_r2": 0.01, "median_r2": 0.01,
                "mean_nc_r2": None if v is None else v + 1.0, "median_nc_r2": v, "median_noise_ceiling": 30.0}
               for roi, v in roi_scores.items()]
    return {
        "key": {"dataset": "synthetic", "subject": subject, "backbone": backbone,
                "weights": weights["source"] if weights["id"] is None else f"{weights['source']}-{weights['id']}",
                "task": "encoding", "experiment": experiment},
        "status": status, "evaluated_on": evaluated_on, "main_score": "median_nc_r2",
        "scores": {"n_voxels": 600, "mean_r2": 0.02, "median_r2": 0.01, "n_voxels_kept": 480,
                   "mean_nc_r2": all_score + 2.0, "median_nc_r2": all_score, "median_noise_ceiling": 30.0,
                   "nc_threshold": 10.0},
        "tables": {"per_roi": per_roi},
        "backbone": {"name": backbone, "family": family, "weights": weights, "layer": layer, "readout": "avg"},
        "task": {"name": "encoding", "params": {}}, "dataset": {"name": "synthetic", "info": {}},
        "provenance": {"seed": seed, "config": {}, "packages": {}, "code": {}, "created": "2025-01-01T00:00:00"},
        "timings": {}, "tracking": {}, **({"error": "RuntimeError: failed in a test"} if status == "failed" else {}),
    }


def retrieval_record(backbone, weights, means, *, experiment="stage2", seed=0):
    rows = []
    for direction, (mean, half) in means.items():
        rows.append({"direction": direction, "mean": mean, "ci_low": mean - half, "ci_high": mean + half,
                     "n_candidates": 300, "n_trials": 50 if "text" in direction else 30, "chance": 1 / 300,
                     "seed": 0})
    return {
        "key": {"dataset": "synthetic", "subject": "subj01", "backbone": backbone, "weights": weights["source"],
                "task": "retrieval", "experiment": experiment},
        "status": "complete", "evaluated_on": "test", "main_score": "top1_brain→image",
        "scores": {f"top1_{d}": m for d, (m, _) in means.items()},
        "tables": {"retrieval": rows},
        "backbone": {"name": backbone, "family": "blip2", "weights": weights, "layer": "qformer", "readout": None},
        "task": {"name": "retrieval", "params": {}}, "dataset": {"name": "synthetic", "info": {}},
        "provenance": {"seed": seed}, "timings": {}, "tracking": {},
    }


FULL = {roi: 10.0 + i for i, roi in enumerate(ROIS)}


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "results"
    s = ResultStore(root)
    pv = {"pearson_r": np.zeros(4, np.float32)}
    # ranked (pretrained, local, none) with different main scores
    s.save(encoding_record("clip-vit-b-16", _weights("pretrained", "openai"), 31.25, FULL), pv)
    s.save(encoding_record("eva02-base", _weights("local", "/ckpt/eva02.pt"), 40.5, FULL), pv)
    # a missing ROI (FFA absent, OPA reported as None): "all" deliberately not the ROI mean
    partial = {k: v for k, v in FULL.items() if k != "FFA"}
    partial["OPA"] = None
    s.save(encoding_record("pixels", _weights("none"), 5.0, partial, family="baseline", layer=None), pv)
    # random-init: the best score of all, and still never ranked
    s.save(encoding_record("clip-vit-b-16", _weights("random-init"), 99.0, FULL), pv)
    # same backbone, second experiment: a separate, distinguishable row
    s.save(encoding_record("clip-vit-b-16", _weights("pretrained", "openai"), 20.0, FULL,
                           experiment="layerwise"), pv)
    # must never appear
    s.save(encoding_record("leaky", _weights("pretrained", "x"), 77.7, FULL, evaluated_on="validation",
                           experiment="sweep-trial-3"))
    s.save(encoding_record("broken", _weights("pretrained", "y"), 66.6, FULL, status="failed"))
    s.save(retrieval_record("blip2-qformer", _weights("pretrained", "Salesforce/blip2-opt-2.7b"),
                            {"brain→image": (0.722, 0.02), "image→brain": (0.549, 0.015),
                             "text→brain": (0.45, 0.01), "brain→text": (0.496, 0.012)}))
    s.save(retrieval_record("blip2-qformer", _weights("pretrained", "Salesforce/blip2-opt-2.7b"),
                            {"brain→image": (0.437, 0.02), "image→brain": (0.222, 0.01)}, experiment="stage1"))
    s.save(retrieval_record("blip2-qformer", _weights("random-init"), {"brain→image": (0.01, 0.005)}))
    return root


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_tables_and_csv_values_equal_record_values(store, tmp_path):
    tables = build_tables(store)
    assert set(tables) == {"encoding", "retrieval"}
    paths = write_leaderboard(store, tmp_path / "lb")
    rows = _csv(paths["encoding"]["csv"])
    clip = [r for r in rows if r["backbone"] == "clip-vit-b-16" and r["weights"] == "pretrained:openai"
            and r["experiment"] == "demo"]
    assert len(clip) == 1
    (clip,) = clip
    assert float(clip["all"]) == 31.25
    for i, roi in enumerate(ROIS):
        assert float(clip[roi]) == 10.0 + i
    assert clip["seed"] == "0" and clip["layer"] == "visual.blocks.11" and clip["readout"] == "avg"

    rrows = _csv(paths["retrieval"]["csv"])
    stage2 = next(r for r in rrows if r["experiment"] == "stage2" and r["weights"].startswith("pretrained"))
    assert float(stage2["brain→image mean"]) == 0.722
    assert float(stage2["brain→image ci_low"]) == pytest.approx(0.702)
    assert float(stage2["brain→image ci_high"]) == pytest.approx(0.742)
    assert float(stage2["brain→text mean"]) == 0.496
    assert float(stage2["text→brain mean"]) == 0.45


def test_missing_roi_stays_missing_and_is_never_averaged(store, tmp_path):
    df = build_tables(store)["encoding"]
    pix = df[df["backbone"] == "pixels"].iloc[0]
    assert math.isnan(pix["FFA"]) and math.isnan(pix["OPA"])
    assert pix["all"] == 5.0  # the record's own whole-brain median, not a mean over ROI cells
    assert not any("mean" in str(c).lower() or "avg" in str(c).lower() for c in df.columns
                   if c not in ("main_score",))
    assert not any(str(v).lower() in ("mean", "average") for v in df["backbone"])  # no summary row

    paths = write_leaderboard(store, tmp_path / "lb")
    row = next(r for r in _csv(paths["encoding"]["csv"]) if r["backbone"] == "pixels")
    assert row["FFA"] == "" and row["OPA"] == "" and row["layer"] == ""
    md = paths["encoding"]["md"].read_text()
    line = next(l for l in md.splitlines() if "| pixels |" in l)
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = next(l for l in md.splitlines() if l.startswith("| rank |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    assert cells[names.index("FFA")] == "—" and cells[names.index("OPA")] == "—"
    assert cells[names.index("all")] == "5.0"
    assert "nan" not in md.lower()


def test_random_init_is_not_ranked_and_listed_separately(store):
    df = build_tables(store)["encoding"]
    rnd = df[df["weights"] == "random-init"]
    assert len(rnd) == 1 and not rnd["ranked"].iloc[0] and rnd["rank"].isna().all()
    assert rnd["not_ranked_reason"].iloc[0] == "random-init weights"
    pix = df[df["backbone"] == "pixels"]  # "none": a fixed baseline with no learned weights, ranked
    assert pix["ranked"].iloc[0] and pix["rank"].iloc[0] == 4

    md = render_markdown("encoding", df)
    ranked_part, _, unranked_part = md.partition("### Not ranked: random-init weights")
    assert unranked_part, md
    assert "random-init" not in "".join(l for l in ranked_part.splitlines() if l.startswith("| "))
    rnd_line = next(l for l in unranked_part.splitlines() if "random-init" in l)
    assert "99.0" in rnd_line and not rnd_line.startswith("| 1 |")
    unranked_header = next(l for l in unranked_part.splitlines() if l.startswith("| "))
    assert "rank" not in unranked_header

    rdf = build_tables(store)["retrieval"]
    assert rdf[rdf["weights"] == "random-init"]["rank"].isna().all()


def test_validation_and_failed_records_are_absent(store, tmp_path):
    df = build_tables(store)["encoding"]
    assert "leaky" not in set(df["backbone"]) and "broken" not in set(df["backbone"])
    assert len(df) == 5
    text = render_all_markdown(store)
    assert "leaky" not in text and "77.7" not in text and "broken" not in text and "66.6" not in text
    paths = write_leaderboard(store, tmp_path / "lb")
    for fmt in ("md", "csv", "tex", "html"):
        content = paths["encoding"][fmt].read_text()
        assert "leaky" not in content and "sweep-trial" not in content and "broken" not in content


def test_ranking_by_main_score_descending(store):
    df = build_tables(store)["encoding"]
    ranked = df[df["ranked"]]
    assert list(ranked["main_score"]) == sorted(ranked["main_score"], reverse=True)
    assert list(ranked["rank"]) == [1, 2, 3, 4]
    assert list(ranked["backbone"]) == ["eva02-base", "clip-vit-b-16", "clip-vit-b-16", "pixels"]
    assert list(ranked["experiment"][1:3]) == ["demo", "layerwise"]  # two experiments, two rows
    # ranked rows come before the not-ranked section in the frame and in Markdown
    assert not df["ranked"].iloc[-1]
    md = render_markdown("encoding", df)
    rank_lines = [l for l in md.split("### Not ranked")[0].splitlines() if l.startswith("| ") and "rank" not in l]
    assert [l.split("|")[1].strip() for l in rank_lines] == ["1", "2", "3", "4"]
    assert "40.5" in rank_lines[0] and "31.2" in rank_lines[1] and "20.0" in rank_lines[2]

    rdf = build_tables(store)["retrieval"]
    r = rdf[rdf["ranked"]]
    assert list(r["experiment"]) == ["stage2", "stage1"] and list(r["rank"]) == [1, 2]


def test_roi_columns_keep_the_datas_names_and_order(store):
    df = build_tables(store)["encoding"]
    assert "V4" not in df.columns and "hV4" in df.columns  # the data says hV4: so does the column
    assert df[df["weights"] == "pretrained:openai"]["hV4"].iloc[0] == 13.0
    vals = [c for c in df.attrs["value_columns"]]
    assert vals[:13] == ["all", "V1", "V2", "V3", "hV4", "EBA", "FBA", "OFA", "FFA", "OPA", "PPA", "OWFA", "VWFA"]


def test_extra_rois_follow_and_a_plain_v4_keeps_its_name(tmp_path):
    s = ResultStore(tmp_path / "r")
    s.save(encoding_record("a", _weights("pretrained", "a"), 12.0, {"V1": 1.0, "V4": 2.0, "LO": 3.0, "nsdgeneral": 4.0}))
    df = build_tables(tmp_path / "r")["encoding"]
    assert df["V4"].iloc[0] == 2.0 and df.attrs["value_columns"][-2:] == ["V4", "LO"] and df["LO"].iloc[0] == 3.0
    assert math.isnan(df["hV4"].iloc[0])  # a data set that says V4 is not relabelled hV4
    assert "nsdgeneral" not in df  # the whole-brain mask is the "all" column
    assert math.isnan(df["FFA"].iloc[0])


def test_retrieval_markdown_mean_pm_half_ci_and_chance(store):
    df = build_tables(store)["retrieval"]
    md = render_markdown("retrieval", df)
    line = next(l for l in md.splitlines() if "stage2" in l and "pretrained" in l)
    assert "0.722 ± 0.020" in line and "0.549 ± 0.015" in line and "0.496 ± 0.012" in line
    stage1 = next(l for l in md.splitlines() if "stage1" in l)
    assert stage1.count("—") >= 2  # text directions missing for stage 1
    assert "chance = 0.0033" in md and "300 candidates" in md


def test_html_and_latex_contain_the_numbers(store, tmp_path):
    paths = write_leaderboard(store, tmp_path / "lb")
    for task in ("encoding", "retrieval"):
        for fmt in ("md", "csv", "tex", "html"):
            assert paths[task][fmt].is_file(), (task, fmt)
    index = (tmp_path / "lb" / "index.html")
    assert paths["encoding"]["html"] == index
    page = index.read_text()
    scripts = page.count("<script")  # only the site's own script, shipped beside the page
    assert scripts == 1 and '<script src="static/site.js">' in page and (tmp_path / "lb" / "static" / "site.js").is_file()
    assert "http://" not in page and "https://" not in page
    assert "40.5" in page and "31.2" in page and "0.722 ± 0.020" in page
    assert "Not ranked: random-init weights" in page
    tex = paths["encoding"]["tex"].read_text()
    assert r"\begin{tabular}" in tex and "40.5" in tex and "31.2" in tex and "---" in tex
    assert "Not ranked: random-init weights" in tex
    rtex = paths["retrieval"]["tex"].read_text()
    assert r"0.722 $\pm$ 0.020" in rtex
    body = "\n".join(l for l in tex.splitlines() if not l.startswith("%"))
    assert all(c not in body.replace(r"\_", "").replace(r"\%", "").replace(r"\&", "") for c in ("_", "%", "→"))


def test_plots_are_pngs(store, tmp_path):
    paths = write_leaderboard(store, tmp_path / "lb")
    for task in ("encoding", "retrieval"):
        assert paths[task]["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["encoding"]["heatmap_png"].read_bytes()[:4] == b"\x89PNG"


def test_duplicate_identity_is_flagged_not_silent(tmp_path):
    s = ResultStore(tmp_path / "r")
    a = encoding_record("m", _weights("pretrained", "x"), 10.0, FULL)
    b = encoding_record("m", _weights("pretrained", "x"), 11.0, FULL)
    b["key"]["weights"] = "pretrained-x-copy"  # distinct store key, same displayed identity
    s.save(a)
    s.save(b)
    df = build_tables(tmp_path / "r")["encoding"]
    assert len(df) == 2 and df["flags"].str.contains("duplicate identity").all()
    md = render_markdown("encoding", df)
    assert "duplicate identity" in md and "record" in md.splitlines()[md.splitlines().index(
        next(l for l in md.splitlines() if l.startswith("| rank")))]


def test_no_learned_weight_source_unknown_is_not_ranked(tmp_path):
    s = ResultStore(tmp_path / "r")
    rec = encoding_record("m", _weights("pretrained", "x"), 10.0, FULL)
    rec["backbone"]["weights"] = {}
    s.save(rec)
    df = build_tables(tmp_path / "r")["encoding"]
    assert not df["ranked"].iloc[0] and df["not_ranked_reason"].iloc[0] == "weights source unknown"


def test_generic_and_captioning_tasks(tmp_path):
    s = ResultStore(tmp_path / "r")
    rec = encoding_record("blip2", _weights("pretrained", "b"), 0.0, {})
    rec["key"]["task"] = "captioning"
    rec["task"]["name"] = "test-captioning"  # the plugin whose layout the record gets
    rec["main_score"] = "meteor"
    rec["tables"] = {}
    rec["scores"] = {"meteor": 0.327, "rouge1": 0.467, "rougeL": 0.43, "sentence": 0.515, "clip_b32": 0.771,
                     "clip_l14": None, "bleu4": 0.1}
    s.save(rec)
    df = build_tables(tmp_path / "r")["captioning"]
    assert df.attrs["value_columns"][:7] == ["METEOR", "ROUGE-1", "ROUGE-L", "Sentence", "CLIP-B", "CLIP-L", "BLEU-4"]
    assert df["METEOR"].iloc[0] == 0.327 and math.isnan(df["CLIP-L"].iloc[0])
    md = render_markdown("captioning", df)
    assert "| 1 |" in md and "0.327" in md and "—" in md


def test_empty_store_does_not_crash(tmp_path):
    assert build_tables(tmp_path / "nothing") == {}
    assert "No complete test-split results" in render_all_markdown(tmp_path / "nothing")
    out = tmp_path / "lb"
    assert write_leaderboard(tmp_path / "nothing", out) == {}
    assert "No complete" in (out / "README.md").read_text()
    # a store with only validation records is empty for the leaderboard too
    s = ResultStore(tmp_path / "val")
    s.save(encoding_record("m", _weights("pretrained", "x"), 1.0, FULL, evaluated_on="validation"))
    assert write_leaderboard(tmp_path / "val", out) == {}
    # once results exist, the stale "no results" note goes away
    s.save(encoding_record("m", _weights("pretrained", "x"), 1.0, FULL))
    assert "encoding" in write_leaderboard(tmp_path / "val", out)
    assert not (out / "README.md").exists()


def test_ranks_restart_per_dataset_and_subject(tmp_path):
    s = ResultStore(tmp_path / "r")
    s.save(encoding_record("a", _weights("pretrained", "a"), 10.0, FULL, subject="subj01"))
    s.save(encoding_record("b", _weights("pretrained", "b"), 30.0, FULL, subject="subj01"))
    s.save(encoding_record("a", _weights("pretrained", "a"), 50.0, FULL, subject="subj02"))
    df = build_tables(tmp_path / "r")["encoding"]
    assert list(zip(df["subject"], df["backbone"], df["rank"])) == [
        ("subj01", "b", 1), ("subj01", "a", 2), ("subj02", "a", 1)]
    assert "ranks restart within each dataset variant × subject" in render_markdown("encoding", df)


def test_retrieval_without_table_falls_back_to_scores_without_ci(tmp_path):
    s = ResultStore(tmp_path / "r")
    rec = retrieval_record("q", _weights("pretrained", "q"), {"brain→image": (0.5, 0.01)})
    rec["tables"] = {}
    s.save(rec)
    df = build_tables(tmp_path / "r")["retrieval"]
    assert df["brain→image mean"].iloc[0] == 0.5 and math.isnan(df["brain→image ci_low"].iloc[0])
    assert "0.500 ± —" in render_markdown("retrieval", df)


def decoding_record(backbone="blip2-opt", weights=None, subject="subj01"):
    """A seed-000 decoding record as tasks/decoding.py writes it: three tables in one record."""
    weights = weights or _weights("pretrained", "Salesforce/blip2-opt-2.7b")
    retrieval = []
    for stage, base in ((2, 0.5), (1, 0.2)):
        for k, d in enumerate(("brain→image", "image→brain", "text→brain", "brain→text")):
            mean = base + 0.01 * k
            row = {"stage": stage, "direction": d, "mean": mean, "ci_low": mean - 0.02, "ci_high": mean + 0.02,
                   "n_candidates": 300, "n_trials": 50 if "text" in d else 30, "chance": 1 / 300, "seed": 0}
            if stage == 2:
                row.update(delta=0.3, delta_ci_low=0.25, delta_ci_high=0.35, n_items=982)
            retrieval.append(row)
    systems = {"brain (stage 2)": 0.33, "brain (stage 1)": 0.30, "nearest-neighbour": 0.25, "true image": 0.45,
               "shuffled brain": 0.12}
    captioning = [{"system": s, "meteor": m, "rouge1": m + 0.1, "rougeL": m + 0.05, "sentence": m + 0.2,
                   "clip_b32": None, "clip_l14": None, "bleu4": m / 3, "n_images": 982} for s, m in systems.items()]
    roi = [{"roi": r, "stage": st, "caption": f"{r} caption {st}", "n_voxels": 10, "scale": 11.0}
           for r in ("V1", "floc-faces") for st in (1, 2)]
    return {
        "key": {"dataset": "nsd", "subject": subject, "backbone": backbone, "weights": weights["source"],
                "task": "decoding", "experiment": "seed000"},
        "status": "complete", "evaluated_on": "test", "main_score": "meteor",
        "scores": {"meteor": 0.33, "stage1_meteor": 0.30, "stage2 brain→image": 0.5},
        "tables": {"retrieval": retrieval, "captioning": captioning, "roi_captions": roi},
        "backbone": {"name": "blip2", "family": "blip2", "weights": weights, "layer": "qformer", "readout": "flatten"},
        "task": {"name": "decoding", "params": {}}, "dataset": {"name": "nsd", "info": {}},
        "provenance": {"seed": 0}, "timings": {}, "tracking": {},
    }


def test_decoding_record_gives_the_three_seed000_tables(tmp_path):
    root = tmp_path / "results"
    s = ResultStore(root)
    s.save(decoding_record(), {})
    s.save(decoding_record(subject="subj02"), {})
    tables = build_tables(root)
    assert set(tables) == {"decoding-retrieval", "decoding-captioning", "decoding-roi-captions"}

    t1 = tables["decoding-retrieval"]  # Table 1: one row per stage, Δ on the stage-2 row only
    assert t1.attrs["layout"] == "retrieval" and "system" in t1.attrs["identity_columns"]
    s1 = t1[(t1["subject"] == "subj01")].set_index("system")
    assert s1.at["stage 2", "brain→text mean"] == pytest.approx(0.53)
    assert s1.at["stage 1", "image→brain mean"] == pytest.approx(0.21)
    assert s1.at["stage 2", "brain→image delta"] == 0.3 and math.isnan(s1.at["stage 1", "brain→image delta"])
    assert s1.at["stage 2", "rank"] == 1 and s1.at["stage 1", "rank"] == 2  # by brain→image, per subject
    from brainharness.leaderboard.plots import _row_label  # the bar labels tell the stages apart

    labels = {_row_label(t1, i) for i in t1.index if t1.at[i, "subject"] == "subj01"}
    assert len(labels) == 2 and any("stage 1" in x for x in labels)
    md = render_markdown("decoding-retrieval", t1)
    assert "0.530 ± 0.020 (Δ +0.300 [+0.250, +0.350])" in md and "Δ = this row − stage 1" in md

    t2 = tables["decoding-captioning"]  # Table 2: one row per system; references listed, not ranked
    s2 = t2[t2["subject"] == "subj01"].set_index("system")
    assert s2.at["brain (stage 2)", "METEOR"] == pytest.approx(0.33) and s2.at["brain (stage 1)", "ROUGE-1"] == 0.4
    assert not s2.at["true image", "ranked"] and not s2.at["shuffled brain", "ranked"]
    assert "reference row" in s2.at["true image", "not_ranked_reason"]
    ranked = s2[s2["ranked"]].sort_values("rank")
    assert list(ranked.index) == ["brain (stage 2)", "brain (stage 1)", "nearest-neighbour"]
    assert math.isnan(s2.at["brain (stage 2)", "CLIP-B"])  # missing, never 0
    md2 = render_markdown("decoding-captioning", t2)
    refs = md2.split("#### Reference rows (not ranked)")[1]
    assert "| reference row: the true image, not a brain decoder |" in refs and "| shuffled brain |" in refs

    t3 = tables["decoding-roi-captions"]  # Table 3: one row per ROI, a column per stage, per subject
    s3 = t3[t3["subject"] == "subj02"].set_index("roi")
    assert s3.at["floc-faces", "stage 1"] == "floc-faces caption 1" and s3.at["V1", "stage 2"] == "V1 caption 2"
    assert not t3["ranked"].any()
    md3 = render_markdown("decoding-roi-captions", t3)
    assert "| floc-faces |" in md3 and "Not ranked" not in md3
    paths = write_leaderboard(root, tmp_path / "out", plots=False)
    assert "V1 caption 2" in paths["decoding-roi-captions"]["csv"].read_text()
