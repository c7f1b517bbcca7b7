"""Each ranked row against the top row of its block: a paired test over test items, Holm-corrected.

The paired unit is the test image. A record that stores bootstrap draws of its main score
(``tables["bootstrap"]``: score, ``n_boot``, seed, digest of the test image ids, and the sidecar
array of per-resample values; see :mod:`brainharness.metrics.bootstrap`) drew the same resample
indices as every other record with the same test images, seed and ``n_boot``. For such a pair
the per-resample differences are the bootstrap distribution of the difference in the main score
(:func:`~brainharness.metrics.bootstrap.paired_bootstrap_p`). Within each dataset variant ×
subject block, the rank-1 row is compared with every other ranked row that can be paired with
it, and the p-values are Holm-corrected for the number of those rows; a row is **tied with
best** when its adjusted p-value is at least :data:`ALPHA`. Rows without comparable draws (no
bootstrap in the record — e.g. records whose task keeps no per-image data —, another test
set or seed) have no verdict (missing, never "tied"); reference and not-ranked rows are never
compared.

Records that keep per-test-item values instead (``tables["paired_items"]``: a task declares the
score, test-image digest, seed and draw settings, and the sidecar array — e.g. top-1 hit rates)
are compared when those settings match (the same candidate draws), on the main score, by a paired
bootstrap over test items (:func:`~brainharness.metrics.bootstrap.paired_items_p`), then
Holm-corrected like the rest.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from brainharness.errors import HarnessError
from brainharness.metrics.bootstrap import holm, paired_bootstrap_p, paired_items_p
from brainharness.results import ResultStore

ALPHA = 0.05
TIED = "tied_with_best"
P_VALUE = "p_vs_best"
VS_BEST = "vs best"
"""The display column (Markdown, LaTeX, site) of the verdict."""


# table → (fields two records must share, the field giving the sidecar vector's length)
_PAIRED = {"bootstrap": (("test_images", "seed", "n_boot"), "n_boot"),
           "paired_items": (("test_images", "seed", "n_candidates", "n_trials"), "n_test_images")}


def _draws(record: dict, score: str | None, store: ResultStore):
    """``(pairing key, values)`` of the record's main score, or None: per-resample values
    (table ``bootstrap``) or per-test-item hit rates (``paired_items``); the key starts with
    the table, so the two kinds never pair."""
    for table, (fields, length) in _PAIRED.items():
        for entry in (record.get("tables") or {}).get(table) or []:
            if not isinstance(entry, dict) or entry.get("score") != score:
                continue
            key = (table, *(entry.get(f) for f in fields))
            if None in key or not record.get("_path"):
                return None
            try:
                values = store.per_voxel(Path(record["_path"])).get(str(entry.get("sidecar_key")))
            except (HarnessError, OSError):  # a broken sidecar is reported by the store check
                return None
            if values is None or np.shape(values) != (entry.get(length),):
                return None
            return key, np.asarray(values, dtype=np.float64)
    return None


def _p(table: str, a: np.ndarray, b: np.ndarray) -> float:
    return paired_bootstrap_p(a, b) if table == "bootstrap" else paired_items_p(a, b)


def compare_to_best(df: pd.DataFrame, rows: list[dict], score: str | None, root: Path, alpha: float = ALPHA) -> None:
    """Add ``tied_with_best`` (nullable bool) and ``p_vs_best`` (Holm-adjusted) to ``df``, sorted
    and ranked, with its ``_ds``/``_sub`` block columns; ``rows[j]`` is the record of ``df`` row j."""
    df[TIED] = pd.array([pd.NA] * len(df), dtype="boolean")
    df[P_VALUE] = math.nan
    if not len(df) or score is None:
        return
    store = ResultStore(root)
    ranked = df[df["rank"].notna()]
    for _, block in ranked.groupby(["_ds", "_sub"], sort=False):
        order = block.sort_values("rank", kind="mergesort").index
        best = _draws(rows[order[0]], score, store)
        if best is None:
            continue
        pairs = []
        for i in order[1:]:
            other = _draws(rows[i], score, store)
            if other is not None and other[0] == best[0]:
                pairs.append((i, _p(best[0][0], best[1], other[1])))
        if not pairs:
            continue
        df.at[order[0], TIED] = True
        for (i, _), p in zip(pairs, holm([p for _, p in pairs])):
            df.at[i, P_VALUE] = float(p)
            df.at[i, TIED] = bool(p >= alpha)


def verdict(df: pd.DataFrame, i) -> str:
    """The display text of a row's comparison with the best row ("" for rows never compared)."""
    if TIED not in df or not bool(df.at[i, "ranked"]):
        return ""
    tied, p = df.at[i, TIED], df.at[i, P_VALUE]
    if pd.isna(tied):
        return "—"
    if pd.isna(p):
        return "best"
    return f"tied with best (p={p:.2g})" if tied else f"worse than best (p={p:.2g})"


def shown(df: pd.DataFrame) -> bool:
    """Whether any row of the table has a verdict (the column is shown only then)."""
    return TIED in df and bool(df[TIED].notna().any())
