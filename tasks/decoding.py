"""Seed 000 end to end: brain → BLIP-2 Q-Former space → retrieval (Table 1), captions (Table 2),
ROI-synthetic captions (Table 3). Each part is switchable (``stage2``, ``retrieval``,
``captioning``, ``roi_captions``).

Backbones. The unit's backbone (``ctx.backbone``) is the *generation* model: its ``layer``
(default ``qformer``: the query outputs, 32×768 for ``Salesforce/blip2-opt-2.7b``) is the
stage-1 target, and its language model writes the captions. ``retrieval_backbone`` is a backbone
spec of the *retrieval* model whose image-text space stage 2 aligns to and whose Q-Former text
path embeds the captions (default ``Salesforce/blip2-itm-vit-g``, as in the paper; ``null`` =
the unit's backbone). On the synthetic data both are the ``blip2-synthetic`` checkpoints
(:mod:`backbones.blip2_synthetic`).

Stage 1 — ridge from the standardised voxels of ``roi`` (default ``nsdgeneral``) to the
flattened query outputs, one α per target chosen by GCV on the fit rows (:func:`brainharness.readout.fit_ridge`).

Stage 2 — eq. 1 (:mod:`brainharness.tasks.contrastive`). Selection never leaves the fit rows: a validation
part (``validation_fraction``) is carved from them (:func:`brainharness.task.selection_split`); a
ridge fitted on the rest starts stage 2, whose best epoch on the validation part (``select_on``:
eq. 1's total or one of its terms; epoch 0 = the ridge) is kept. With ``refit`` (default) stage 2 is then retrained from the stage-1
ridge of *all* fit rows for exactly that many epochs; without it, the validation-selected
model is used as it is. ``select_on: retrieval`` selects the epoch on Table 1 itself: the mean
validation top-1 of the four directions (all validation images as candidates).

Retrieval (DESIGN §6, MindEye-2 protocol, :func:`brainharness.metrics.top1_retrieval`):
``n_candidates`` score images, ``n_trials`` (image) / ``text_trials`` (text) draws, mean and
95 % CI, for both stages. ``brain→image`` / ``image→brain``: cosine of the flattened query
outputs (brain prediction vs the image's true ones); with ``retrieval_space: projected`` stage 2's
are compared in the shared space instead, as the seed's code did after stage 2 (each token
through ``brain_projection`` / the fine-tuned ``vision_projection`` and L2-normalised, then the
cosine of the flattened tokens); stage 1's stay in Q-Former space (the code's stage-1 reading).
``brain→text`` / ``text→brain``: BLIP-2's
image-text similarity (max over query tokens of the cosine) between the brain prediction in
the shared space and a caption's text embedding — ``text_caption: index``: the image's
``caption_index``-th caption in every trial; ``random``: one of its captions drawn per trial
(seeded; the same draws for both directions and both stages), as the seed's code did — stage 1
reads its prediction through the retrieval model's own ``vision_projection`` and texts through
its own text path (no training: the zero-shot reading), stage 2 through ``brain_projection``
and its fine-tuned text path (:func:`brainharness.metrics.top1_from_similarity`). Stage-2 rows also
carry ``delta`` = stage 2 − stage 1 on the same trials with a 95 % CI over test images
(:func:`brainharness.metrics.paired_difference`): the trial CI resamples one test set, so it says
how stable the mean is, not whether two models differ.

Captioning (:mod:`brainharness.tasks.captioning`): captions of both stages' predictions and of the
reference systems (nearest-neighbour training caption, the true image's caption, shuffled
brain), scored against all captions of each image with
:func:`brainharness.metrics.captions.caption_scores` (``caption_metrics``: names, ``null`` = all).
``prompt``: ``null`` (BOS only), a string, or a list of candidates — then the one whose
validation captions score best on ``select_metric`` is used (validation part of the fit rows,
predicted by the stage-2 model selected there, or by the train-part ridge without stage 2).

Record: ``scores`` — the caption metrics of the final brain model (stage 2, or stage 1 when
``stage2: false``) under their own names, ``stage1_<metric>`` for stage 1, the retrieval means
as ``stage1 brain→image`` … ``stage2 text→brain``, ``stage1 query_r2`` / ``stage2 query_r2`` (1 −
SSE/SST of the predicted query outputs over the scored rows), ``best_epoch``; ``tables`` —
``retrieval`` (rows with ``stage``, stage 2 first), ``captioning`` (one row per ``system``),
``roi_captions`` (``roi``, ``stage``, ``caption``), ``caption_examples``, ``stage2_history``,
``prompt_selection``; the sidecar holds the per-image caption scores and every caption.
"""
from __future__ import annotations

import time
from typing import ClassVar

import numpy as np

from brainharness.capabilities import (CAPTIONS, IMAGE_FEATURES, IMAGE_TEXT_RETRIEVAL, QUERY_CAPTIONER, QUERY_TOKENS,
                                       ROI_MASKS, Need)
from brainharness.errors import DataError
from brainharness.features import flatten_rows
from brainharness.metrics import paired_difference, top1_per_trial, top1_retrieval
from brainharness.readout import RIDGE_SPACE, fit_ridge, voxel_source
from brainharness.registry import register_task
from brainharness.params import Param
from brainharness.task import TaskContext, TaskOutput, selection_split, standardise
from brainharness.tasks import captioning as cap
from brainharness.tasks.captioning_task import (  # TINY_CAPTIONER: the conformance example's captioner
    STAGE2_TASK_PARAMS, TINY_CAPTIONER, TINY_RETRIEVAL, check_stage2_task, fit_stage2, gen_kwargs, metric_device,
    query_r2, query_shape, retrieval_model)
from brainharness.tasks.contrastive import (
    STAGE2_SPACE,
    brain_outputs,
    encode_texts,
    projected_images,
    query_text_similarity,
)
from brainharness.tasks.decoding_layout import DECODING_LAYOUT
from brainharness.tasks.retrieval import RetrievalTask

GENERATE = ("max_new_tokens", "num_beams")


@register_task("decoding")
class DecodingTask(RetrievalTask):
    direction = "brain→image, brain→text"
    needs = (IMAGE_FEATURES, QUERY_TOKENS,  # stage 1 predicts the unit backbone's query outputs
             Need(QUERY_CAPTIONER, when=lambda p: bool(p["captioning"] or p["roi_captions"]),
                  condition="with captioning or roi_captions"),
             Need(IMAGE_TEXT_RETRIEVAL, role="retrieval_backbone", when=lambda p: p["stage2"] or p["retrieval"],
                  condition="with stage2 or retrieval"),
             Need(CAPTIONS, when=lambda p: p["stage2"] or p["retrieval"] or p["captioning"],
                  condition="with stage2, retrieval or captioning"),
             Need(ROI_MASKS, when=lambda p: bool(p["roi_captions"]), condition="with roi_captions"))
    main_score = "meteor"
    layout = DECODING_LAYOUT  # Tables 1–3 of seed 000 (brainharness.tasks.decoding_layout)
    example = {"backbone": {"name": "blip2-synthetic", **TINY_CAPTIONER},
               "retrieval_backbone": TINY_RETRIEVAL,
               "n_candidates": 50, "n_trials": 2, "text_trials": 2, "max_epochs": 1, "patience": 1,
               "caption_metrics": ["rouge1"], "max_new_tokens": 6, "num_threads": 1, "examples": 1}
    params: ClassVar[dict] = {
        **RetrievalTask.params,
        "text_trials": Param(50, ge=2, doc="candidate sets of the text ↔ brain retrieval"),
        "caption_index": Param(0, ge=0, doc="which caption of an image is its text in retrieval (text_caption: index)"),
        "text_caption": Param("index", choices=("index", "random"),
                              doc="text of an image in T↔B retrieval: caption_index, or a random caption per trial"),
        "retrieval_space": Param("qformer", choices=("qformer", "projected"),
                                 doc="stage 2's image↔brain space: Q-Former outputs, or the projected shared space"),
        "stage2": Param(True, doc="run stage 2 (contrastive fine-tuning, eq. 1)"),
        "retrieval": Param(True, doc="score Table 1 retrieval"),
        "captioning": Param(True, doc="score Table 2 captions"),
        "roi_captions": Param(True, (bool, list, dict), nullable=True,
                              doc="Table 3 ROI-synthetic captions: true (default groups), ROI names or {row: ROIs}"),
        **STAGE2_TASK_PARAMS,  # retrieval_backbone, validation_fraction, refit, eq. 1's parameters
        "prompt": Param(None, (str, list), items=Param(type=str, nullable=True),
                        check=lambda v: not isinstance(v, (list, tuple)) or len(v) > 0,
                        expect="null, a string or a non-empty list of them",
                        doc="captioning prompt; a list is chosen on the validation part"),
        "max_new_tokens": Param(30, ge=1, doc="caption length limit (tokens)"),
        "num_beams": Param(1, ge=1, doc="beam search width (1: greedy)"),
        "caption_metrics": Param(None, list, items=Param(type=str), doc="caption metrics scored (null: all)"),
        "select_metric": Param("meteor", str, doc="caption metric that picks the prompt"),
        "nn_caption_index": Param(0, ge=0, doc="caption of the nearest training image in the reference row"),
        "roi_scale": Param(11.0, gt=0, doc="Table 3: the normalised ROI pattern × this"),
        "roi_stages": Param([1, 2], list, items=Param(type=int, choices=(1, 2)), nonempty=True,
                            doc="Table 3 for the stage-1 and/or stage-2 map"),
        "examples": Param(8, ge=0, doc="example captions kept in the record"),
        "num_threads": Param(None, int, ge=1, doc="torch CPU threads (null: as is)"),
    }
    search_space: ClassVar[dict] = {**RIDGE_SPACE, **STAGE2_SPACE}

    def check(self, p):
        super().check(p)
        check_stage2_task(self.owner(), p)

    # -- running ----------------------------------------------------------------------
    def retrieval_model(self, ctx: TaskContext):
        return retrieval_model(self.p["retrieval_backbone"], ctx)  # one instance per run (and per sweep)

    def run(self, ctx: TaskContext) -> TaskOutput:
        from brainharness.ridge import resolve_device

        p, t = self.p, {}
        device = str(resolve_device(ctx.device))
        t0 = time.perf_counter()
        gen = ctx.backbone
        Y_fit = flatten_rows(ctx.features(ctx.fit.stim_ids, p["layer"]))
        Y_score = flatten_rows(ctx.features(ctx.score.stim_ids, p["layer"]))
        shape = query_shape(gen, Y_fit.shape[1], "decoding")
        mask = self.voxels(ctx)
        B_fit, B_score = standardise(ctx.fit.averaged[:, mask], ctx.score.averaged[:, mask])
        t["features_s"] = time.perf_counter() - t0

        # stage 1: ridge on every fit row (α per target by GCV on them)
        ridge_p = dict(p, standardize=False, pca=None)
        t0 = time.perf_counter()
        ridge1, P1 = fit_ridge(ridge_p, ctx, B_fit, Y_fit, B_score, voxel_source(ctx, p["roi"]), ctx.fit.stim_ids)
        coef1, icpt1 = ridge1.coef_.cpu().numpy(), ridge1.intercept_.cpu().numpy()
        t["stage1_s"] = time.perf_counter() - t0
        details = {"stage1_alpha_median": float(ridge1.best_alphas_.median()), "n_voxels": int(mask.sum()),
                   "query_shape": list(shape)}

        fit_caps = [list(ctx.stimuli.captions.get(int(i), [])) for i in ctx.fit.stim_ids]
        need_text = p["stage2"] or p["retrieval"]
        retr = self.retrieval_model(ctx) if need_text else None
        val = None  # (validation rows, validation-selected model, train-part ridge)
        stage2 = None
        tables: dict = {}
        if p["stage2"]:
            t0 = time.perf_counter()
            stage2, val, history = fit_stage2(p, ctx, retr, B_fit, Y_fit, fit_caps, ridge_p,
                                                (coef1, icpt1, ridge1.best_alphas_.cpu().numpy()), shape, device)
            tables["stage2_history"] = history
            details["best_epoch"] = stage2.best_epoch
            t["stage2_s"] = time.perf_counter() - t0
        P2 = S2 = None
        if stage2 is not None:
            P2, S2 = brain_outputs(stage2.model, B_score, device)

        scores: dict = {"n_voxels": int(mask.sum()), "embedding_dim": int(Y_fit.shape[1]),
                        "stage1 query_r2": query_r2(P1, Y_score)}
        if stage2 is not None:
            scores["best_epoch"] = stage2.best_epoch
            scores["stage2 query_r2"] = query_r2(P2, Y_score)
        if p["retrieval"]:
            t0 = time.perf_counter()
            rows = self._retrieval(ctx, retr, shape, P1, P2, S2, Y_score, stage2, device)
            tables["retrieval"] = rows
            for r in rows:
                scores[f"stage{r['stage']} {r['direction']}"] = r["mean"]
            t["retrieval_s"] = time.perf_counter() - t0

        per_image: dict = {}
        main = self.main_score
        if p["captioning"]:
            t0 = time.perf_counter()
            cap_rows, per_image, cap_scores, examples, prompt_rows, prompt = self._captioning(
                ctx, gen, P1, P2, Y_fit, Y_score, fit_caps, val, B_fit, ridge_p, device)
            tables["captioning"] = cap_rows
            tables["caption_examples"] = examples
            if prompt_rows:
                tables["prompt_selection"] = prompt_rows
            details["prompt"] = prompt
            scores.update(cap_scores)
            t["captioning_s"] = time.perf_counter() - t0
        if p["roi_captions"]:
            t0 = time.perf_counter()
            prompt = details["prompt"] if "prompt" in details else \
                (p["prompt"][0] if isinstance(p["prompt"], list) else p["prompt"])
            tables["roi_captions"], skipped = self._roi_captions(ctx, gen, mask, shape, (coef1, icpt1), stage2,
                                                                 prompt)
            if skipped:
                details["roi_groups_skipped"] = skipped
            t["roi_captions_s"] = time.perf_counter() - t0
        if scores.get(main) is None:
            main = next((k for k in ("stage2 brain→text", "stage2 brain→image", "stage1 brain→image")
                         if scores.get(k) is not None), "n_voxels")
        details["caption_metric_info"] = scores.pop("_caption_info", None)
        return TaskOutput(main, scores, tables, per_image, {"timings": t, "details": details})

    # -- retrieval --------------------------------------------------------------------
    def _retrieval(self, ctx, retr, shape, P1, P2, S2, Y_score, stage2, device) -> list[dict]:
        import torch

        p = self.p
        n = len(Y_score)
        if n < p["n_candidates"]:
            raise DataError(f"decoding: {n} scored images, fewer than n_candidates={p['n_candidates']}")
        texts, counts = _retrieval_texts(ctx.stimuli, ctx.score.stim_ids, p)
        img_kw = {"n_candidates": p["n_candidates"], "n_trials": p["n_trials"], "seed": p["seed"], "per_item": True}
        txt_kw = {"n_candidates": p["n_candidates"], "n_trials": p["text_trials"], "seed": p["seed"], "per_item": True}
        with torch.no_grad():
            vp = retr.vision_projection
            q = torch.as_tensor(P1.reshape(n, *shape), device=vp.weight.device, dtype=vp.weight.dtype)
            S1 = torch.nn.functional.normalize(vp(q), dim=-1).float().cpu().numpy()
        T1 = retr.encode_text(texts)
        stages = [(1, P1, Y_score, S1, T1, "qformer")]
        if stage2 is not None:
            T2 = encode_texts(stage2.model, retr.tokenizer, texts, self.p, device)
            if p["retrieval_space"] == "projected":
                stages.insert(0, (2, S2.reshape(n, -1), projected_images(stage2.model, Y_score, device).reshape(n, -1),
                                  S2, T2, "projected"))
            else:
                stages.insert(0, (2, P2, Y_score, S2, T2, "qformer"))
        rows, hits = [], {}
        for stage, P, I, S, T, space in stages:
            sim = np.concatenate([query_text_similarity(S[s:s + 64], T) for s in range(0, n, 64)])  # (brain, text)
            for direction, r in (("brain→image", top1_retrieval(P, I, **img_kw)),
                                 ("image→brain", top1_retrieval(I, P, **img_kw)),
                                 ("text→brain", top1_per_trial(drawn_similarity(sim, counts, p, True), n, **txt_kw)),
                                 ("brain→text", top1_per_trial(drawn_similarity(sim, counts, p), n, **txt_kw))):
                hits[stage, direction] = r.pop("item_hits")
                text = {"text_caption": p["text_caption"]} if "text" in direction else {}
                rows.append({"stage": stage, "direction": direction, **r,
                             "space": space if "image" in direction else "projected", **text})
        for r in rows:  # stage 2 vs stage 1 on the same trials, CI over test images (the paired comparison)
            if r["stage"] == 2:
                r.update(paired_difference(hits[2, r["direction"]], hits[1, r["direction"]]))
        return rows

    # -- captioning -------------------------------------------------------------------
    def _captioning(self, ctx, gen, P1, P2, Y_fit, Y_score, fit_caps, val, B_fit, ridge_p, device):
        p = self.p
        refs = [list(ctx.stimuli.captions.get(int(i), [])) for i in ctx.score.stim_ids]
        if any(not r for r in refs):
            raise DataError("decoding: every scored image needs reference captions for the captioning part")
        kw = gen_kwargs(self.p)
        prompt, prompt_rows = p["prompt"], []
        if isinstance(prompt, list):
            if len(prompt) == 1:
                prompt = prompt[0]
            else:
                rows_va, q_va = self._validation_predictions(ctx, val, B_fit, ridge_p, Y_fit, device)
                prompt, prompt_rows = cap.select_prompt(p["prompt"], gen, q_va, [fit_caps[r] for r in rows_va], kw,
                                                        p["select_metric"], metric_device(device), ctx.cache_dir)
        best = P2 if P2 is not None else P1
        systems = {}
        if P2 is not None:
            systems["brain (stage 2)"] = cap.generate(gen, P2, prompt, kw)
        systems["brain (stage 1)"] = cap.generate(gen, P1, prompt, kw)
        systems["nearest-neighbour"], nn_rows = cap.nearest_neighbour_captions(best, Y_fit, fit_caps,
                                                                               p["nn_caption_index"])
        systems["true image"] = cap.generate(gen, Y_score, prompt, kw)
        main_system = "brain (stage 2)" if P2 is not None else "brain (stage 1)"
        rows, per_image, scores, info, _ = cap.score_systems(systems, main_system, refs, p["seed"], p["caption_metrics"],
                                                             metric_device(device), ctx.cache_dir, stage1_prefix=True)
        per_image["caption_stim_ids"] = np.asarray(ctx.score.stim_ids)
        per_image["nearest_neighbour_train_ids"] = np.asarray(ctx.fit.stim_ids)[nn_rows]
        scores["_caption_info"] = info
        examples = [{"stim_id": int(ctx.score.stim_ids[i]), "reference": refs[i][0],
                     **{name: caps[i] for name, caps in systems.items()}}
                    for i in range(min(p["examples"], len(refs)))]
        return rows, per_image, scores, examples, prompt_rows, prompt

    def _validation_predictions(self, ctx, val, B_fit, ridge_p, Y_fit, device):
        """Query outputs predicted for the validation part of the fit rows by a model that never
        saw them (the validation-selected stage-2 model, else a ridge fitted on the other rows)."""
        if val is not None:
            rows_va, selected, _ = val
            return rows_va, brain_outputs(selected.model, B_fit[rows_va], device)[0]
        _, va = selection_split(ctx.fit, float(self.p["validation_fraction"]), ctx.seed)
        rows_va = np.flatnonzero(np.isin(ctx.fit.stim_ids, va.stim_ids))
        rows_tr = np.setdiff1d(np.arange(len(B_fit)), rows_va)
        _, pred = fit_ridge(ridge_p, ctx, B_fit[rows_tr], Y_fit[rows_tr], B_fit[rows_va],
                            voxel_source(ctx, self.p["roi"]), ctx.fit.stim_ids[rows_tr])
        return rows_va, pred

    # -- ROI-synthetic captions -------------------------------------------------------
    def _roi_captions(self, ctx, gen, mask, shape, init, stage2, prompt):
        p = self.p
        groups, skipped = cap.roi_groups(ctx.rois, p["roi_captions"])
        models = {}
        if 1 in p["roi_stages"]:
            models[1] = init
        if 2 in p["roi_stages"] and stage2 is not None:
            w = stage2.model.brain
            models[2] = (w.weight.detach().T.cpu().numpy(), w.bias.detach().cpu().numpy())
        voxels = np.flatnonzero(mask)
        names, inputs = [], []
        for name, m in groups.items():
            if m[voxels].any():
                names.append(name)
                inputs.append(cap.roi_input(m, voxels))
            else:  # the ROI lies outside the decoded voxels (e.g. not in nsdgeneral)
                skipped.append(name)
        rows = []
        for stage, (coef, icpt) in models.items():
            q = np.stack([cap.roi_queries(coef, icpt, x, shape, p["roi_scale"]) for x in inputs]) if inputs else \
                np.zeros((0, *shape), np.float32)
            caps = cap.generate(gen, q, prompt, gen_kwargs(self.p))
            rows += [{"roi": n, "stage": stage, "caption": c, "n_voxels": int(x.sum()), "scale": float(p["roi_scale"])}
                     for n, c, x in zip(names, caps, inputs)]
        return rows, skipped


def _retrieval_texts(stimuli, stim_ids, p: dict) -> tuple[list[str], np.ndarray]:
    """The texts of T↔B retrieval, image by image, and how many each image has (1, or all its
    captions with ``text_caption: random``)."""
    if p["text_caption"] != "random":
        return [_caption(stimuli, i, p["caption_index"]) for i in stim_ids], np.ones(len(stim_ids), int)
    caps = [list(stimuli.captions.get(int(i), [])) for i in stim_ids]
    if any(not c for c in caps):
        raise DataError(f"decoding: stimulus {stim_ids[next(k for k, c in enumerate(caps) if not c)]} has no "
                        "caption for text retrieval")
    return [c for cs in caps for c in cs], np.array([len(c) for c in caps])


def drawn_similarity(sim: np.ndarray, counts: np.ndarray, p: dict, transpose: bool = False):
    """``idx`` → the (brain, text) similarity of one trial's candidate images ``idx`` (transposed:
    (text, brain)), each image's text column drawn for that trial: its only text, or with
    ``text_caption: random`` one of its ``counts`` captions (a fresh seeded generator per call,
    so both directions and both stages see the same captions in the same trial)."""
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    rng = np.random.default_rng([int(p["seed"]), 15])

    def of(idx):
        cols = offsets[idx] + (rng.integers(0, counts[idx]) if p["text_caption"] == "random" else 0)
        block = sim[np.ix_(idx, cols)]
        return block.T if transpose else block
    return of


def _caption(stimuli, stim_id, index: int) -> str:
    caps = stimuli.captions.get(int(stim_id), [])
    if not caps:
        raise DataError(f"decoding: stimulus {stim_id} has no caption for text retrieval")
    return caps[min(index, len(caps) - 1)]
