"""Captions of the NSD-derived layouts, read on first use.

:class:`LazyCaptions` is the loaders' ``Stimuli.captions``: a mapping that runs its reader the
first time it is used and keeps the result, so a run whose tasks need no captions never opens
the caption files (a broken stimulus table cannot fail an encoding run). With
``captions: required`` the loaders read them at load time instead, so a broken file stops the
run before any compute. The readers:

* :class:`CocoCaptions` — NSD's stimulus table ``nsd_stim_info_merged.csv`` (pandas CSV with its
  index column; ``nsdId`` = 0-based 73k id, ``cocoId``, ``cocoSplit`` ∈ train2017/val2017,
  ``subjectN_repK`` = 1-based trial number of the K-th showing, 0 if never shown) and COCO's
  ``captions_<split>.json`` (``annotations``: ``image_id``, ``caption``). The table is checked
  (columns, unique ids in range, known splits, trial numbers agreeing with the design) and the
  captions are cached as JSON under ``<cache_dir>/datasets/``.
* :class:`NpyCaptions` — brain-diffuser's ``nsd_{train,test}_cap_subN.npy``: its prepare script
  copies rows of ``COCO_73k_annots_curated.npy``, a fixed-width unicode array (images × 5, ''
  where an image has fewer captions) that it and its feature scripts load without pickles, so
  these files are read with ``allow_pickle=False`` and an object array is refused by name.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from brainharness.cache import cache_path
from brainharness.errors import DataError
from .nsd_common import load_npy, short_hash
from .nsd_design import N_IMAGES, N_SUBJECTS, REPEATS, read_design
from .subject_cache import file_signature

SPLITS = ("train2017", "val2017")
TABLE_COLUMNS = ("nsdId", "cocoId", "cocoSplit")


class LazyCaptions(Mapping):
    """Stimulus id → captions, read by ``reader()`` on first use; ``info`` says what happened."""

    def __init__(self, reader):
        self.reader, self._data = reader, None
        self.info = reader.info  # the same dict: Dataset.info shows the status once read

    def read(self) -> dict[int, list[str]]:
        if self._data is None:
            self._data = self.reader()
        return self._data

    def __getitem__(self, key):
        return self.read()[key]

    def __iter__(self):
        return iter(self.read())

    def __len__(self) -> int:
        return len(self.read())

    def __repr__(self) -> str:
        return f"LazyCaptions({self.info.get('status')})"


def _unavailable(info: dict, reason: str, mode: str) -> dict:
    if mode == "required":
        raise DataError(f"{reason} (captions='required')")
    info.update(status=f"unavailable: {reason}")
    return {}


class CocoCaptions:
    """Captions of 0-based 73k ``ids`` through NSD's stimulus table and COCO's caption files."""

    def __init__(self, ids, stim_info: Path, annotations: Path, mode: str, cache_dir: Path | None = None,
                 design: Path | None = None):
        self.ids = np.unique(np.asarray(ids, dtype=np.int64))
        self.stim_info, self.annotations, self.mode = Path(stim_info), Path(annotations), mode
        self.cache_dir, self.design = cache_dir, design
        self.info = {"status": "not loaded (captions='none')"} if mode == "none" else \
            {"status": "read on first use", "source": str(self.annotations)}

    def sources(self) -> list[Path]:
        return [p for p in (self.stim_info, *(self.annotations / f"captions_{s}.json" for s in SPLITS)) if p.exists()]

    def signature(self) -> str:
        """Identifies what the captions are read from (mode and source files), without reading them."""
        return short_hash([self.mode, file_signature(self.sources()) if self.mode != "none" else []])

    def __call__(self) -> dict[int, list[str]]:
        if self.mode == "none":
            return {}
        missing = [p for p in (self.stim_info, self.annotations) if not p.exists()]
        if missing:
            return _unavailable(self.info, f"{missing[0]}: not found", self.mode)
        cached = self._cache_file()
        if cached is not None and cached.exists():
            try:
                stored = json.loads(cached.read_text())
                self.info.update(stored["info"])
                return {int(k): v for k, v in stored["captions"].items()}
            except (OSError, ValueError, KeyError):
                pass  # unreadable: read the sources again and rewrite it
        captions = self._read()
        if cached is not None and self.info["status"] == "loaded":
            _write_atomic(cached, json.dumps({"info": self.info, "captions": captions}))
        return captions

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        key = short_hash([self.signature(), self.ids.tolist(), str(self.design), "v1"])
        return cache_path("datasets", self.cache_dir) / f"captions-{key}.json"

    def _read(self) -> dict[int, list[str]]:
        rows = self._table()
        wanted = {}
        for split in sorted(set(rows["cocoSplit"])):
            path = self.annotations / f"captions_{split}.json"
            if not path.exists():
                return _unavailable(self.info, f"{path}: not found", self.mode)
            wanted[path] = set(rows.loc[rows["cocoSplit"] == split, "cocoId"].astype(int))
        by_coco: dict[int, list[str]] = {}
        for path, coco_ids in wanted.items():
            try:
                anns = json.loads(path.read_text())["annotations"]
                pairs = [(a["image_id"], a["caption"]) for a in anns]
            except (ValueError, KeyError, TypeError, OSError) as e:
                raise DataError(f"{path}: unreadable COCO captions ({type(e).__name__}: {e})") from None
            for image_id, caption in pairs:
                if image_id in coco_ids:
                    text = str(caption).strip()
                    if text and text not in by_coco.setdefault(image_id, []):
                        by_coco[image_id].append(text)
        captions = {int(i): by_coco[c] for i, c in zip(self.ids, rows["cocoId"].astype(int)) if c in by_coco}
        lacking = [int(i) for i in self.ids if int(i) not in captions]
        if lacking and self.mode == "required":
            coco = int(rows.loc[lacking[0], "cocoId"])
            raise DataError(f"{self.annotations}: no caption for cocoId {coco} (nsd id {lacking[0]}; "
                            f"{len(lacking)} images without captions)")
        self.info.update(status="loaded", n_images=len(captions), n_without_captions=len(lacking))
        return captions

    def _table(self):
        """The stimulus table's rows of ``ids`` (index nsdId; cocoId, cocoSplit), checked."""
        import pandas as pd

        path = self.stim_info
        try:
            columns = list(pd.read_csv(path, nrows=0).columns)
            missing = [c for c in TABLE_COLUMNS if c not in columns]
            if missing:
                raise DataError(f"{path}: no column {missing[0]!r} (needed for captions; has: "
                                f"{', '.join(map(str, columns[:12]))}{' …' if len(columns) > 12 else ''})")
            reps = [c for c in columns if c in REP_COLUMNS]
            table = pd.read_csv(path, usecols=[*TABLE_COLUMNS, *reps])
        except (ValueError, OSError, pd.errors.ParserError) as e:
            raise DataError(f"{path}: unreadable stimulus table ({type(e).__name__}: {e})") from None
        ids = table["nsdId"].to_numpy()
        if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= N_IMAGES:
            raise DataError(f"{path}: nsdId must be 0-based 73k ids (0..{N_IMAGES - 1})")
        if len(np.unique(ids)) != len(ids):
            raise DataError(f"{path}: nsdId values repeat")
        splits = set(table["cocoSplit"].astype(str)) - set(SPLITS)
        if splits:
            raise DataError(f"{path}: cocoSplit {sorted(splits)[0]!r} is not one of {', '.join(SPLITS)}")
        if reps and self.design is not None and self.design.exists():
            _check_trial_numbers(path, table, reps, self.design)
        table = table.set_index("nsdId")
        unknown = np.setdiff1d(self.ids, table.index.to_numpy())
        if unknown.size:
            raise DataError(f"{path}: no row for nsdId {int(unknown[0])} ({unknown.size} ids missing)")
        return table.loc[self.ids]


REP_COLUMNS = {f"subject{s}_rep{k}": (s, k) for s in range(1, N_SUBJECTS + 1) for k in range(REPEATS)}


def _check_trial_numbers(path: Path, table, reps: list[str], design_path: Path) -> None:
    """Each ``subjectN_repK`` (1-based trial, 0 = not shown) must be a trial that showed that row's image."""
    design = read_design(design_path)
    n_trials = len(design.masterordering)
    for col in reps:
        s, _ = REP_COLUMNS[col]
        trial = table[col].to_numpy()
        shown = trial > 0
        if trial.max(initial=0) > n_trials:
            raise DataError(f"{path}: {col} holds trial {int(trial.max())}, {design_path.name} has {n_trials}")
        expected = design.subjectim[s - 1, design.masterordering[trial[shown] - 1] - 1] - 1
        wrong = np.flatnonzero(expected != table["nsdId"].to_numpy()[shown])
        if wrong.size:
            i = wrong[0]
            raise DataError(f"{path}: {col} says trial {int(trial[shown][i])} showed nsdId "
                            f"{int(table['nsdId'].to_numpy()[shown][i])}, {design_path.name} says {int(expected[i])}")


class NpyCaptions:
    """brain-diffuser's caption arrays: ``files`` = ``[(path, ids of its rows)]``."""

    def __init__(self, files: list[tuple[Path, np.ndarray]], mode: str):
        self.files, self.mode = [(Path(p), np.asarray(i)) for p, i in files], mode
        self.info = {"status": "not loaded (captions='none')"} if mode == "none" else \
            {"status": "read on first use", "files": [p.name for p, _ in self.files]}

    def signature(self) -> str:
        return short_hash([self.mode, file_signature([p for p, _ in self.files if p.exists()])])

    def __call__(self) -> dict[int, list[str]]:
        if self.mode == "none":
            return {}
        out, missing = {}, []
        for path, ids in self.files:
            if not path.exists():
                if self.mode == "required":
                    raise DataError(f"{path}: not found (captions='required')")
                missing.append(path.name)
                continue
            caps = load_npy(path)
            if caps.dtype.kind not in "US":
                raise DataError(f"{path}: captions of type {caps.dtype}; brain-diffuser writes fixed-width strings "
                                "(images × 5)")
            if caps.ndim not in (1, 2) or len(caps) != len(ids):
                raise DataError(f"{path}: captions of shape {caps.shape}, expected ({len(ids)} images, captions)")
            for i, row in zip(ids, caps.reshape(len(ids), -1)):
                texts = [(c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c)).strip() for c in row]
                out[int(i)] = list(dict.fromkeys(t for t in texts if t))
        if missing and not out:
            return _unavailable(self.info, f"{', '.join(missing)} not found", self.mode)
        self.info.update(status="loaded", n_images=len(out), missing=missing)
        return out


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # the cache is an optimisation: a read-only cache folder is not an error
