"""Aligned encoding (LLM-VEM, seed 004): stage 1 → stage 2, selection inside the training split,
the resumable λ grid sweep and the Table 3 builder. A tiny random-init EVA-02 on the small
synthetic dataset; texts from a descriptions file with few distinct sentences (cheap to embed).
"""
import copy
import csv
import json

import numpy as np
import optuna
import pytest
import torch

import brainharness.tasks.aligned_encoding  # noqa: F401 - registers the task (entry point added with the commit)
from conftest import tiny_config
from brainharness.errors import ConfigError, DataError
from brainharness.runner import Runner
from brainharness.sweeps.study import Sweep, run_sweep
from brainharness.sweeps.tables import stage_rows, to_csv, to_markdown
from brainharness.tasks.aligned_stage2 import trainable_names
from brainharness.tasks.aligned_text import read_text_file, stimulus_texts

pytest.importorskip("timm")
pytest.importorskip("sentence_transformers")

EVA = {"name": "eva", "label": "eva-tiny", "weights": "random-init", "readout": "mean",
       "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}}
LAMBDAS = [0.0, 1.0e-3, 1.0e-2, 1.0e-1, 1.0]


def task_spec(**over):
    return {"name": "aligned_encoding", "lr": 1e-3, "head_lr": 1e-5, "max_epochs": 3, "patience": 2,
            "batch_size": 64, "num_threads": 1, **over}


def config(tmp, **task):
    return tiny_config(tmp, backbones=[dict(EVA)], tasks=[task_spec(**task)])


def category_descriptions(runner, path):
    """A JSON file of one 'LLM description' per training stimulus, from the scene categories."""
    stim = runner.dataset.stimuli
    names = ["face", "body", "place", "word", "object"]
    present = stim.extras["category_presence"]
    ids = runner.dataset.subject("subj01").train.stim_ids
    rows = stim.rows(ids)
    text = {str(int(i)): "A scene with " + (", ".join(n for n, on in zip(names, present[r]) if on) or "nothing")
            for i, r in zip(ids, rows)}
    path.write_text(json.dumps(text))
    return path


def test_stage2_starts_from_stage1_and_keeps_the_validation_selected_epoch(tmp_path):
    runner = Runner(config(tmp_path, lam=0.0), progress=False)
    bspec, tspec = runner.cfg["backbones"][0], runner.cfg["tasks"][0]
    backbone = runner.backbone(bspec)
    before = copy.deepcopy(backbone.torch_model.state_dict())
    n_cached = len(runner.cache.entries())

    # 0 epochs: stage 2 is the stage-1 checkpoint, read through the private differentiable copy
    zero = runner.run_unit("subj01", bspec, tspec, overrides={"max_epochs": 0}, experiment="e0", track=False)
    s = zero["scores"]
    assert s["best_epoch"] == 0 and s["epochs_run"] == 0
    assert s["stage2_median_nc_r2"] == pytest.approx(s["stage1_median_nc_r2"], abs=1e-3)
    assert s["stage2_mean_nc_r2"] == pytest.approx(s["stage1_mean_nc_r2"], abs=1e-3)

    # λ = 0 with early stopping: epoch 0 is the stage-1 validation score, the best epoch is kept
    rec = runner.run_unit("subj01", bspec, tspec, experiment="es", track=False)
    hist, det = rec["tables"]["epochs"], rec["details"]
    assert hist[0]["epoch"] == 0
    assert hist[0]["validation_score"] == pytest.approx(det["stage1_validation_score"], abs=1e-3)
    assert det["stage2_validation_score"] == max(h["validation_score"] for h in hist)
    # never worse than where it started (epoch 0 is stage 1 re-scored in float32 by torch)
    assert det["stage2_validation_score"] >= det["stage1_validation_score"] - 1e-5
    assert rec["scores"]["best_epoch"] == max(hist, key=lambda h: h["validation_score"])["epoch"]
    assert all(h["nce"] is None for h in hist) and det["text"]["used"] is False  # MSE-only fine-tuning
    assert [r["stage"] for r in rec["tables"]["stages"]] == ["1", "2"]
    assert rec["main_score"] == "median_nc_r2" and rec["scores"]["median_nc_r2"] == rec["scores"]["stage2_median_nc_r2"]
    # seed 004's frozen list: only the blocks' attention trains
    assert det["trainable_examples"] and all(".attn." in n and "norm" not in n for n in det["trainable_examples"])

    # the same number of epochs, fixed instead of selected, gives the same stage-2 model
    fixed = runner.run_unit("subj01", bspec, tspec, overrides={"epochs": rec["scores"]["best_epoch"]},
                            experiment="fixed", track=False)
    assert fixed["scores"]["stage2_median_nc_r2"] == pytest.approx(rec["scores"]["stage2_median_nc_r2"], abs=1e-4)
    assert fixed["scores"]["stage1_median_nc_r2"] == rec["scores"]["stage1_median_nc_r2"]

    # the shared backbone is untouched, and no stage-2 feature went into the cache
    after = backbone.torch_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in backbone.torch_model.parameters())
    assert len(runner.cache.entries()) - n_cached <= 2  # blocks.0 and blocks.2 of stage 1 only


def test_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    runner = Runner(config(tmp_path, lam=0.1), progress=False)
    path = category_descriptions(runner, tmp_path / "desc.json")
    bspec, tspec = runner.cfg["backbones"][0], dict(runner.cfg["tasks"][0], text_source=str(path))
    test_ids = set(runner.dataset.subject("subj01").test.stim_ids.tolist())
    seen = {"features": [], "images": [], "texts": []}
    stim = runner.dataset.stimuli
    orig_images, orig_features = stim.images, runner.cache.features
    monkeypatch.setattr(stim, "images", lambda ids: (seen["images"].append(set(np.asarray(ids).tolist())),
                                                     orig_images(ids))[1])
    monkeypatch.setattr(runner.cache, "features", lambda b, s, ids, layer=None, progress=False: (
        seen["features"].append(set(np.asarray(ids).tolist())), orig_features(b, s, ids, layer, progress))[1])
    if hasattr(runner.cache, "features_multi"):
        orig_multi = runner.cache.features_multi
        monkeypatch.setattr(runner.cache, "features_multi", lambda b, s, ids, layers, progress=False: (
            seen["features"].append(set(np.asarray(ids).tolist())), orig_multi(b, s, ids, layers, progress))[1])
    orig_texts = stimulus_texts
    monkeypatch.setattr(brainharness.tasks.aligned_encoding, "stimulus_texts", lambda src, st, ids: (
        seen["texts"].append(set(np.asarray(ids).tolist())), orig_texts(src, st, ids))[1])

    rec = runner.run_unit("subj01", bspec, tspec, evaluated_on="validation", experiment="val", track=False)
    assert rec["evaluated_on"] == "validation" and rec["details"]["text"]["used"]
    for kind, sets in seen.items():
        assert sets and all(not (s & test_ids) for s in sets), kind
    # scored on test: the test images are read (to score), their texts never are
    seen["texts"].clear()
    runner.run_unit("subj01", bspec, tspec, experiment="test", track=False)
    assert seen["texts"] and all(not (s & test_ids) for s in seen["texts"])


def test_text_from_a_descriptions_file(tmp_path):
    runner = Runner(config(tmp_path, lam=1.0), progress=False)
    train_ids = runner.dataset.subject("subj01").train.stim_ids
    path = category_descriptions(runner, tmp_path / "desc.json")
    texts = stimulus_texts(str(path), runner.dataset.stimuli, train_ids[:5])
    assert all(len(t) == 1 and t[0].startswith("A scene with") for t in texts)
    # CSV with several rows per id → several texts; TSV and JSON lists read the same way
    a, b = int(train_ids[0]), int(train_ids[1])
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["stim_id", "description"], [a, "a red ball"], [a, "a small red ball"], [b, "a face"]])
    assert read_text_file(tmp_path / "d.csv") == {a: ["a red ball", "a small red ball"], b: ["a face"]}
    (tmp_path / "d.json").write_text(json.dumps([{"id": a, "text": "x"}, {"id": b, "text": ["y", "z"]}]))
    assert read_text_file(tmp_path / "d.json") == {a: ["x"], b: ["y", "z"]}
    with pytest.raises(DataError, match=r"1 of 3 training stimuli have no text in .*d\.csv"):
        stimulus_texts(str(tmp_path / "d.csv"), runner.dataset.stimuli, train_ids[:3])
    (tmp_path / "bad.csv").write_text("image,words\n1,a\n")
    with pytest.raises(DataError, match="needs an id column"):
        read_text_file(tmp_path / "bad.csv")

    rec = runner.run_unit("subj01", runner.cfg["backbones"][0], dict(runner.cfg["tasks"][0], text_source=str(path)),
                          overrides={"max_epochs": 1}, experiment="file", track=False)
    info = rec["details"]["text"]
    assert info["used"] and info["dim"] == 384 and info["text_source"] == str(path)  # all-MiniLM-L6-v2
    assert info["n_distinct"] < 33 < info["n_texts"]  # identical descriptions are positives of each other
    assert rec["tables"]["epochs"][1]["nce"] > 0


def test_pca_voxel_mapping_and_stage_1_alone(tmp_path):
    runner = Runner(config(tmp_path, voxel_pca=8), progress=False)
    bspec, tspec = runner.cfg["backbones"][0], runner.cfg["tasks"][0]
    one = runner.run_unit("subj01", bspec, dict(tspec, stage="1"), experiment="s1", track=False)
    assert [r["stage"] for r in one["tables"]["stages"]] == ["1"] and "stage2_median_nc_r2" not in one["scores"]
    assert one["scores"]["median_nc_r2"] == one["scores"]["stage1_median_nc_r2"]
    zero = runner.run_unit("subj01", bspec, tspec, overrides={"max_epochs": 0, "lam": 0.0}, experiment="z",
                           track=False)
    assert zero["scores"]["stage2_median_nc_r2"] == pytest.approx(one["scores"]["median_nc_r2"], abs=1e-3)
    assert zero["details"]["voxel_pca"] == 8


def test_clip_text_tower_and_the_text_embedding_cache(tmp_path, monkeypatch):
    from brainharness.tasks.aligned_text import _TEXT_MEMORY, embed_texts, text_encoder

    pytest.importorskip("open_clip")
    spec = {"model": "tiny-vit", "weights": "random-init", "model_config": {
        "embed_dim": 24, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}
    texts = [["a red ball", "a small red ball"], ["a face"], ["a face"]]
    emb = embed_texts(texts, "clip", spec, "cpu", tmp_path)  # tmp_path: the cache root
    enc = text_encoder("clip", spec, "cpu")
    single = enc.encode(["a red ball", "a small red ball", "a face"])
    assert emb.shape == (3, 24) and np.allclose(emb[0], single[:2].mean(0), atol=1e-5)
    assert np.allclose(emb[1], emb[2]) and (tmp_path / "text-embeddings" / f"{enc.key}.npz").is_file()
    _TEXT_MEMORY.clear()  # a new process: the texts come from the cache file, not the encoder
    monkeypatch.setattr(enc, "encode", lambda t: pytest.fail(f"re-encoded {t}"))
    assert np.allclose(embed_texts(texts, "clip", spec, "cpu", tmp_path), emb)


def test_lambda_grid_sweep_resumes_and_writes_table3(tmp_path, monkeypatch):
    runner = Runner(config(tmp_path), progress=False)
    path = category_descriptions(runner, tmp_path / "desc.json")

    def cfg(n_trials=None):
        sweep = {"study": "lam", "sampler": "grid", "space": {"lam": {"choices": LAMBDAS}},
                 "report": "brainharness.sweeps.tables:stage_table_report"}
        if n_trials:
            sweep["n_trials"] = n_trials
        return {**config(tmp_path, max_epochs=1, text_source=str(path)), "sweep": sweep}

    calls = []
    orig = Runner.run_unit

    def counting(self, *a, **kw):
        calls.append((kw.get("evaluated_on", "test"), (kw.get("overrides") or {}).get("lam")))
        if kw.get("evaluated_on") == "validation" and interrupt_at and len(calls) == interrupt_at:
            raise KeyboardInterrupt  # the worker is stopped in the middle of a trial
        return orig(self, *a, **kw)

    monkeypatch.setattr(Runner, "run_unit", counting)
    interrupt_at = None
    first = run_sweep(cfg(n_trials=2), progress=False)  # 2 of the 5 grid points
    assert first["n_complete_trials"] == 2
    done = {lam for kind, lam in calls if kind == "validation"}
    calls.clear()
    interrupt_at = 2
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg(), progress=False)  # resumes: one point completes, the next is interrupted
    assert not done & {lam for kind, lam in calls if kind == "validation"}
    done |= {calls[0][1]}
    calls.clear()
    interrupt_at = None
    final = run_sweep(cfg(), progress=False)
    rerun = [lam for kind, lam in calls if kind == "validation"]
    assert sorted(rerun) == sorted(set(LAMBDAS) - done)  # exactly the open points, the interrupted one too
    assert final["n_complete_trials"] == 5
    storage = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    trials = optuna.load_study(study_name="lam", storage=storage).trials
    complete = [t.params["lam"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(complete) == LAMBDAS  # each λ exactly once
    assert any(t.state == optuna.trial.TrialState.FAIL for t in trials)

    # Table 3: stage 1, λ = 0 (MSE only), then 1e-3 … 1 on validation; the selected λ once on test
    md = (tmp_path / "results" / "tables" / "lam.stages.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "results" / "tables" / "lam.stages.csv")))
    assert [r["model"] for r in rows if r["split"] == "validation"] == [
        "stage 1 (frozen backbone)", "stage 2, λ = 0 (MSE only)", "stage 2, λ = 1e-3", "stage 2, λ = 0.01",
        "stage 2, λ = 0.1", "stage 2, λ = 1"]
    assert all(r["median_nc_r2"] for r in rows)
    assert [r["split"] for r in rows].count("test") == 2 and "Test split, scored once" in md
    assert final["report"]["markdown"].endswith("lam.stages.md")


def test_grid_sampler_reruns_points_left_running_by_a_killed_worker():
    from brainharness.sweeps.study import _resumable_grid_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=_resumable_grid_sampler({"x": {"choices": [1, 2, 3]}}, 0))
    killed = study.ask()
    stale = killed.suggest_categorical("x", [1, 2, 3])  # never told: RUNNING forever
    order = []
    study.optimize(lambda t: order.append(t.suggest_categorical("x", [1, 2, 3])) or 0.0, n_trials=5)
    assert sorted(order) == [1, 2, 3] and order[-1] == stale  # fresh points first, the stale one last


def test_table3_builder_on_hand_made_records():
    """Seed 004 Table 3: the change column is on raw R² against the stage-2 λ = 0 row
    (0.208112 → 0.194580 = 6.5 % ↓ in the paper)."""
    def rec(lam, trial, r2, evaluated_on="validation", s1=0.204, created="a"):
        return {"status": "complete", "evaluated_on": evaluated_on, "task": {"params": {"lam": lam}},
                "sweep": {"study": "s", "trial": trial}, "provenance": {"created": created},
                "scores": {"stage1_mean_r2": s1, "stage1_mean_nc_r2_all": 58.83, "stage1_median_nc_r2": 50.0,
                           "stage1_mean_nc_r2": 60.0, "stage2_mean_r2": r2, "stage2_mean_nc_r2_all": 300 * r2,
                           "stage2_median_nc_r2": 40.0, "stage2_mean_nc_r2": 45.0, "best_epoch": 6}}

    records = [rec(1.0, 0, 0.194580), rec(0.0, 1, 0.208112), rec(1e-3, 2, 0.3),
               rec(1e-3, 5, 0.208896),  # λ re-run after an interruption: the later trial counts
               rec(0.1, 3, 0.204344), {"status": "failed", "evaluated_on": "validation"},
               rec(1e-3, None, 0.25, evaluated_on="test", s1=0.2)]
    rows, notes = stage_rows(records)
    val = [r for r in rows if r["split"] == "validation"]
    assert [r["lam"] for r in val] == [None, 0.0, 1e-3, 1e-2, 0.1, 1.0]
    assert val[0]["mean_r2"] == 0.204 and val[0]["mean_nc_r2_all"] == 58.83 and val[0]["change_r2_pct"] is None
    assert val[1]["model"] == "stage 2, λ = 0 (MSE only)" and val[1]["change_r2_pct"] is None  # the reference
    assert val[2]["mean_r2"] == 0.208896 and val[2]["trial"] == 5
    assert val[2]["change_r2_pct"] == pytest.approx(0.376, abs=1e-3)  # paper: 0.37 ↑
    assert val[3]["mean_r2"] is None and any("λ = 0.01" in n for n in notes)  # missing, never filled in
    assert val[4]["change_r2_pct"] == pytest.approx(-1.81, abs=1e-2)  # paper: 1.8 ↓
    assert val[5]["change_r2_pct"] == pytest.approx(-6.502, abs=1e-3)  # paper: 6.5 ↓ (not vs stage 1: -4.6)
    assert val[5]["mean_nc_r2_all"] == pytest.approx(58.374)
    test = [r for r in rows if r["split"] == "test"]
    assert [r["mean_r2"] for r in test] == [0.2, 0.25] and test[1]["lam"] == 1e-3
    assert test[1]["change_r2_pct"] == pytest.approx(25.0)  # no λ = 0 on test: against stage 1
    md = to_markdown(rows, notes)
    assert "| stage 2, λ = 0.01 | — | — | — | — | — | — |" in md and "-6.50" in md and "0.194580" in md
    assert "Δ R² vs λ = 0 (%)" in md and "Δ R² vs stage 1 (%)" in md
    assert to_csv(rows).splitlines()[0] == "split,model,lam,mean_r2,change_r2_pct,mean_nc_r2_all,median_nc_r2," \
                                           "mean_nc_r2,best_epoch,trial"


def test_bad_settings_fail_early(tmp_path):
    with pytest.raises(ConfigError, match="lam must be a number.*1.0e-3"):
        Runner(config(tmp_path, lam="1e-3"), progress=False)
    with pytest.raises(ConfigError, match="stage must be one of"):
        Runner(config(tmp_path, stage=3), progress=False)
    with pytest.raises(ConfigError, match="text_source"):
        Runner(config(tmp_path, text_source="notes.txt"), progress=False)
    cfg = {**config(tmp_path), "sweep": {"sampler": "grid", "space": {"lam": {"low": 0.0, "high": 1.0}}}}
    with pytest.raises(ConfigError, match="sampler grid needs"):
        Sweep(Runner(cfg, progress=False))
    cfg["sweep"] = {"sampler": "grid", "space": {"lam": {"choices": LAMBDAS}}, "report": "brainharness.sweeps.tables:nope"}
    with pytest.raises(ConfigError, match="cannot be imported"):
        Sweep(Runner(cfg, progress=False))
    with pytest.raises(ConfigError, match="needs a fine-tunable torch module with block read-outs from its backbone; "
                                          "backbone 'pixels'"):
        Runner(tiny_config(tmp_path, backbones=[{"name": "pixels", "size": 8}], tasks=[task_spec()]), progress=False)
    eva = Runner(config(tmp_path), progress=False).backbone(dict(EVA)).torch_model
    assert trainable_names(eva, [0, 2], [1], []) == [n for n, _ in eva.named_parameters() if n.startswith("blocks.1.")]
    with pytest.raises(ConfigError, match="matches no parameter"):
        trainable_names(eva, [0, 2], ["nothing*"], [])
