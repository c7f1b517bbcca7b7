"""``captioning``: brain → the captioner's query space → captions → every caption metric.

The brain model is stage 1 of seed 000: a ridge from the standardised voxels of ``roi`` to the
flattened query outputs of the unit backbone's ``layer`` (default ``qformer``), one α per target
by GCV on the training split (:func:`brainharness.readout.fit_ridge`). Its predictions for the
test images go through the backbone's ``language_projection`` and language model
(``generate_from_query_embeds``: ``prompt``, ``max_new_tokens``, ``num_beams``), and the captions
are scored against all captions of each image with :func:`brainharness.metrics.captions.caption_scores`
(``caption_metrics``: names, ``null`` = all). Beside the brain row (``brain (stage 1)``), the
table holds the rows of :mod:`brainharness.tasks.captioning`: ``nearest-neighbour`` (the caption
of the nearest training image in the query space), ``true image`` (the ceiling: the same model's
caption of the true query outputs; a reference row) and ``shuffled brain`` (the floor: the brain
captions against another image's references; a reference row).

Record: ``scores`` — the brain row's caption metrics under their own names, ``stage1 query_r2``,
``n_voxels``; ``tables`` — ``captioning`` (one row per ``system``) and ``caption_examples``; the
sidecar holds every caption and the per-image scores. :func:`stage1_queries` is the brain model
other tasks reuse (``neurons``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from brainharness.capabilities import CAPTIONS, IMAGE_FEATURES, QUERY_CAPTIONER, QUERY_TOKENS
from brainharness.errors import ConfigError, DataError
from brainharness.features import flatten_rows
from brainharness.layout import Layout
from brainharness.params import Param
from brainharness.readout import fit_ridge, voxel_source
from brainharness.registry import register_task
from brainharness.task import TaskContext, TaskOutput, standardise
from brainharness.tasks import captioning as cap
from brainharness.tasks.decoding_layout import DECODING_LAYOUT
from brainharness.tasks.retrieval import RetrievalTask

# the conformance example's captioner (one layer, a few steps; cached) — the one decoding's example uses
TINY_CAPTIONER = {
    "config": {"num_query_tokens": 4, "image_text_hidden_size": 32,
               "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                 "image_size": 32, "patch_size": 8},
               "qformer_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                  "encoder_hidden_size": 32, "vocab_size": 512},
               "text_config": {"hidden_size": 32, "word_embed_proj_dim": 32, "ffn_dim": 64, "num_hidden_layers": 1,
                               "vocab_size": 512}},
    "corpus": {"image_size": 32}, "train": {"steps": 10, "vision_steps": 10, "batch_size": 8}}

CAPTION_PARAMS = {
    "prompt": Param(None, str, doc="text after the query outputs (null: BOS only)"),
    "max_new_tokens": Param(30, ge=1, doc="caption length limit (tokens)"),
    "num_beams": Param(1, ge=1, doc="beam search width (1: greedy)"),
    "num_threads": Param(None, int, ge=1, doc="torch CPU threads (null: as is)"),
}
"""Generation parameters shared by the tasks that caption from query outputs."""


@dataclass
class Stage1:
    """The brain model's query outputs: true (``Y_fit``, ``Y_score``) and predicted (``P``) ones."""

    Y_fit: np.ndarray
    Y_score: np.ndarray
    P: np.ndarray
    shape: tuple[int, int]
    n_voxels: int
    alpha_median: float


def query_shape(backbone, width: int, owner: str) -> tuple[int, int]:
    """(query tokens, width) of the flattened features: the layer must hold the query outputs."""
    n_q = backbone.num_query_tokens  # declared: QUERY_TOKENS
    if width % n_q:
        raise ConfigError(f"{owner}: the layer of backbone {backbone.registry_name} has {width} features, not "
                          f"{n_q} query outputs (use layer: qformer)")
    return n_q, width // n_q


def query_r2(pred: np.ndarray, actual: np.ndarray) -> float:
    """1 − SSE/SST over every query-output dimension of the scored rows."""
    sst = float(((actual - actual.mean(0)) ** 2).sum())
    return 1.0 - float(((actual - pred) ** 2).sum()) / sst if sst > 0 else float("nan")


def stage1_queries(task: RetrievalTask, ctx: TaskContext) -> Stage1:
    """Seed 000's stage 1 for ``task`` (a task with the retrieval task's ridge, ``layer`` and
    ``roi`` parameters): ridge voxels → query outputs on the fit rows, predictions for the score rows."""
    p = task.p
    Y_fit = flatten_rows(ctx.features(ctx.fit.stim_ids, p["layer"]))
    Y_score = flatten_rows(ctx.features(ctx.score.stim_ids, p["layer"]))
    shape = query_shape(ctx.backbone, Y_fit.shape[1], task.owner())
    mask = task.voxels(ctx)
    B_fit, B_score = standardise(ctx.fit.averaged[:, mask], ctx.score.averaged[:, mask])
    ridge, P = fit_ridge(dict(p, standardize=False, pca=None), ctx, B_fit, Y_fit, B_score, voxel_source(ctx, p["roi"]),
                         ctx.fit.stim_ids)
    return Stage1(Y_fit, Y_score, np.asarray(P, dtype=np.float32), shape, int(mask.sum()),
                  float(ridge.best_alphas_.median()))


def gen_kwargs(p: dict) -> dict:
    return {"max_new_tokens": p["max_new_tokens"], "num_beams": p["num_beams"], "do_sample": False}


def metric_device(device: str) -> str | None:
    return device if device.startswith("cuda") else "cpu"


CAPTIONING_LAYOUT = Layout(replace(DECODING_LAYOUT.tables[1], suffix=None))
"""Seed 000 Table 2's table (decoding's captioning table), named after the task."""


@register_task("captioning")
class CaptioningTask(RetrievalTask):
    direction = "brain→text"
    needs = (IMAGE_FEATURES, QUERY_TOKENS, QUERY_CAPTIONER, CAPTIONS)
    main_score = "meteor"
    scores = None  # the caption metrics depend on caption_metrics and on what this machine can run
    layout = CAPTIONING_LAYOUT
    example = {"backbone": {"name": "blip2-synthetic", **TINY_CAPTIONER},
               "caption_metrics": ["rouge1"], "max_new_tokens": 6, "num_threads": 1, "examples": 1}
    params: ClassVar[dict] = {
        **{k: v for k, v in RetrievalTask.params.items() if k not in ("n_candidates", "n_trials", "seed")},
        "seed": Param(0, int, doc="seed of the shuffled-brain pairing"),
        **CAPTION_PARAMS,
        "caption_metrics": Param(None, list, items=Param(type=str), doc="caption metrics scored (null: all)"),
        "nn_caption_index": Param(0, ge=0, doc="caption of the nearest training image in the reference row"),
        "examples": Param(8, ge=0, doc="example captions kept in the record"),
    }

    def run(self, ctx: TaskContext) -> TaskOutput:
        from brainharness.ridge import resolve_device

        p, t = self.p, {}
        device = str(resolve_device(ctx.device))
        refs = [list(ctx.stimuli.captions.get(int(i), [])) for i in ctx.score.stim_ids]
        fit_caps = [list(ctx.stimuli.captions.get(int(i), [])) for i in ctx.fit.stim_ids]
        if any(not r for r in refs):
            raise DataError("captioning: every scored image needs reference captions")
        t0 = time.perf_counter()
        s1 = stage1_queries(self, ctx)
        t["stage1_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen, kw = ctx.backbone, gen_kwargs(p)
        systems = {"brain (stage 1)": cap.generate(gen, s1.P, p["prompt"], kw)}
        systems["nearest-neighbour"], nn_rows = cap.nearest_neighbour_captions(s1.P, s1.Y_fit, fit_caps,
                                                                               p["nn_caption_index"])
        systems["true image"] = cap.generate(gen, s1.Y_score, p["prompt"], kw)
        t["generate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows, per_image, summary, info, _ = cap.score_systems(systems, "brain (stage 1)", refs, p["seed"],
                                                              p["caption_metrics"], metric_device(device),
                                                              ctx.cache_dir)
        t["metrics_s"] = time.perf_counter() - t0
        per_image["caption_stim_ids"] = np.asarray(ctx.score.stim_ids)
        per_image["nearest_neighbour_train_ids"] = np.asarray(ctx.fit.stim_ids)[nn_rows]
        scores = {**summary, "stage1 query_r2": query_r2(s1.P, s1.Y_score), "n_voxels": s1.n_voxels,
                  "embedding_dim": int(s1.Y_fit.shape[1])}
        examples = [{"stim_id": int(ctx.score.stim_ids[i]), "reference": refs[i][0],
                     **{name: caps[i] for name, caps in systems.items()}}
                    for i in range(min(p["examples"], len(refs)))]
        main = self.main_score if summary.get(self.main_score) is not None else \
            next((k for k, v in summary.items() if v is not None), "stage1 query_r2")
        details = {"stage1_alpha_median": s1.alpha_median, "query_shape": list(s1.shape), "prompt": p["prompt"],
                   "caption_metric_info": info}
        return TaskOutput(main, scores, {"captioning": rows, "caption_examples": examples}, per_image,
                          {"timings": t, "details": details})
