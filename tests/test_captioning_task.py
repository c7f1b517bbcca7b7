"""The ``captioning`` task's brain models: stage 1 (default), stage 2, and a supplied model file."""
import numpy as np
import pytest
import yaml
from conftest import tiny_config

pytest.importorskip("torch")
pytest.importorskip("transformers")

from brainharness.cli import main  # noqa: E402
from brainharness.config import load_config  # noqa: E402
from brainharness.errors import ConfigError  # noqa: E402
from brainharness.runner import Runner  # noqa: E402
from brainharness.tasks import captioning_task as ct  # noqa: E402

DATASET = {"name": "synthetic", "n_train": 200, "n_test": 40, "n_voxels": 120, "image_size": 32, "seed": 4}
TASK = {"name": "captioning", "caption_metrics": ["rouge1"], "max_new_tokens": 5, "num_threads": 1, "examples": 40}


def _config(tmp_path, **task):
    return tiny_config(tmp_path, dataset=DATASET, backbones=[{"name": "blip2-synthetic", **ct.TINY_CAPTIONER}],
                       tasks=[{**TASK, **task}])


def _run(tmp_path, **task) -> dict:
    (rec,) = Runner(load_config(_config(tmp_path, **task)), progress=False).run()
    return rec


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """The default run and the stage-1 ridge it fitted (caught on its way out of stage1_queries)."""
    seen = []
    orig = ct.stage1_queries

    def keep(task, ctx):
        seen.append(orig(task, ctx))
        return seen[-1]

    mp = pytest.MonkeyPatch()
    mp.setattr(ct, "stage1_queries", keep)
    try:
        rec = _run(tmp_path_factory.mktemp("stage1"))
    finally:
        mp.undo()
    return rec, seen[0]


def _captions(rec: dict, system: str) -> list[str]:
    return [e[system] for e in rec["tables"]["caption_examples"]]


def test_a_supplied_model_equal_to_the_stage1_ridge_gives_stage1s_captions_and_scores(stage1, tmp_path):
    rec1, s1 = stage1
    assert rec1["task"]["params"]["brain_model"] == "stage1"
    assert rec1["task"]["params"]["brain_model_sha256"] is None
    path = tmp_path / "ridge.npz"
    np.savez(path, coef=s1.coef, intercept=s1.intercept)
    assert np.allclose(s1.B_score @ s1.coef + s1.intercept, s1.P, atol=1e-4)  # what the file model computes
    rec = _run(tmp_path, brain_model=str(path))
    rows1 = {r["system"]: r for r in rec1["tables"]["captioning"]}
    rows = {r["system"]: r for r in rec["tables"]["captioning"]}
    assert list(rows) == ["brain (supplied)", "nearest-neighbour", "true image", "shuffled brain"]
    assert _captions(rec, "brain (supplied)") == _captions(rec1, "brain (stage 1)")
    assert rows["brain (supplied)"]["rouge1"] == pytest.approx(rows1["brain (stage 1)"]["rouge1"], abs=1e-12)
    assert rec["scores"]["query_r2"] == pytest.approx(rec1["scores"]["query_r2"], abs=1e-5)
    assert rec["scores"]["rouge1"] == rec1["scores"]["rouge1"]
    # the file's content is in the identity: same bytes → same digest, other bytes → another record
    digest = rec["task"]["params"]["brain_model_sha256"]
    assert len(digest) == 64 and rec["details"]["brain_model_sha256"] == digest
    assert rec["key"]["id"] != rec1["key"]["id"]
    other = tmp_path / "other.npz"
    np.savez(other, coef=s1.coef * 0.5, intercept=s1.intercept)
    cfg = load_config(_config(tmp_path, brain_model=str(other)))
    runner = Runner(cfg, progress=False)
    key_other = runner.key("subj01", cfg["backbones"][0], cfg["tasks"][0])
    assert runner.task(cfg["tasks"][0]).p["brain_model_sha256"] != digest
    assert key_other["id"] != rec["key"]["id"]
    # the same bytes elsewhere: the same result (the path is not part of the identity)
    moved = tmp_path / "elsewhere" / "copy.npz"
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    cfg = load_config(_config(tmp_path, brain_model=str(moved)))
    assert Runner(cfg, progress=False).key("subj01", cfg["backbones"][0], cfg["tasks"][0])["id"] == rec["key"]["id"]
    # a torch-saved linear layer (weight: query dims × voxels) reads as the same model
    import torch

    pt = tmp_path / "ridge.pt"
    torch.save({"weight": torch.as_tensor(s1.coef.T.copy()), "bias": torch.as_tensor(s1.intercept)}, pt)
    coef, icpt = ct.load_brain_model(str(pt), "task captioning")
    assert np.array_equal(coef, s1.coef) and np.array_equal(icpt, s1.intercept)


def test_a_given_digest_must_match_the_file(stage1, tmp_path):
    _, s1 = stage1
    path = tmp_path / "m.npz"
    np.savez(path, coef=s1.coef, intercept=s1.intercept)
    with pytest.raises(ConfigError, match="has sha256"):
        ct.CaptioningTask(brain_model=str(path), brain_model_sha256="0" * 64)
    with pytest.raises(ConfigError, match="brain_model_sha256 is for a brain_model file"):
        ct.CaptioningTask(brain_model_sha256="0" * 64)


def _cli(tmp_path, capsys, **task) -> tuple[int, list[str]]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, **task)))
    capsys.readouterr()
    code = main(["-q", "run", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("brainharness")]  # not the models' bars


@pytest.mark.parametrize("bad", ["voxels", "queries", "missing", "keys"])
def test_a_bad_model_file_is_one_line_exit_2_before_any_unit_runs(bad, stage1, tmp_path, capsys):
    rec1, s1 = stage1
    n_vox, n_q = s1.coef.shape
    assert n_vox == rec1["scores"]["n_voxels"] and n_q == rec1["scores"]["embedding_dim"]
    path = tmp_path / "bad.npz"
    coef = {"voxels": s1.coef[:-1], "queries": s1.coef[:, :-1]}.get(bad, s1.coef)
    if bad == "keys":
        np.savez(path, w=coef)
    elif bad != "missing":
        np.savez(path, coef=coef, intercept=np.zeros(coef.shape[1], np.float32))
    code, err = _cli(tmp_path, capsys, brain_model=str(path))
    fragment = {"voxels": f"maps {n_vox - 1} voxels to {n_q} query dims; this unit has {n_vox} voxels in its ROI",
                "queries": f"and the captioner takes {n_q} query dims", "missing": "no such file",
                "keys": "needs arrays coef and intercept"}[bad]
    assert code == 2 and len(err) == 1 and err[0].startswith("brainharness: error: task captioning: brain_model"), err
    assert fragment in err[0], err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.json"))  # no unit ran


def test_stage2_brain_model_is_seed000s_stage2_selected_on_the_training_split(stage1, tmp_path, monkeypatch):
    rec1, _ = stage1
    calls = []
    orig = ct.train_stage2

    def spy(coef, intercept, shape, retr, tok, train, p, **kw):
        calls.append((len(train.x), None if kw.get("val") is None else len(kw["val"].x), kw.get("epochs")))
        return orig(coef, intercept, shape, retr, tok, train, p, **kw)

    monkeypatch.setattr(ct, "train_stage2", spy)
    rec = _run(tmp_path, brain_model="stage2", retrieval_backbone=ct.TINY_RETRIEVAL, max_epochs=2, patience=2,
               select_on="brain_text", lr=1e-3, batch_size=16)
    rows = {r["system"]: r for r in rec["tables"]["captioning"]}
    assert list(rows) == ["brain (stage 2)", "nearest-neighbour", "true image", "shuffled brain"]
    assert rows["shuffled brain"]["brain_model"] == "brain (stage 2)"
    history = rec["tables"]["stage2_history"]
    assert history[0]["run"] == "selection" and history[0]["epoch"] == 0 and "val_loss" in history[0]
    epoch = rec["details"]["best_epoch"]
    # selection on 160 of the 200 training images, validated on the other 40; the refit on all 200 for that many
    # epochs — the 40 test images are never a stage-2 input
    assert calls == [(160, 40, None), (200, None, epoch)], calls
    assert epoch == 2  # trained: the stage-2 brain model is not the ridge (0.0366 vs 0.0323 when measured)
    assert rec["scores"]["query_r2"] != pytest.approx(rec1["scores"]["query_r2"], abs=1e-4)
    assert rows["true image"]["rouge1"] == pytest.approx({r["system"]: r for r in
                                                          rec1["tables"]["captioning"]}["true image"]["rouge1"])
