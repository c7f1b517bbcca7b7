"""Result identity: a changed parameter is a new record, an unchanged config is up to date, the id
does not depend on where the cache lives, and `brainharness results ls|show|diff` name what differs."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from brainharness.cli import main
from brainharness.identity import flatten, portable_weights, stable_hash, weights_label
from brainharness.provenance import device_used
from brainharness.results import ResultStore
from brainharness.runner import Runner
from brainharness.weights import WeightsSpec

BASE = {
    "experiment": "id", "seed": 0,
    "dataset": {"name": "synthetic", "n_train": 200, "n_test": 60, "n_voxels": 60, "image_size": 16, "seed": 3},
    "backbones": [{"name": "pixels", "size": 4}],
    "tasks": [{"name": "encoding"}],
    "tracking": {"wandb": {"mode": "disabled"}},
}
# one edit of each kind: (what changes, the dotted identity parameter that must differ, the config edit)
EDITS = [
    ("dataset", "dataset.params.noise_fraction", lambda c: c["dataset"].update(noise_fraction=0.5)),
    ("backbone", "backbone.options.size", lambda c: c["backbones"][0].update(size=6)),
    ("task", "task.params.alpha_min", lambda c: c["tasks"][0].update(alpha_min=1000)),
]


def _config(root, edit=None, cache="cache") -> dict:
    cfg = copy.deepcopy(BASE)
    cfg.update(results_dir=str(root / "results"), cache_dir=str(root / cache))
    if edit:
        edit(cfg)
    return cfg


def _run(root, cfg, capsys, name="c.yaml") -> tuple[int, str]:
    path = root / name
    path.write_text(yaml.safe_dump(cfg))
    code = main(["-q", "run", str(path)])
    return code, capsys.readouterr().out


def _files(root) -> dict:
    """Every record file of the store with its modification time and bytes."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((root / "results").rglob("*.json"))}


def test_each_changed_parameter_is_a_new_record_and_an_unchanged_config_is_up_to_date(tmp_path, capsys):
    code, out = _run(tmp_path, _config(tmp_path), capsys)
    assert code == 0 and ": ran " in out and "1 unit(s): 1 ran, 0 up to date, 0 failed" in out
    (base_path,) = _files(tmp_path)
    base = ResultStore.read(base_path)
    assert base_path.name == f"id-{base['key']['id'][:12]}.json"
    assert base_path.parts[-5] == f"synthetic-{base['key']['data_id'][:8]}"

    before = _files(tmp_path)
    code, out = _run(tmp_path, _config(tmp_path), capsys)
    assert code == 0 and ": up to date " in out and "0 ran, 1 up to date" in out
    assert _files(tmp_path) == before  # nothing re-run, nothing rewritten (same bytes, same mtime)

    seen = {base["key"]["id"]}
    for kind, param, edit in EDITS:
        before = _files(tmp_path)
        code, out = _run(tmp_path, _config(tmp_path, edit), capsys)
        assert code == 0 and ": ran " in out, (kind, out)
        after = _files(tmp_path)
        (new_path,) = set(after) - set(before)
        assert {p: after[p] for p in before} == before, kind  # the old records are still there, untouched
        new = ResultStore.read(new_path)
        assert new["key"]["id"] not in seen, kind
        seen.add(new["key"]["id"])
        changed = {k for k, v in flatten(new["identity"]).items() if flatten(base["identity"]).get(k) != v}
        assert param in changed, (kind, changed)
        assert new["scores"]["median_nc_r2"] != base["scores"]["median_nc_r2"], kind  # different content
        assert (new["key"]["data_id"] != base["key"]["data_id"]) == (kind == "dataset"), kind
        assert new["key"]["id"] == stable_hash(new["identity"])  # the id is the hash of the stored identity
        # the edited config is now up to date too
        code, out = _run(tmp_path, _config(tmp_path, edit), capsys)
        assert ": up to date " in out and _files(tmp_path) == after, kind


def test_data_id_follows_the_data_not_the_cache_folder(tmp_path):
    runners = {name: Runner(_config(tmp_path, edit, cache), progress=False) for name, edit, cache in (
        ("seed1", lambda c: c["dataset"].update(seed=1), "cache"),
        ("seed2", lambda c: c["dataset"].update(seed=2), "cache"),
        ("seed1-other-cache", lambda c: c["dataset"].update(seed=1), "elsewhere/cache2"))}
    keys = {name: r.key("subj01", r.cfg["backbones"][0], r.cfg["tasks"][0]) for name, r in runners.items()}
    assert keys["seed1"]["data_id"] != keys["seed2"]["data_id"] and keys["seed1"]["id"] != keys["seed2"]["id"]
    assert keys["seed1-other-cache"] == keys["seed1"]  # same config, another cache root: the same result
    assert runners["seed1"].cache_dir != runners["seed1-other-cache"].cache_dir
    assert runners["seed1"].data_identity()[1] == "synthetic(n_train=200, n_test=60, n_voxels=60, image_size=16, seed=1)"
    # the sweep's way of asking: overrides and the validation protocol are part of the identity
    r = runners["seed1"]
    b, t = r.cfg["backbones"][0], r.cfg["tasks"][0]
    val = r.key("subj01", b, t, evaluated_on="validation")
    assert len({keys["seed1"]["id"], val["id"], r.key("subj01", b, t, evaluated_on="validation",
                                                        validation_fraction=0.3)["id"],
                r.key("subj01", b, t, overrides={"alpha_min": 0.01})["id"]}) == 3  # the default α_min: same id


def test_local_weights_count_by_content_not_by_path(tmp_path):
    for folder in ("a/captioners/1f2e/generation", "b/elsewhere/1f2e/generation"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "model.safetensors").write_bytes(b"\x01\x02" * 1000)
        (tmp_path / folder / "config.json").write_text('{"x": 1}')
    a, b = (WeightsSpec("local", str(tmp_path / f)).info() for f in ("a/captioners/1f2e/generation",
                                                                       "b/elsewhere/1f2e/generation"))
    assert a["id"] != b["id"] and portable_weights(a) == portable_weights(b) and "id" not in portable_weights(a)
    assert weights_label(a) == weights_label(b) == f"local:generation-{a['digest'][:8]}"
    assert str(tmp_path) not in weights_label(a)
    (tmp_path / "b/elsewhere/1f2e/generation/config.json").write_text('{"x": 2}')  # other content: other weights
    c = WeightsSpec("local", str(tmp_path / "b/elsewhere/1f2e/generation")).info()
    assert portable_weights(c) != portable_weights(a)


def test_records_hold_the_device_and_precision_used(tmp_path, capsys):
    _run(tmp_path, _config(tmp_path), capsys)
    (path,) = _files(tmp_path)
    prov = ResultStore.read(path)["provenance"]
    assert prov["device"] == device_used("auto") != "auto" and prov["device_requested"] == "auto"
    assert prov["device"] in ("cpu", "cuda:0") and prov["backbone_device"] == prov["device"]
    assert prov["precision"] == {"backbone": "fp16" if prov["device"].startswith("cuda") else "fp32",
                                 "ridge": "float32", "ridge_eigensolver": "float64"}


def test_results_ls_show_diff_through_the_cli(tmp_path, capsys):
    _run(tmp_path, _config(tmp_path), capsys)
    _run(tmp_path, _config(tmp_path, EDITS[2][2]), capsys)  # alpha_min 0.01 → 1000
    paths = {ResultStore.read(p)["task"]["params"]["alpha_min"]: p for p in _files(tmp_path)}
    old, new = ResultStore.read(paths[0.01]), ResultStore.read(paths[1000])
    results = str(tmp_path / "results")

    assert main(["results", "ls", "--results", results]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["status", "dataset", "subject"] and lines[-1].startswith("2 record(s)")
    for r in (old, new):
        (line,) = [x for x in lines if r["key"]["id"][:12] in x]
        assert line.startswith("complete") and r["dataset"]["variant"] in line and "pixels" in line
        assert f"median_nc_r2={r['scores']['median_nc_r2']:.6g}" in line

    assert main(["results", "show", old["key"]["id"][:8], "--results", results]) == 0
    out = capsys.readouterr().out
    assert old["key"]["id"] in out and "task.params.alpha_min = 0.01" in out and "dataset.params.seed = 3" in out
    assert f"median_nc_r2 = {old['scores']['median_nc_r2']:.6g}  (main)" in out

    assert main(["results", "diff", old["key"]["id"][:10], str(paths[1000]), "--results", results]) == 0  # id, path
    out = capsys.readouterr().out
    identity = out.split("identity:")[1].split("scores")[0].strip().splitlines()
    assert identity == ["task.params.alpha_min: 0.01 → 1000"]  # the one parameter that changed, nothing else
    assert f"median_nc_r2: {old['scores']['median_nc_r2']:.6g} → {new['scores']['median_nc_r2']:.6g}" in out

    assert main(["results", "show", "ffffffffffff", "--results", results]) == 2  # no such id: one line, exit 2
    assert "no record with id 'ffffffffffff'" in capsys.readouterr().err


def test_a_failed_unit_is_reported_and_the_others_run(tmp_path, capsys, monkeypatch):
    from brainharness.tasks.encoding import EncodingTask

    cfg = _config(tmp_path)
    cfg["backbones"].append({"name": "pixels", "label": "pixels-6", "size": 6})
    calls = []
    orig = EncodingTask.run

    def fails_first(self, ctx):
        calls.append(ctx.backbone.p["size"])
        if len(calls) == 1:
            raise RuntimeError("boom\nsecond line")
        return orig(self, ctx)

    monkeypatch.setattr(EncodingTask, "run", fails_first)
    code, out = _run(tmp_path, cfg, capsys)
    assert code == 1 and calls == [4, 6]
    assert "subj01 pixels@none encoding [id]: failed: RuntimeError: boom\n" in out
    assert "subj01 pixels-6@none encoding [id]: ran " in out and "2 unit(s): 1 ran, 0 up to date, 1 failed" in out
    code, out = _run(tmp_path, cfg, capsys)  # a re-run after a failure never crashes on the failed record
    assert code in (0, 1) and "pixels-6@none encoding [id]: up to date" in out, out


def test_the_same_config_elsewhere_is_the_same_result(tmp_path, capsys):
    """The results store and cache copied to another place: the config is up to date there."""
    (tmp_path / "a").mkdir()
    _run(tmp_path / "a", _config(tmp_path / "a"), capsys)
    shutil.copytree(tmp_path / "a" / "results", tmp_path / "b" / "results")
    code, out = _run(tmp_path / "b", _config(tmp_path / "b", cache="fresh-cache"), capsys)
    assert code == 0 and ": up to date " in out, out


def test_a_captioner_trained_into_the_cache_is_the_same_weights_in_another_cache(scratch, tmp_path):
    """blip2-synthetic's weights live in the cache (captioners/<hash>/<variant>): the identity and
    the key's weights label use their content, never the cache path."""
    from brainharness.backbones.blip2_synthetic import SyntheticBlip2
    from brainharness.identity import backbone_identity
    from test_seed000 import CAPTIONER as spec  # the captioner that suite trains: trained once per session

    here = SyntheticBlip2(**spec, cache_dir=scratch / "shared-cache", device="cpu")
    shutil.copytree(here.captioner_dir, tmp_path / "other" / "captioners" / here.captioner_dir.name)
    there = SyntheticBlip2(**spec, cache_dir=tmp_path / "other", device="cpu")
    assert there.captioner_dir != here.captioner_dir
    assert backbone_identity(there) == backbone_identity(here)
    assert weights_label(there.weights_info()) == weights_label(here.weights_info())
    for b in (here, there):
        assert str(b.cache_dir) not in repr(backbone_identity(b)) + weights_label(b.weights_info())
        assert weights_label(b.weights_info()).startswith("local:generation-")


def test_a_sweep_keeps_one_test_record_its_current_best(tmp_path):
    """The best's test record is found by its identity (the best parameters are in it); when the
    best changes, the earlier best's test record is removed: a study has one test score."""
    import json

    from brainharness.sweeps.study import Sweep, run_sweep

    cfg = {**_config(tmp_path), "sweep": {"study": "s", "n_trials": 1,
                                          "space": {"alpha_min": {"low": 1e-2, "high": 1e2, "log": True}}}}
    summary = run_sweep(cfg, progress=False)
    keep = Path(summary["record"])
    runner = Runner(cfg, progress=False)
    key = runner.key("subj01", cfg["backbones"][0], cfg["tasks"][0], "s-best", overrides=summary["best_params"])
    assert runner.store.path_for(key) == keep  # found again from the best parameters alone
    earlier = json.loads(keep.read_text())  # an earlier best (other parameters) of the same study
    earlier["key"]["id"] = "0" * 64
    earlier["task"]["params"]["alpha_min"] = 7.0
    stale = keep.with_name("s-best-000000000000.json")
    stale_sidecar = keep.with_name("s-best-000000000000.0000.npz")
    stale_sidecar.write_bytes((keep.parent / earlier["sidecar"]).read_bytes())
    kept_sidecar, earlier["sidecar"] = keep.parent / earlier["sidecar"], stale_sidecar.name
    stale.write_text(json.dumps(earlier))
    other = keep.with_name("t-000000000000.json")  # another experiment's record stays
    other.write_text(json.dumps({**earlier, "key": {**earlier["key"], "experiment": "t"}}))
    Sweep(runner)._drop_superseded(keep, key)
    assert keep.exists() and kept_sidecar.exists() and other.exists()
    assert not stale.exists() and not stale_sidecar.exists()


def test_the_leaderboard_lists_an_earlier_parameter_set_as_superseded(tmp_path, capsys):
    from brainharness.leaderboard.tables import build_tables

    task_edit = EDITS[2][2]
    assert _run(tmp_path, _config(tmp_path), capsys)[0] == 0
    assert _run(tmp_path, _config(tmp_path, task_edit), capsys, name="d.yaml")[0] == 0
    records = {r["task"]["params"]["alpha_min"]: r for r in ResultStore(tmp_path / "results").records()}
    df = build_tables(tmp_path / "results")["encoding"]
    assert len(df) == 2
    current = df[df["ranked"]]
    old = df[~df["ranked"]]
    # the newest parameter set is the ranked row; the earlier one is listed with what changed
    assert current["all"].iloc[0] == pytest.approx(records[1000]["scores"]["median_nc_r2"], abs=1e-6)
    assert old["all"].iloc[0] == pytest.approx(records[0.01]["scores"]["median_nc_r2"], abs=1e-6)
    assert old["not_ranked_reason"].iloc[0] == (f"superseded by {records[1000]['key']['id'][:12]} "
                                                "(differs in task.params.alpha_min)")
    assert "duplicate" not in "".join(df["flags"])
