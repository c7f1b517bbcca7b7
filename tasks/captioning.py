"""Captioning from the brain (seed 000 §3.2, §3.3): generation, baselines, ROI-synthetic inputs.

* Brain captions: predicted Q-Former query outputs → the generation model's
  ``language_projection`` → its language model's ``generate`` (greedy or beam, ``max_new_tokens``,
  an optional prompt after the queries), through ``Blip2.generate_from_query_embeds``.
* Reference rows of Table 2: ``nearest-neighbour`` — each brain prediction's nearest *training*
  image in the Q-Former space (cosine of the flattened query outputs) lends its caption;
  ``true image`` — the same model's caption of the stimulus itself (its true query outputs);
  ``shuffled brain`` — the brain captions paired with another image's references (a seeded
  derangement): what the metrics give for captions of the right kind that say nothing about
  the image, the floor every brain row must beat.
* ROI-synthetic inputs (Table 3, after Brain Diffuser): voxels of one ROI (or a group of ROIs)
  set to 1, every other voxel 0, in the standardised voxel space the brain model was fitted
  in. Following the seed's code, the linear part of the brain model's output is L2-normalised
  per query token and scaled (``scale``, 11 in the paper) before the intercept is added.
* Scores come from :func:`brainharness.metrics.captions.caption_scores` (``None`` = unavailable,
  never 0); a metric that could not run stays missing in every row.
"""
from __future__ import annotations

import re

import numpy as np

from brainharness.errors import ConfigError, DataError

# Table 3's rows: ROI groups by the names the NSD and synthetic loaders use (members absent
# from a subject are skipped; a group with no member is reported as skipped).
ROI_GROUPS = {
    "V1": ["V1"], "V2": ["V2"], "V3": ["V3"], "V4": ["hV4"],
    "floc-words": ["OWFA", "VWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"],
    "floc-bodies": ["EBA", "FBA", "FBA-1", "FBA-2", "mTL-bodies"],
    "floc-faces": ["OFA", "FFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"],
    "floc-places": ["OPA", "PPA", "RSC"],
}
SYSTEMS = ("brain (stage 2)", "brain (stage 1)", "nearest-neighbour", "true image", "shuffled brain")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def nearest_training(pred: np.ndarray, train_feats: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Row of the most cosine-similar training embedding for each prediction (flattened)."""
    t = _unit(train_feats)
    p = _unit(pred)
    return np.concatenate([(p[s:s + chunk] @ t.T).argmax(1) for s in range(0, len(p), chunk)]) if len(p) else \
        np.zeros(0, dtype=np.int64)


def nearest_neighbour_captions(pred: np.ndarray, train_feats: np.ndarray, train_captions: list[list[str]],
                               index: int = 0) -> tuple[list[str], np.ndarray]:
    """The caption (``index``-th, or the last one if fewer) of each prediction's nearest training image."""
    if len(train_feats) != len(train_captions):
        raise DataError(f"{len(train_feats)} training embeddings but {len(train_captions)} caption lists")
    rows = nearest_training(pred, train_feats)
    caps = []
    for r in rows:
        c = train_captions[r]
        if not c:
            raise DataError(f"training image at row {r} has no caption for the nearest-neighbour baseline")
        caps.append(c[min(index, len(c) - 1)])
    return caps, rows


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (n ≥ 2): row i gets row perm[i] ≠ i."""
    if n < 2:
        raise DataError("the shuffled-brain baseline needs at least two images")
    rng = np.random.default_rng([seed, 7919])
    perm = rng.permutation(n)
    fixed = np.flatnonzero(perm == np.arange(n))
    for i in fixed:  # swap each fixed point with its neighbour: stays a permutation, loses the fixed point
        j = (i + 1) % n
        perm[i], perm[j] = perm[j], perm[i]
    if np.any(perm == np.arange(n)):  # n == 2 corner after swaps
        perm = np.roll(np.arange(n), 1)
    return perm


def roi_groups(rois: dict[str, np.ndarray], spec) -> tuple[dict[str, np.ndarray], list[str]]:
    """Masks of the ROI-caption rows → ``({row name: bool mask}, [skipped groups])``.

    ``spec``: ``True``/``None`` — :data:`ROI_GROUPS`; a list of ROI names — one row each; a
    mapping row name → list of ROI names (their union).
    """
    if spec is True or spec is None:
        groups = ROI_GROUPS
    elif isinstance(spec, dict):
        groups = {str(k): ([v] if isinstance(v, str) else list(v)) for k, v in spec.items()}
    elif isinstance(spec, (list, tuple)):
        groups = {str(r): [str(r)] for r in spec}
    else:
        raise ConfigError(f"roi_captions must be true, a list of ROI names or a mapping name → ROI names, got {spec!r}")
    out, skipped = {}, []
    for name, members in groups.items():
        present = [m for m in members if m in rois]
        if not present:
            skipped.append(name)
            continue
        out[name] = np.logical_or.reduce([np.asarray(rois[m], dtype=bool) for m in present])
    if not out and spec not in (True, None):
        raise DataError(f"roi_captions: none of {', '.join(groups)} is an ROI of this subject "
                        f"(has: {', '.join(rois)})")
    return out, skipped


def roi_input(mask: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """The synthetic brain pattern: 1 on the ROI's voxels, 0 elsewhere, over the decoded voxels."""
    x = np.asarray(mask, dtype=bool)[voxels].astype(np.float32)
    if not x.any():
        raise DataError("an ROI-synthetic input has no voxel inside the decoded voxel set")
    return x


def roi_queries(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, shape: tuple[int, int],
                scale: float) -> np.ndarray:
    """Brain model on an ROI pattern, the seed's way: per query token, normalise the linear part
    to unit L2 norm, multiply by ``scale``, add the intercept → (Q, H)."""
    q, h = shape
    lin = (np.asarray(x, dtype=np.float32) @ np.asarray(coef, dtype=np.float32)).astype(np.float64).reshape(q, h)
    norm = np.linalg.norm(lin, axis=1, keepdims=True)
    lin = lin / (norm + 1e-8) * float(scale)
    return (lin + np.asarray(intercept, dtype=np.float64).reshape(q, h)).astype(np.float32)


def generate(backbone, queries: np.ndarray, prompt: str | None, gen_kwargs: dict) -> list[str]:
    if len(queries) == 0:
        return []
    return backbone.generate_from_query_embeds(queries, prompt=prompt, **gen_kwargs)


def score_captions(predictions: list[str], references: list[list[str]], metrics, device: str | None,
                   cache_dir=None):
    """``caption_scores`` with the task's metric list (``None`` = all) → (per_image, summary, info);
    ``cache_dir``: the run's cache root (``TaskContext.cache_dir``) for the metrics' data."""
    from brainharness.metrics.captions import METRICS, caption_scores

    return caption_scores(predictions, references, metrics=tuple(metrics or METRICS), device=device,
                          cache_dir=cache_dir)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def score_systems(systems: dict[str, list[str]], main_system: str, refs: list[list[str]], seed: int, metrics,
                  device: str | None, cache_dir=None, stage1_prefix: bool = False):
    """Table 2 from the captions of each system (``{name: captions}``, one per scored image) plus
    the ``shuffled brain`` floor (``main_system``'s captions against a seeded derangement of the
    references) → ``(rows, per_image, scores, info, perm)``: one row per system (the reference
    systems carry ``brain_model``), the per-image scores and captions for the sidecar, the main
    system's summary as ``scores`` (with ``stage1_<metric>`` when ``stage1_prefix`` and a
    ``brain (stage 1)`` system is not the main one)."""
    perm = derangement(len(refs), seed)
    shuffled_refs = [refs[j] for j in perm]  # the brain captions scored against another image's references
    rows, per_image, scores, info = [], {}, {}, None
    for name in [*systems, "shuffled brain"]:
        preds = systems[main_system] if name == "shuffled brain" else systems[name]
        pi, summary, info = score_captions(preds, shuffled_refs if name == "shuffled brain" else refs, metrics,
                                           device, cache_dir)
        row = {"system": name, **summary, "n_images": len(preds)}
        if name in ("nearest-neighbour", "shuffled brain"):
            row["brain_model"] = main_system
        rows.append(row)
        slug_ = slug(name)
        for metric, values in pi.items():
            per_image[f"caption_{slug_}_{metric}"] = np.asarray(values, dtype=np.float64)
        if name != "shuffled brain":
            per_image[f"captions_{slug_}"] = np.asarray(preds, dtype=str)
        if name == main_system:
            scores.update(summary)
        if stage1_prefix and name == "brain (stage 1)" and name != main_system:
            scores.update({f"stage1_{k}": v for k, v in summary.items()})
    per_image["shuffled_brain_permutation"] = perm
    return rows, per_image, scores, {k: v for k, v in (info or {}).items() if k != "inputs"}, perm


def select_prompt(candidates: list, backbone, queries: np.ndarray, references: list[list[str]],
                  gen_kwargs: dict, metric: str, device: str | None, cache_dir=None) -> tuple[str | None, list[dict]]:
    """The candidate prompt whose captions of ``queries`` (validation rows of the *training*
    split) score best on ``metric`` → (prompt, one row per candidate)."""
    rows = []
    for prompt in candidates:
        caps = generate(backbone, queries, prompt, gen_kwargs)
        _, summary, _ = score_captions(caps, references, [metric], device, cache_dir)
        value = summary.get(metric)
        if value is None:
            raise DataError(f"prompt selection needs the caption metric {metric!r}, which is unavailable here; "
                            "set select_metric to one that runs (e.g. rougeL) or give a single prompt")
        rows.append({"prompt": prompt, metric: value, "n_validation_images": len(caps)})
    best = max(range(len(rows)), key=lambda i: rows[i][metric])  # first of equals
    return candidates[best], rows
