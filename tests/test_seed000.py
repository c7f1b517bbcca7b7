"""Seed 000 end to end on a tiny synthetic problem: the captioner trained and cached here,
stage 1 → stage 2 → four-way retrieval → captions and baselines → ROI-synthetic captions.

Everything is small (32 px scenes, 300 voxels, a one-layer BLIP-2 trained for 40 steps), so
the numbers are only checked for what must hold whatever the scale: the records are complete,
stage 2 beats the zero-shot stage-1 reading on text retrieval, model selection never reads the
test split (a spy on every feature and caption read, and test-split invariance of every
selected quantity), and the baselines and ROI inputs are built as specified.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("transformers")

from conftest import tiny_config

import brainharness.tasks.decoding  # noqa: F401  (registers decoding)
from brainharness.backbones import blip2_synthetic as captioner  # registers blip2-synthetic
from brainharness.config import load_config
from brainharness.errors import ConfigError, DataError, PluginNotFound
from brainharness.params import defaults
from brainharness.runner import Runner
from brainharness.tasks import captioning as cap
from brainharness.tasks.decoding import TINY_CAPTIONER, DecodingTask

TINY = TINY_CAPTIONER["config"]
CAPTIONER = {"config": TINY, "corpus": {"image_size": 32},
             "train": {"steps": 40, "vision_steps": 20, "batch_size": 16, "lr": 5e-3}}
N_CANDIDATES = 100
DECODING = {"name": "decoding", "retrieval_backbone": {"name": "blip2-synthetic", "variant": "retrieval", **CAPTIONER},
            "n_candidates": N_CANDIDATES, "n_trials": 5, "text_trials": 10, "max_epochs": 6, "patience": 3,
            "lr": 3e-3, "batch_size": 32, "caption_metrics": ["rouge1", "rougeL"], "prompt": [None, "a photo of"],
            "select_metric": "rougeL", "max_new_tokens": 12, "num_threads": 1, "examples": 3}
DIRECTIONS = {"brain→image", "image→brain", "text→brain", "brain→text"}


def config(tmp: Path, **task) -> dict:
    return tiny_config(tmp, dataset={"name": "synthetic", "n_train": 300, "n_test": 120, "n_voxels": 300,
                                     "image_size": 32, "seed": 5},
                       backbones=[{"name": "blip2-synthetic", "label": "captioner", **CAPTIONER}],
                       tasks=[{**DECODING, **task}])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runner = Runner(config(tmp_path_factory.mktemp("seed000")), progress=False)
    (record,) = runner.run()
    return runner, record


def test_record_is_complete(run):
    runner, rec = run
    assert rec["status"] == "complete" and rec["evaluated_on"] == "test"
    weights = rec["backbone"]["weights"]
    assert weights["source"] == "local" and weights["pretrained"] is False and "synthetic scenes" in weights["trained_on"]
    tables = rec["tables"]
    rows = tables["retrieval"]
    assert [r["stage"] for r in rows] == [2] * 4 + [1] * 4  # stage 2 first
    for stage in (1, 2):
        got = {r["direction"]: r for r in rows if r["stage"] == stage}
        assert set(got) == DIRECTIONS
        for d, r in got.items():
            assert r["n_candidates"] == N_CANDIDATES and r["n_trials"] == (5 if "image" in d else 10)
            assert r["ci_low"] <= r["mean"] <= r["ci_high"] and r["chance"] == pytest.approx(1 / N_CANDIDATES)
            if stage == 2:  # paired over test images, same trials: Δ of the means
                one = next(x for x in rows if x["stage"] == 1 and x["direction"] == d)
                assert r["delta"] == pytest.approx(r["mean"] - one["mean"], abs=0.05)
                assert r["delta_ci_low"] <= r["delta"] <= r["delta_ci_high"] and r["n_items"] > N_CANDIDATES / 2
    systems = {r["system"]: r for r in tables["captioning"]}
    assert list(systems) == list(cap.SYSTEMS)
    for r in systems.values():
        assert set(r) >= {"rouge1", "rougeL"} and all(0 <= r[m] <= 1 for m in ("rouge1", "rougeL"))
    scores = rec["scores"]
    assert rec["main_score"] == "rougeL" or scores[rec["main_score"]] is not None
    assert scores["rougeL"] == systems["brain (stage 2)"]["rougeL"]
    assert scores["stage1_rougeL"] == systems["brain (stage 1)"]["rougeL"]
    assert {f"stage{s} {d}" for s in (1, 2) for d in DIRECTIONS} <= set(scores)
    roi = tables["roi_captions"]
    assert {r["roi"] for r in roi} == set(cap.ROI_GROUPS) and {r["stage"] for r in roi} == {1, 2}
    assert all(isinstance(r["caption"], str) for r in roi)
    assert len(tables["caption_examples"]) == 3 and tables["prompt_selection"]
    assert rec["details"]["prompt"] in (None, "a photo of") and rec["details"]["best_epoch"] == scores["best_epoch"]
    side = runner.store.per_voxel(rec["_path"])
    n = rec["dataset"]["n_scored_images"]
    assert side["caption_brain_stage_2_rougeL"].shape == (n,) and side["captions_true_image"].shape == (n,)
    assert np.mean(side["caption_brain_stage_2_rougeL"]) == pytest.approx(scores["rougeL"], rel=1e-6)
    assert side["caption_stim_ids"].tolist() == runner.dataset.subject("subj01").test.stim_ids.tolist()
    assert set(rec["timings"]) >= {"stage1_s", "stage2_s", "retrieval_s", "captioning_s", "roi_captions_s"}


CLASSES = ["a red ball on the left", "a blue box at the top", "a smiling face with pink hair",
           "a person in a green shirt", "a sign with words on it", "a house on the grass"]


def test_stage2_improves_text_retrieval_over_stage1():
    """A tiny problem where the brain carries which of six captions describes the image: stage 1
    (ridge, read zero-shot through a random-init BLIP-2's image-text head) is at chance; eq. 1
    (copied, trainable text path) aligns brain and text, and stays close to the ridge targets."""
    import torch

    from brainharness.backbones.blip2 import Blip2
    from brainharness.metrics import top1_retrieval
    from brainharness.ridge import RidgeCV
    from brainharness.tasks.contrastive import (
        STAGE2_PARAMS,
        Paired,
        brain_outputs,
        encode_texts,
        query_text_similarity,
        train_stage2,
    )

    torch.manual_seed(0)
    retr = Blip2(weights="random-init", config=captioner.resolve(TINY)["config"], variant="retrieval")
    m = retr.model
    q, h = m.config.num_query_tokens, m.config.qformer_config.hidden_size
    rng = np.random.default_rng(0)
    n_tr, n_va, n_te, k = 240, 60, 120, len(CLASSES)
    labels = rng.integers(k, size=n_tr + n_va + n_te)
    x = (rng.standard_normal((k, 40))[labels] + 0.7 * rng.standard_normal((len(labels), 40))).astype(np.float32)
    y = (rng.standard_normal((k, q * h))[labels] + 0.5 * rng.standard_normal((len(labels), q * h))).astype(np.float32)
    caps = [[CLASSES[c]] for c in labels]
    tr, va, te = np.arange(n_tr), np.arange(n_tr, n_tr + n_va), np.arange(n_tr + n_va, len(labels))
    ridge = RidgeCV(alphas=np.logspace(-1, 4, 6), device="cpu").fit(x[tr], y[tr])
    p = {**defaults(STAGE2_PARAMS), "lr": 3e-3, "batch_size": 32, "max_epochs": 12, "patience": 4}
    part = lambda rows: Paired(x[rows], y[rows], [caps[r] for r in rows])
    res = train_stage2(ridge.coef_.numpy(), ridge.intercept_.numpy(), (q, h), m, retr.tokenizer, part(tr), p,
                       val=part(va), seed=0, alphas=ridge.best_alphas_.numpy())
    assert res.best_epoch >= 1 and res.history[0]["epoch"] == 0

    def class_accuracy(shared, texts):  # brain→text among the six captions
        return float(np.mean(query_text_similarity(shared, texts).argmax(1) == labels[te]))

    P1 = ridge.predict(x[te])
    with torch.no_grad():
        S1 = torch.nn.functional.normalize(m.vision_projection(torch.as_tensor(P1).reshape(-1, q, h)), dim=-1).numpy()
    acc1 = class_accuracy(S1, retr.encode_text(CLASSES))
    P2, S2 = brain_outputs(res.model, x[te], "cpu")
    acc2 = class_accuracy(S2, encode_texts(res.model, retr.tokenizer, CLASSES, p, "cpu"))
    assert acc2 > 0.6 and acc2 > acc1 + 0.3, (acc1, acc2)
    # the MSE term keeps the brain model on its targets: brain→image does not collapse
    kw = {"n_candidates": 100, "n_trials": 5}
    b2i_1, b2i_2 = top1_retrieval(P1, y[te], **kw)["mean"], top1_retrieval(P2, y[te], **kw)["mean"]
    assert b2i_2 >= 0.8 * b2i_1, (b2i_1, b2i_2)


def _spy(runner):
    seen = {"features": [], "captions": set()}
    orig = runner.cache.features

    def features(backbone, stimuli, ids, layer=None, progress=False):
        seen["features"].append(np.asarray(ids))
        return orig(backbone, stimuli, ids, layer, progress)

    class Captions(dict):
        def get(self, k, default=None):
            seen["captions"].add(int(k))
            return super().get(k, default)

        def __getitem__(self, k):
            seen["captions"].add(int(k))
            return super().__getitem__(k)

    runner.cache.features = features
    stim = runner.dataset.stimuli
    stim.captions = Captions(stim.captions)
    return seen


def test_selection_never_reads_the_test_split(run):
    """Validation mode (what sweeps use): a spy on every feature and caption read sees no test
    id — α, stage 2's epoch and the prompt are all chosen inside the training split."""
    runner, _ = run
    seen = _spy(runner)
    val = runner.run_unit("subj01", runner.cfg["backbones"][0], runner.cfg["tasks"][0], evaluated_on="validation",
                          experiment="val", track=False, overrides={"roi_captions": False, "n_candidates": 50})
    test_ids = set(runner.dataset.subject("subj01").test.stim_ids.tolist())
    assert seen["features"] and all(not (set(s.tolist()) & test_ids) for s in seen["features"])
    assert seen["captions"] and not (seen["captions"] & test_ids)
    assert val["evaluated_on"] == "validation" and val["tables"]["prompt_selection"]


def test_selection_is_blind_to_the_test_split(run, tmp_path):
    """Replace the test split's brain responses by noise: α, every stage-2 validation number,
    the selected epoch and the selected prompt stay identical; only the test scores move."""
    _, rec = run
    other = Runner(config(tmp_path), progress=False)
    subject = other.dataset.subject("subj01")
    rng = np.random.default_rng(0)
    subject.test.averaged = rng.standard_normal(subject.test.averaged.shape).astype(np.float32)
    (noisy,) = other.run()
    for k in ("best_epoch", "prompt", "stage1_alpha_median"):
        assert noisy["details"][k] == rec["details"][k], k
    assert noisy["tables"]["stage2_history"] == rec["tables"]["stage2_history"]
    assert noisy["tables"]["prompt_selection"] == rec["tables"]["prompt_selection"]
    assert noisy["scores"]["stage1 query_r2"] != rec["scores"]["stage1 query_r2"]  # the test rows did change


def test_roi_synthetic_inputs():
    rois = {"V1": np.array([1, 1, 0, 0, 0, 0], bool), "OFA": np.array([0, 0, 1, 0, 0, 0], bool),
            "FFA": np.array([0, 0, 0, 1, 0, 0], bool), "nsdgeneral": np.ones(6, bool)}
    groups, skipped = cap.roi_groups(rois, True)
    assert set(groups) == {"V1", "floc-faces"} and "V2" in skipped
    assert groups["floc-faces"].tolist() == [0, 0, 1, 1, 0, 0]  # the union of the group's members
    assert list(cap.roi_groups(rois, ["FFA"])[0]) == ["FFA"]
    assert list(cap.roi_groups(rois, {"faces": ["OFA", "nope"]})[0]) == ["faces"]
    with pytest.raises(DataError, match="none of"):
        cap.roi_groups(rois, ["PPA"])
    voxels = np.array([0, 2, 3, 5])  # the decoded voxel set (e.g. nsdgeneral ∩ finite)
    x = cap.roi_input(groups["floc-faces"], voxels)
    assert x.tolist() == [0, 1, 1, 0] and x.dtype == np.float32
    with pytest.raises(DataError, match="no voxel"):
        cap.roi_input(np.array([0, 1, 0, 0, 1, 0], bool), voxels)
    rng = np.random.default_rng(0)
    coef, icpt = rng.standard_normal((4, 6)), rng.standard_normal(6)
    q = cap.roi_queries(coef, icpt, x, (2, 3), 11.0)
    lin = (x @ coef).reshape(2, 3)
    expected = lin / np.linalg.norm(lin, axis=1, keepdims=True) * 11 + icpt.reshape(2, 3)
    np.testing.assert_allclose(q, expected, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q - icpt.reshape(2, 3), axis=1), 11, rtol=1e-5)


def test_nearest_neighbour_captions_and_shuffle():
    train = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    caps = [["a red ball", "a ball"], ["a face"], ["a house", "a home"]]
    pred = np.array([[0.1, 5, 0.2], [3, 0, 0.1], [0, 0.1, 0.2]], np.float32)  # cosine, not distance
    got, rows = cap.nearest_neighbour_captions(pred, train, caps, index=1)
    assert rows.tolist() == [1, 0, 2] and got == ["a face", "a ball", "a home"]  # index 1, else the last
    with pytest.raises(DataError):
        cap.nearest_neighbour_captions(pred, train, caps[:2])
    for n in (2, 3, 10, 301):
        perm = cap.derangement(n, 0)
        assert sorted(perm.tolist()) == list(range(n)) and not np.any(perm == np.arange(n))


def test_nearest_neighbour_rows_come_from_training_images(run):
    runner, rec = run
    side = runner.store.per_voxel(rec["_path"])
    train_ids = set(runner.dataset.subject("subj01").train.stim_ids.tolist())
    assert set(side["nearest_neighbour_train_ids"].tolist()) <= train_ids
    caps = runner.dataset.stimuli.captions
    for i, c in zip(side["nearest_neighbour_train_ids"], side["captions_nearest_neighbour"]):
        assert c == caps[int(i)][0]


def test_ridge_penalty_makes_the_ridge_solution_the_mse_minimum():
    """With mse: ridge the MSE term's full-batch gradient at the stage-1 ridge is ~0; without it
    gradient steps pull the weights off the regularised solution toward an over-fitted one."""
    import torch

    from brainharness.ridge import RidgeCV
    from brainharness.tasks.contrastive import STAGE2_PARAMS, eq1, stage2_model_class

    retr = captioner.SyntheticBlip2(variant="retrieval", **CAPTIONER)
    m = retr.model
    q, h = m.config.num_query_tokens, m.config.qformer_config.hidden_size
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 30)).astype(np.float32)
    y = (x @ rng.standard_normal((30, q * h)) + 3 * rng.standard_normal((80, q * h))).astype(np.float32)
    ridge = RidgeCV(alphas=np.logspace(0, 4, 9), device="cpu", dtype=torch.float64).fit(x, y)
    assert ridge.best_alphas_.min() > 1  # a strongly regularised solution
    p = {**defaults(STAGE2_PARAMS), "lambda_brain_text": 0.0, "lambda_image_text": 0.0}
    enc = retr.tokenizer(["a red ball"] * len(x), padding=True, return_tensors="pt", return_token_type_ids=False)
    penalty = (torch.as_tensor(ridge.best_alphas_.numpy(), dtype=torch.float32), len(x))
    norms = {}
    for name, pen in (("penalised", penalty), ("plain", None)):
        model = stage2_model_class()(ridge.coef_.numpy(), ridge.intercept_.numpy(), (q, h), m, p)
        total, _ = eq1(model, torch.as_tensor(x), torch.as_tensor(y), enc["input_ids"], enc["attention_mask"], p,
                       float(y.var(0).mean()), pen)
        total.backward()
        norms[name] = float(model.brain.weight.grad.norm())
    assert norms["penalised"] < 1e-3 * norms["plain"], norms


def test_stage2_starts_as_the_zero_shot_stage1_reading(run):
    """Copied text path = the library's text embeddings; brain_projection starts as vision_projection."""
    import torch

    from brainharness.tasks.contrastive import STAGE2_PARAMS, stage2_model_class

    retr = captioner.SyntheticBlip2(variant="retrieval", **CAPTIONER)
    m = retr.model
    q, h = m.config.num_query_tokens, m.config.qformer_config.hidden_size
    rng = np.random.default_rng(0)
    coef, icpt = rng.standard_normal((5, q * h)).astype(np.float32), np.zeros(q * h, np.float32)
    model = stage2_model_class()(coef, icpt, (q, h), m, defaults(STAGE2_PARAMS)).eval()
    texts = ["a red ball on the left", "a face"]
    enc = retr.tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        ours = model.text_embeds(enc["input_ids"], enc["attention_mask"]).numpy()
        x = torch.as_tensor(rng.standard_normal((3, 5)).astype(np.float32))
        b = model.brain_queries(x)
        np.testing.assert_allclose(model.shared(b, model.brain_projection).numpy(),
                                   torch.nn.functional.normalize(m.vision_projection(b), dim=-1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours, retr.encode_text(texts), rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in m.parameters())  # the backbone itself is untouched


def test_captioner_is_cached_and_resumes_exactly(tmp_path, monkeypatch):
    import torch

    spec = captioner.resolve(TINY, {"image_size": 32}, {"steps": 10, "vision_steps": 10, "batch_size": 4,
                                                        "checkpoint_every": 5})
    whole = captioner.ensure_captioner(spec, tmp_path / "a")
    assert (whole / "generation" / "captioner.json").exists() and (whole / "retrieval" / "config.json").exists()
    assert captioner.ensure_captioner(spec, tmp_path / "a") == whole  # cached: no retraining
    calls = {"n": 0}
    orig = captioner._Trainer._loss

    def crash(self, *a):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # interrupted at step 17 (10 image-encoder + 7 Q-Former steps), after the step-15 checkpoint
        return orig(self, *a)

    monkeypatch.setattr(captioner._Trainer, "_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        captioner.ensure_captioner(spec, tmp_path / "b")
    key = whole.name
    partial = tmp_path / "b" / "captioners" / f"{key}.partial"
    assert (partial / "state.pt").exists() and not (tmp_path / "b" / "captioners" / key).exists()
    monkeypatch.setattr(captioner._Trainer, "_loss", orig)
    resumed = captioner.ensure_captioner(spec, tmp_path / "b")
    from safetensors.torch import load_file

    for variant in ("generation", "retrieval"):
        a, b = (load_file(str(d / variant / "model.safetensors")) for d in (whole, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), variant
    with pytest.raises(ConfigError, match="unknown train option"):
        captioner.resolve(train={"step": 3})
    with pytest.raises(ConfigError, match="≥ 10"):
        captioner.resolve(train={"steps": 5})
    with pytest.raises(ConfigError, match="not an option"):
        captioner.SyntheticBlip2(weights="random-init")


def test_bad_parameters_fail_early(tmp_path):
    for bad, match in (({"lambda_mse": -1}, "lambda_mse"), ({"prompt": 3}, "prompt"),
                       ({"roi_stages": [3]}, "roi_stages"), ({"projection_init": "zeros"}, "projection_init"),
                       ({"text_trials": 1}, "text_trials"), ({"refit": "yes"}, "refit"),
                       ({"mse": "yes"}, "mse"), ({"select_on": "top1"}, "select_on")):
        with pytest.raises(ConfigError, match=match):
            DecodingTask(**bad)
    with pytest.raises(PluginNotFound, match="did you mean 'blip2'"):
        DecodingTask(retrieval_backbone={"name": "blip22"})


def test_seed000_config_resolves():
    path = Path(__file__).resolve().parents[1] / "configs" / "seed000.yaml"
    cfg = load_config(path)
    assert cfg["backbones"][0]["name"] == "blip2-synthetic"
    (task,) = cfg["tasks"]
    params = {k: v for k, v in task.items() if k not in ("name", "label")}
    t = DecodingTask(**params)
    assert t.p["n_candidates"] == 300 and t.p["n_trials"] == 30 and t.p["text_trials"] == 50
    text = path.read_text()
    assert "Salesforce/blip2-opt-2.7b" in text and "Salesforce/blip2-itm-vit-g" in text
    yaml.safe_load(json.dumps(cfg))  # plain data all the way down


def test_stage2_weights_are_swept_on_validation_only(tmp_path):
    """`brainharness sweep` over eq. 1's λ and lr: each trial is a validation record with its own
    λ; the best is scored once on test with the same parameters."""
    from brainharness.sweeps.study import run_sweep

    cfg = config(tmp_path, captioning=False, roi_captions=False, n_candidates=40, max_epochs=2, patience=2)
    cfg["sweep"] = {"study": "s000", "n_trials": 2, "validation_fraction": 0.3, "objective": "stage2 brain→image",
                    "space": {"lambda_brain_text": {"low": 0.1, "high": 10.0, "log": True},
                              "lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    summary = run_sweep(cfg, progress=False)
    assert summary["n_complete_trials"] == 2
    records = list(Runner(cfg, progress=False).store.records())
    val = [r for r in records if r["evaluated_on"] == "validation"]
    (test,) = [r for r in records if r["evaluated_on"] == "test"]
    lams = {r["task"]["params"]["lambda_brain_text"] for r in val}
    assert len(lams) == 2 and all(r["main_score"] == "stage2 brain→text" for r in val)
    assert test["task"]["params"]["lambda_brain_text"] == pytest.approx(summary["best_params"]["lambda_brain_text"])
    # the objective named in the sweep (not the main score) picked the best trial
    (chosen,) = [r for r in val if r["task"]["params"]["lr"] == pytest.approx(summary["best_params"]["lr"])]
    top = max(r["scores"]["stage2 brain→image"] for r in val)
    assert chosen["scores"]["stage2 brain→image"] == summary["best_validation_score"] == pytest.approx(top)
    assert summary["objective"] == "stage2 brain→image" == test["sweep"]["objective"]
    assert summary["test_score"] == test["scores"]["stage2 brain→image"]
    # trials split the 300 training images (70 / 30 %); only the final record scores the 120 test images
    assert all((r["dataset"]["n_fit_images"], r["dataset"]["n_scored_images"]) == (210, 90) for r in val)
    assert (test["dataset"]["n_fit_images"], test["dataset"]["n_scored_images"]) == (300, 120)


def test_decoding_runs_on_the_nsd_layout(tmp_path):
    """The GPU recipe's path on a miniature of the official NSD layout: COCO captions from the
    stim-info CSV + annotation files, shared images as the test split, NSD ROI names for Table 3."""
    from nsd_layouts import build_nsd, coco_caption

    mini = build_nsd(tmp_path / "nsd", n_images=160, n_shared=24, trials_per_session=60)
    cfg = tiny_config(tmp_path, dataset={"name": "nsd", "root": str(mini.root), "subject": 1},
                      backbones=[{"name": "blip2-synthetic", "label": "captioner", **CAPTIONER}],
                      tasks=[{**DECODING, "n_candidates": 20, "n_trials": 3, "text_trials": 3, "max_epochs": 1,
                              "patience": 1, "prompt": None, "batch_size": 16}])
    runner = Runner(cfg, progress=False)
    (rec,) = runner.run()
    assert rec["status"] == "complete" and rec["dataset"]["name"] == "nsd"
    test_ids = runner.dataset.subject("subj01").test.stim_ids
    assert rec["dataset"]["n_scored_images"] == len(test_ids) >= 20
    assert {r["direction"] for r in rec["tables"]["retrieval"]} == DIRECTIONS
    assert {r["system"] for r in rec["tables"]["captioning"]} == set(cap.SYSTEMS)
    roi = {r["roi"] for r in rec["tables"]["roi_captions"]}
    assert {"V1", "floc-faces"} <= roi  # NSD's prf-visualrois / floc-* names map onto Table 3's rows
    examples = rec["tables"]["caption_examples"]
    assert examples[0]["reference"] == coco_caption(int(examples[0]["stim_id"]), 0)


def test_tied_projection_is_blip2s_own_head():
    """projection_init: tied — the brain is read through the (copied, trainable) vision_projection
    itself: one module, optimised once, moved by both contrastive terms."""
    import torch

    from brainharness.tasks.contrastive import STAGE2_PARAMS, eq1, stage2_model_class

    retr = captioner.SyntheticBlip2(variant="retrieval", **CAPTIONER)
    m = retr.model
    q, h = m.config.num_query_tokens, m.config.qformer_config.hidden_size
    rng = np.random.default_rng(0)
    p = {**defaults(STAGE2_PARAMS), "projection_init": "tied"}
    model = stage2_model_class()(rng.standard_normal((5, q * h)).astype(np.float32), np.zeros(q * h, np.float32),
                                 (q, h), m, p)
    assert model.brain_projection is model.vision_projection and model.vision_projection is not m.vision_projection
    groups = model.param_groups(p)
    ids = [id(t) for g in groups for t in g["params"]]
    assert len(ids) == len(set(ids))  # no parameter in two groups
    torch.optim.AdamW(groups)
    enc = retr.tokenizer(["a red ball", "a face", "a sign"], padding=True, return_tensors="pt",
                         return_token_type_ids=False)
    x, y = torch.randn(3, 5), torch.randn(3, q * h)
    p_bt = {**p, "lambda_mse": 0.0, "lambda_image_text": 0.0}
    total, _ = eq1(model, x, y, enc["input_ids"], enc["attention_mask"], p_bt, 1.0)
    total.backward()  # InfoNCE(b, t) alone reaches the shared head and the brain
    assert model.vision_projection.weight.grad.abs().sum() > 0 and model.brain.weight.grad.abs().sum() > 0


def test_a_backbone_without_query_outputs_is_named(tmp_path):
    cfg = tiny_config(tmp_path, backbones=[{"name": "pixels", "size": 8}],
                      tasks=[{**DECODING, "retrieval_backbone": None}])
    with pytest.raises(ConfigError, match=r"needs Q-Former query tokens \(BLIP-2\) from its backbone; "
                                          r"backbone 'pixels'"):
        Runner(cfg, progress=False)  # refused when the config is read
