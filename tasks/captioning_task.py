"""``captioning``: brain → the captioner's query space → captions → every caption metric.

The brain model (``brain_model``) maps the standardised voxels of ``roi`` (z-scored with the
training split's statistics) to the flattened query outputs of the unit backbone's ``layer``
(default ``qformer``):

* ``stage1`` (default) — seed 000's stage 1: a ridge, one α per target by GCV on the training
  split (:func:`brainharness.readout.fit_ridge`);
* ``stage2`` — seed 000's stage 2 on top of it (:mod:`brainharness.tasks.contrastive`, eq. 1, with
  the ``retrieval_backbone``'s image-text space), its epoch selected on a validation part of the
  training split (``validation_fraction``) and refitted as ``decoding`` does (:func:`fit_stage2`);
* a supplied model: the path of a ``.npz`` (``coef``: voxels × Q·H, ``intercept``: Q·H) or a
  torch-saved mapping (``coef``/``intercept``, or a linear layer's ``weight`` (Q·H × voxels) and
  ``bias``, bare or as ``brain.``), applied as ``x @ coef + intercept``. It is read when the
  task is built (a missing or malformed file is one line, exit 2), its voxels and query dims
  are checked against the subject and the captioner before any unit runs (:meth:`check_data`),
  and the sha256 of its bytes is set as ``brain_model_sha256``: part of the result identity,
  so two different files never share a record (a relative path is read from the working folder).

Its predictions for the test images go through the backbone's ``language_projection`` and language
model (``generate_from_query_embeds``: ``prompt``, ``max_new_tokens``, ``num_beams``), and the
captions are scored against all captions of each image with
:func:`brainharness.metrics.captions.caption_scores` (``caption_metrics``: names, ``null`` = all).
Beside the brain row (``brain (stage 1)``, ``brain (stage 2)`` or ``brain (supplied)``), the table
holds the rows of :mod:`brainharness.tasks.captioning`: ``nearest-neighbour`` (the caption of the
nearest training image in the query space), ``true image`` (the ceiling: the same model's caption
of the true query outputs; a reference row) and ``shuffled brain`` (the floor: the brain captions
against another image's references; a reference row).

Record: ``scores`` — the brain row's caption metrics under their own names, ``query_r2`` (of the
brain model's predicted query outputs), ``n_voxels``, ``embedding_dim``; ``tables`` —
``captioning`` (one row per ``system``), ``caption_examples`` (and ``stage2_history``); the
sidecar holds every caption and the per-image scores. :func:`stage1_queries` and
:func:`stage2_queries` are the brain models other tasks reuse (``neurons``, ``decoding``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from brainharness import registry
from brainharness.capabilities import (CAPTIONS, IMAGE_FEATURES, IMAGE_TEXT_RETRIEVAL, QUERY_CAPTIONER, QUERY_TOKENS,
                                       Need)
from brainharness.errors import ConfigError, DataError
from brainharness.features import flatten_rows
from brainharness.layout import Layout
from brainharness.params import Param
from brainharness.readout import fit_ridge, voxel_source
from brainharness.registry import register_task
from brainharness.task import TaskContext, TaskOutput, selection_split, standardise, validation_fraction
from brainharness.tasks import captioning as cap
from brainharness.tasks.contrastive import STAGE2_PARAMS, Paired, brain_outputs, check_stage2, train_stage2
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
TINY_RETRIEVAL = {"name": "blip2-synthetic", "variant": "retrieval", **TINY_CAPTIONER}
"""The retrieval model of stage 2 in the conformance examples and tests."""

CAPTION_PARAMS = {
    "prompt": Param(None, str, doc="text after the query outputs (null: BOS only)"),
    "max_new_tokens": Param(30, ge=1, doc="caption length limit (tokens)"),
    "num_beams": Param(1, ge=1, doc="beam search width (1: greedy)"),
    "num_threads": Param(None, int, ge=1, doc="torch CPU threads (null: as is)"),
}
"""Generation parameters shared by the tasks that caption from query outputs."""

RETRIEVAL_SPEC = {"name": "blip2", "model": "Salesforce/blip2-itm-vit-g", "weights": "pretrained"}
STAGE2_TASK_PARAMS = {
    "retrieval_backbone": Param(RETRIEVAL_SPEC, dict, nullable=True, check=lambda v: isinstance(v.get("name"), str),
                                expect="null or a backbone spec {name: ..., ...}",
                                doc="image-text model of stage 2 and T↔B retrieval"),
    "validation_fraction": validation_fraction(0.2),
    "refit": Param(True, doc="retrain stage 2 on every fit row for the selected number of epochs"),
    **STAGE2_PARAMS,
}
"""Seed 000's stage 2 as task parameters (``decoding``, ``captioning``, ``neurons``)."""

STAGE_MODELS = ("stage1", "stage2")
MODEL_SUFFIXES = (".npz", ".pt", ".pth")
SYSTEM = {"stage1": "brain (stage 1)", "stage2": "brain (stage 2)"}
SUPPLIED = "brain (supplied)"


@dataclass
class Stage1:
    """The brain model's inputs and query outputs: standardised voxels (``B_fit``, ``B_score``),
    true query outputs (``Y_fit``, ``Y_score``), the ridge's predictions (``P``) and its weights."""

    Y_fit: np.ndarray
    Y_score: np.ndarray
    P: np.ndarray | None
    shape: tuple[int, int]
    n_voxels: int
    alpha_median: float | None
    B_fit: np.ndarray
    B_score: np.ndarray
    coef: np.ndarray | None = None  # (voxels, Q·H)
    intercept: np.ndarray | None = None
    alphas: np.ndarray | None = None
    ridge_p: dict | None = None


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


def brain_inputs(task: RetrievalTask, ctx: TaskContext) -> Stage1:
    """The standardised voxels of ``roi`` and the true query outputs, no model yet."""
    p = task.p
    Y_fit = flatten_rows(ctx.features(ctx.fit.stim_ids, p["layer"]))
    Y_score = flatten_rows(ctx.features(ctx.score.stim_ids, p["layer"]))
    shape = query_shape(ctx.backbone, Y_fit.shape[1], task.owner())
    mask = task.voxels(ctx)
    B_fit, B_score = standardise(ctx.fit.averaged[:, mask], ctx.score.averaged[:, mask])
    return Stage1(Y_fit, Y_score, None, shape, int(mask.sum()), None, B_fit, B_score)


def stage1_queries(task: RetrievalTask, ctx: TaskContext) -> Stage1:
    """Seed 000's stage 1 for ``task`` (a task with the retrieval task's ridge, ``layer`` and
    ``roi`` parameters): ridge voxels → query outputs on the fit rows, predictions for the score rows."""
    s = brain_inputs(task, ctx)
    ridge_p = dict(task.p, standardize=False, pca=None)
    ridge, P = fit_ridge(ridge_p, ctx, s.B_fit, s.Y_fit, s.B_score, voxel_source(ctx, task.p["roi"]),
                         ctx.fit.stim_ids)
    return replace(s, P=np.asarray(P, dtype=np.float32), alpha_median=float(ridge.best_alphas_.median()),
                   coef=ridge.coef_.cpu().numpy(), intercept=ridge.intercept_.cpu().numpy(),
                   alphas=ridge.best_alphas_.cpu().numpy(), ridge_p=ridge_p)


# -- stage 2 (seed 000's contrastive fine-tuning), shared with decoding and neurons ------------
def check_stage2_task(owner: str, p: dict) -> None:
    check_stage2(owner, p)
    rb = p["retrieval_backbone"]
    if rb is not None and rb["name"] not in registry.backbones:
        registry.backbones.get(rb["name"])  # raises with "did you mean"


def retrieval_model(spec: dict | None, ctx: TaskContext):
    """The ``retrieval_backbone`` (null: the unit's backbone), one instance per run (and sweep)."""
    if spec is None:
        return ctx.backbone
    key = ("decoding-retrieval-backbone", json.dumps(spec, sort_keys=True, default=str), str(ctx.device))
    if key not in ctx.memo:
        params = {k: v for k, v in spec.items() if k not in ("name", "label")}
        params.setdefault("device", ctx.device)
        params.setdefault("cache_dir", ctx.cache_dir)
        ctx.memo[key] = registry.backbones.get(spec["name"])(**params)
    return ctx.memo[key]


def fit_stage2(p: dict, ctx: TaskContext, retr, B_fit, Y_fit, fit_caps, ridge_p, init, shape, device):
    """Stage 2 with selection on the training split only: a validation part of the fit rows
    (``validation_fraction``), a ridge on the rest starts stage 2, whose best epoch there is kept;
    with ``refit`` it is retrained from ``init`` (the all-fit-rows ridge: coef, intercept, α) for
    exactly that many epochs → ``(final, (validation rows, selected, train-part ridge), history)``."""
    tr, va = selection_split(ctx.fit, float(p["validation_fraction"]), ctx.seed)
    rows_tr = np.flatnonzero(np.isin(ctx.fit.stim_ids, tr.stim_ids))
    rows_va = np.flatnonzero(np.isin(ctx.fit.stim_ids, va.stim_ids))
    ridge_tr, _ = fit_ridge(ridge_p, ctx, B_fit[rows_tr], Y_fit[rows_tr], B_fit[rows_va],
                            voxel_source(ctx, p["roi"]), ctx.fit.stim_ids[rows_tr])
    part = lambda rows: Paired(B_fit[rows], Y_fit[rows], [fit_caps[r] for r in rows])
    selected = train_stage2(ridge_tr.coef_.cpu().numpy(), ridge_tr.intercept_.cpu().numpy(), shape, retr,
                            retr.tokenizer, part(rows_tr), p, val=part(rows_va), seed=ctx.seed, device=device,
                            progress=ctx.progress, alphas=ridge_tr.best_alphas_.cpu().numpy())
    history = [{"run": "selection", **h} for h in selected.history]
    final = selected
    if p["refit"]:
        coef, icpt, alphas = init
        final = train_stage2(coef, icpt, shape, retr, retr.tokenizer, part(np.arange(len(B_fit))), p,
                             epochs=selected.best_epoch, seed=ctx.seed, device=device, progress=ctx.progress,
                             alphas=alphas)
        final.best_epoch = selected.best_epoch
        history += [{"run": "refit", **h} for h in final.history]
    return final, (rows_va, selected, ridge_tr), history


def stage2_queries(p: dict, ctx: TaskContext, s1: Stage1) -> tuple[np.ndarray, int, list[dict]]:
    """Stage 2 from stage 1 (``p``: the stage-2 parameters) → (predicted query outputs of the
    score rows, selected epoch, training history)."""
    from brainharness.ridge import resolve_device

    device = str(resolve_device(ctx.device))
    fit_caps = [list(ctx.stimuli.captions.get(int(i), [])) for i in ctx.fit.stim_ids]
    final, _, history = fit_stage2(p, ctx, retrieval_model(p["retrieval_backbone"], ctx), s1.B_fit, s1.Y_fit,
                                   fit_caps, s1.ridge_p, (s1.coef, s1.intercept, s1.alphas), s1.shape, device)
    return brain_outputs(final.model, s1.B_score, device)[0], final.best_epoch, history


# -- a supplied brain model --------------------------------------------------------------------
_DIGESTS: dict = {}  # (path, size, mtime) → (sha256, (voxels, query dims)): a task is built many times a run


def is_model_file(value: str) -> bool:
    return value not in STAGE_MODELS


def load_brain_model(path: str, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """``(coef (voxels, Q·H), intercept (Q·H,))`` of a supplied model file, or one ConfigError line."""
    where = f"{owner}: brain_model {path}"
    if not Path(path).is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: np.asarray(v.detach().float().numpy() if isinstance(v, torch.Tensor) else v)
                     for k, v in (state.items() if isinstance(state, dict) else ())}
    except Exception as e:  # noqa: BLE001 — a corrupt or foreign file: the user's to fix
        raise ConfigError(f"{where}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    for w, b, transpose in (("coef", "intercept", False), ("weight", "bias", True),
                            ("brain.weight", "brain.bias", True)):
        if w in state and b in state:
            coef, icpt = np.asarray(state[w], dtype=np.float32), np.asarray(state[b], dtype=np.float32)
            coef = coef.T if transpose and coef.ndim == 2 else coef
            break
    else:
        raise ConfigError(f"{where}: needs arrays coef and intercept (or weight and bias), has: "
                          f"{', '.join(map(str, state)) or 'none'}")
    if coef.ndim != 2 or icpt.shape != (coef.shape[1],):
        raise ConfigError(f"{where}: coef must be voxels × query dims and intercept one value per query dim, got "
                          f"{coef.shape} and {icpt.shape}")
    if not (np.isfinite(coef).all() and np.isfinite(icpt).all()):
        raise ConfigError(f"{where}: holds non-finite values")
    return coef, icpt


def brain_model_digest(path: str, owner: str) -> tuple[str, tuple[int, int]]:
    """(sha256 of the file's bytes, its coef shape), validated once per file version."""
    st = os.stat(path) if Path(path).is_file() else None
    key = (os.path.abspath(path), st and st.st_size, st and st.st_mtime_ns)
    if key not in _DIGESTS:
        coef, _ = load_brain_model(path, owner)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        _DIGESTS[key] = (h.hexdigest(), coef.shape)
    return _DIGESTS[key]


def check_model_shape(owner: str, path: str, shape: tuple[int, int], n_voxels: int, n_queries: int | None) -> None:
    """A supplied model's (voxels, query dims) against the unit's (``n_queries`` None: voxels only)."""
    if shape[0] != n_voxels or n_queries not in (None, shape[1]):
        takes = "" if n_queries is None else f" and the captioner takes {n_queries} query dims"
        raise ConfigError(f"{owner}: brain_model {path} maps {shape[0]} voxels to {shape[1]} query dims; this unit "
                          f"has {n_voxels} voxels in its ROI{takes}")


def gen_kwargs(p: dict) -> dict:
    return {"max_new_tokens": p["max_new_tokens"], "num_beams": p["num_beams"], "do_sample": False}


def metric_device(device: str) -> str | None:
    return device if device.startswith("cuda") else "cpu"


def caption_score_names() -> tuple[str, ...]:
    from brainharness.metrics.captions import METRICS, OUTPUTS

    return tuple(o for m in METRICS for o in OUTPUTS[m])


CAPTIONING_LAYOUT = Layout(replace(DECODING_LAYOUT.tables[1], suffix=None))
"""Seed 000 Table 2's table (decoding's captioning table), named after the task."""


@register_task("captioning")
class CaptioningTask(RetrievalTask):
    direction = "brain→text"
    needs = (IMAGE_FEATURES, QUERY_TOKENS, QUERY_CAPTIONER, CAPTIONS,
             Need(IMAGE_TEXT_RETRIEVAL, role="retrieval_backbone", when=lambda p: p["brain_model"] == "stage2",
                  condition="with brain_model: stage2"))
    main_score = "meteor"
    scores = (*caption_score_names(), "query_r2", "n_voxels", "embedding_dim")  # caption metrics: those that ran
    layout = CAPTIONING_LAYOUT
    example = {"backbone": {"name": "blip2-synthetic", **TINY_CAPTIONER},
               "caption_metrics": ["rouge1"], "max_new_tokens": 6, "num_threads": 1, "examples": 1}
    params: ClassVar[dict] = {
        **{k: v for k, v in RetrievalTask.params.items() if k not in ("n_candidates", "n_trials", "seed")},
        "seed": Param(0, int, doc="seed of the shuffled-brain pairing"),
        "brain_model": Param("stage1", str, nonempty=True,
                             check=lambda v: v in STAGE_MODELS or v.lower().endswith(MODEL_SUFFIXES),
                             expect="'stage1', 'stage2' or the path of a .npz, .pt or .pth file",
                             doc="brain → query outputs: stage-1 ridge, stage 2 (contrastive), or a supplied "
                                 "model file (coef: voxels × query dims, intercept)"),
        "brain_model_sha256": Param(None, str, doc="set when the task is built: sha256 of a brain_model file (in "
                                                   "the result identity); given, the file must match it"),
        **CAPTION_PARAMS,
        "caption_metrics": Param(None, list, items=Param(type=str), doc="caption metrics scored (null: all)"),
        "nn_caption_index": Param(0, ge=0, doc="caption of the nearest training image in the reference row"),
        "examples": Param(8, ge=0, doc="example captions kept in the record"),
        **STAGE2_TASK_PARAMS,
    }

    def check(self, p):
        super().check(p)
        if p["brain_model"] == "stage2":
            check_stage2_task(self.owner(), p)
        if not is_model_file(p["brain_model"]):
            if p["brain_model_sha256"] is not None:
                raise ConfigError(f"{self.owner()}: brain_model_sha256 is for a brain_model file, not "
                                  f"{p['brain_model']}")
            return
        digest, _ = brain_model_digest(p["brain_model"], self.owner())
        if p["brain_model_sha256"] not in (None, digest):
            raise ConfigError(f"{self.owner()}: brain_model {p['brain_model']} has sha256 {digest[:16]}…, not the "
                              f"given brain_model_sha256 {p['brain_model_sha256'][:16]}…")
        p["brain_model_sha256"] = digest

    @property
    def runtime_params(self) -> tuple[str, ...]:
        """A supplied model file is identified by its content (``brain_model_sha256``), not by where it
        lies: the same file on a laptop and on a cluster gives the same result id."""
        return ("brain_model",) if is_model_file(self.p["brain_model"]) else ()

    def check_data(self, subject, backbone) -> None:
        """A supplied model's voxels and query dims against the unit's ROI and captioner."""
        path = self.p.get("brain_model")
        if path is None or not is_model_file(path):
            return
        _, shape = brain_model_digest(path, self.owner())
        n_voxels = int(self.voxels(SimpleNamespace(fit=subject.train, score=subject.test, rois=subject.rois)).sum())
        check_model_shape(self.owner(), path, shape, n_voxels, None)  # before the captioner is loaded
        width = backbone.language_projection.in_features  # the query outputs' width the captioner takes
        check_model_shape(self.owner(), path, shape, n_voxels, backbone.num_query_tokens * width)

    def brain_queries(self, ctx: TaskContext) -> tuple[str, np.ndarray, Stage1, dict, dict]:
        """The chosen brain model → (its system name, predicted query outputs, inputs, details, tables)."""
        p, model = self.p, self.p["brain_model"]
        if is_model_file(model):
            s = brain_inputs(self, ctx)
            coef, icpt = load_brain_model(model, self.owner())
            check_model_shape(self.owner(), model, coef.shape, s.n_voxels, s.Y_fit.shape[1])
            return SUPPLIED, (s.B_score @ coef + icpt).astype(np.float32), s, \
                {"brain_model_sha256": p["brain_model_sha256"]}, {}
        s = stage1_queries(self, ctx)
        details = {"stage1_alpha_median": s.alpha_median}
        if model == "stage1":
            return SYSTEM[model], s.P, s, details, {}
        P2, epoch, history = stage2_queries(p, ctx, s)
        return SYSTEM[model], P2, s, {**details, "best_epoch": epoch}, {"stage2_history": history}

    def run(self, ctx: TaskContext) -> TaskOutput:
        from brainharness.ridge import resolve_device

        p, t = self.p, {}
        device = str(resolve_device(ctx.device))
        refs = [list(ctx.stimuli.captions.get(int(i), [])) for i in ctx.score.stim_ids]
        fit_caps = [list(ctx.stimuli.captions.get(int(i), [])) for i in ctx.fit.stim_ids]
        if any(not r for r in refs):
            raise DataError("captioning: every scored image needs reference captions")
        t0 = time.perf_counter()
        name, P, s1, details, tables = self.brain_queries(ctx)
        t["brain_model_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen, kw = ctx.backbone, gen_kwargs(p)
        systems = {name: cap.generate(gen, P, p["prompt"], kw)}
        systems["nearest-neighbour"], nn_rows = cap.nearest_neighbour_captions(P, s1.Y_fit, fit_caps,
                                                                               p["nn_caption_index"])
        systems["true image"] = cap.generate(gen, s1.Y_score, p["prompt"], kw)
        t["generate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows, per_image, summary, info, _ = cap.score_systems(systems, name, refs, p["seed"], p["caption_metrics"],
                                                              metric_device(device), ctx.cache_dir)
        t["metrics_s"] = time.perf_counter() - t0
        per_image["caption_stim_ids"] = np.asarray(ctx.score.stim_ids)
        per_image["nearest_neighbour_train_ids"] = np.asarray(ctx.fit.stim_ids)[nn_rows]
        scores = {**summary, "query_r2": query_r2(P, s1.Y_score), "n_voxels": s1.n_voxels,
                  "embedding_dim": int(s1.Y_fit.shape[1])}
        examples = [{"stim_id": int(ctx.score.stim_ids[i]), "reference": refs[i][0],
                     **{sys_: caps[i] for sys_, caps in systems.items()}}
                    for i in range(min(p["examples"], len(refs)))]
        main = self.main_score if summary.get(self.main_score) is not None else \
            next((k for k, v in summary.items() if v is not None), "query_r2")
        details.update({"brain_model": p["brain_model"], "query_shape": list(s1.shape), "prompt": p["prompt"],
                        "caption_metric_info": info})
        return TaskOutput(main, scores, {"captioning": rows, "caption_examples": examples, **tables}, per_image,
                          {"timings": t, "details": details})
