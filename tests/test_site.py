"""The static leaderboard site without a browser: leaderboard.json validates against the schema
in the repo and carries the tables' numbers and intervals; every row has a result page with its
record, per-ROI table and downloads; constant columns go to the caption. Built from real tiny runs."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import jsonschema
import pytest

from site_fixtures import demo_like_site
from brainharness.leaderboard import build_tables
from brainharness.leaderboard.build import record_path
from brainharness.leaderboard.pages import page_of
from brainharness.results import ResultStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site():
    return demo_like_site()


def _records(results):
    return {record_path(r, results): r for r in ResultStore(results).records()}


def rows_of(doc, table):
    return [r for e in doc["entries"] for r in e["rows"] if r["table"] == table]


def test_leaderboard_json_validates_against_the_repo_schema(site):
    results, out = site
    doc = json.loads((out / "leaderboard.json").read_text())
    schema = json.loads((REPO / "leaderboard" / "leaderboard.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(doc, schema)
    assert (out / "leaderboard.schema.json").read_text() == (REPO / "leaderboard" / "leaderboard.schema.json").read_text()
    records = _records(results)
    assert sorted(e["record"] for e in doc["entries"]) == sorted(records)  # one entry per record
    broken = json.loads(json.dumps(doc))
    broken["entries"][0]["rows"][0]["rank"] = "first"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_leaderboard_json_has_the_tables_numbers_and_intervals(site):
    results, out = site
    doc = json.loads((out / "leaderboard.json").read_text())
    tables = build_tables(results)
    by_record = {e["record"]: e for e in doc["entries"]}
    enc = tables["encoding"]
    for i in enc.index:
        row = next(r for r in by_record[enc.at[i, "record"]]["rows"] if r["table"] == "encoding")
        assert row["scores"]["all"]["value"] == pytest.approx(enc.at[i, "all"])
        assert row["scores"]["V1"]["value"] == pytest.approx(enc.at[i, "V1"])
        assert row["ranked"] == bool(enc.at[i, "ranked"]) and row["main_score"]["name"] == "median_nc_r2"
        assert row["rank"] == (None if enc.at[i, "rank"] is None or str(enc.at[i, "rank"]) == "<NA>"
                               else int(enc.at[i, "rank"]))
    ranks = sorted(r["rank"] for e in doc["entries"] for r in e["rows"] if r["table"] == "encoding" and r["rank"])
    assert ranks == [1, 2]  # pixels and random-features; controls and random-init never ranked
    ret = [r for e in doc["entries"] for r in e["rows"] if r["table"] == "retrieval"]
    cis = [r["scores"]["brain→image"] for r in ret]  # retrieval has intervals: value inside its CI
    assert all(s["ci_low"] <= s["value"] <= s["ci_high"] for s in cis) and any(s["ci_low"] < s["ci_high"] for s in cis)
    records = _records(results)
    for e in doc["entries"]:  # encoding: the bootstrap intervals stored in each record, value inside
        for r in (r for r in e["rows"] if r["table"] == "encoding"):
            scores, per_roi = records[e["record"]]["scores"], records[e["record"]]["tables"]["per_roi"]
            assert r["scores"]["all"]["ci_low"] == pytest.approx(scores["median_nc_r2_ci_low"])
            hv4 = next(row for row in per_roi if row["roi"] == "hV4")
            assert r["scores"]["hV4"]["ci_high"] == pytest.approx(hv4["median_nc_r2_ci_high"])
            assert all(s["ci_low"] <= s["value"] <= s["ci_high"]
                       for s in r["scores"].values() if s["ci_low"] is not None)
            # the paired test vs the block's best: only ranked rows get a verdict
            assert (r["tied_with_best"] is None) == (r["rank"] is None)
    chance = [lv for t in doc["tables"] if t["name"] == "retrieval" for lv in t["levels"]]
    assert chance and all(lv["value"] == pytest.approx(1 / 50) for lv in chance)
    new = doc["generated_by"]["newest_record"]
    created = max(r["provenance"]["created"] for r in _records(results).values())
    assert new["created"] == created and new["commit"] in (None, *[
        r["provenance"]["code"].get("git_commit") for r in _records(results).values()])


def test_each_row_links_to_its_result_page_with_record_and_downloads(site):
    results, out = site
    index = (out / "index.html").read_text()
    records = _records(results)
    for path, record in records.items():
        page = out / page_of(path)
        assert f'href="{page_of(path)}"' in index and page.is_file()
        text = page.read_text()
        stem = page.stem
        assert (page.parent / f"{stem}.json").read_bytes() == Path(record["_path"]).read_bytes()
        assert f'href="{stem}.json"' in text and f'href="{stem}.csv"' in text and 'href="../index.html"' in text
        rows = list(csv.DictReader((page.parent / f"{stem}.csv").open(encoding="utf-8")))
        main = record["main_score"]
        assert float(next(r for r in rows if r["name"] == main)["value"]) == pytest.approx(record["scores"][main])
        assert record["provenance"]["packages"]["brainharness"] in text and record["provenance"]["device"] in text
        if "per_roi" in record["tables"]:
            v1 = next(r for r in record["tables"]["per_roi"] if r["roi"] == "V1")
            assert f'data-v="{v1["n_voxels"]!r}"' in text
            assert f'data-v="{v1["median_noise_ceiling"]!r}"' in text  # noise ceiling per region
            assert any(r["table"] == "per_roi" and r["roi"] == "V1" for r in rows)
        for feats in record.get("features", {}).values():
            assert f"{feats['cache']} (key {feats['key']})" in text  # cache hit / miss


def test_index_lifts_constant_columns_and_ships_its_script(site):
    _, out = site
    index = (out / "index.html").read_text()
    enc = index[index.index('id="t-encoding"'):]
    enc = enc[: enc.index("</table>")]
    caption = re.search(r"<caption>(.*?)</caption>", enc).group(1)
    assert "subject: <strong>subj01</strong>" in caption and "experiment: <strong>demo</strong>" in caption
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", enc)
    assert heads[:2] == ["backbone", "rank"] and "subject" not in heads and "weights" in heads  # weights vary
    assert "Not ranked: random-init weights" in enc and "Reference: control: ceiling" in enc
    assert re.findall(r'<script[^>]*src="([^"]+)"', index) == ["static/site.js"]
    assert "http://" not in index and "https://" not in index  # no CDN, no external resource
    from importlib import resources

    shipped = resources.files("brainharness.leaderboard").joinpath("static", "site.js").read_text()
    assert (out / "static" / "site.js").read_text() == shipped and "aria-sort" in shipped
