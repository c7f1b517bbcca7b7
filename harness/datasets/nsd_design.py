"""NSD's experimental design, ``nsddata/experiments/nsd/nsd_expdesign.mat``, read and checked.

The file (MATLAB v5) holds, all 1-based:

* ``masterordering`` (1 × 30000): the subject-image index (1..10000) shown on each trial, the
  same sequence for every subject; each index appears 3 times;
* ``subjectim`` (8 × 10000): the 73k id (1..73000) of each subject's images; the first
  ``len(sharedix)`` (1000) of every row are the shared images, so a trial is a test (shared1000)
  trial ⇔ ``masterordering ≤ 1000``;
* ``sharedix`` (1 × 1000): the 73k ids of the shared images;
* ``stimpattern`` (40 sessions × 12 runs × 75 slots): 1 where a slot shows an image — 750 per
  session, so session *s* holds trials ``750·(s−1) + 1 … 750·s`` of ``masterordering``.

Every invariant the loaders rely on is checked here, and a file that breaks one is named with
the invariant in one line: a beta session with a different number of trials than its design
session would pair every later trial with the wrong image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainharness.errors import DataError
from .nsd_common import require_file, subject_name

SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}  # NSD sessions each subject completed
TRIALS_PER_SESSION = 750  # NSD's stimulus trials per session (used where the file has no stimpattern)
N_SUBJECTS, N_IMAGES, REPEATS = 8, 73000, 3
DESIGN_NEEDED = "needed to map trials to images"


@dataclass
class Design:
    path: Path
    masterordering: np.ndarray  # 1-based indices into a subject's 10k images, one per trial
    subjectim: np.ndarray  # (8, 10000) 1-based 73k ids
    n_shared: int
    session_trials: np.ndarray  # stimulus trials of each design session (NSD: 40 × 750)

    @property
    def n_sessions(self) -> int:
        return len(self.session_trials)

    def session_limit(self, subj: int) -> int:
        """Sessions a subject can have: those it completed in NSD, within the design's."""
        return min(SESSIONS[subj], self.n_sessions)

    def session_problems(self, subj: int, sessions: list[tuple[int, Path, int]]) -> list[str]:
        """One line per beta file ``(session number, path, trials)`` that breaks the design."""
        problems, limit = [], self.session_limit(subj)
        for n, path, trials in sessions:
            if n > limit:
                problems.append(f"{path}: session {n}, but {subject_name(subj)} has {limit} sessions "
                                f"(completed in NSD: {SESSIONS[subj]}; in {self.path.name}: {self.n_sessions})")
            elif trials != self.session_trials[n - 1]:
                problems.append(f"{path}: {trials} trials, but session {n} of {self.path.name} has "
                                f"{int(self.session_trials[n - 1])} (trials are paired with images by position)")
        return problems

    def trials(self, subj: int, n_trials: int) -> tuple[np.ndarray, np.ndarray]:
        """0-based 73k id and test flag (shared image) of the first ``n_trials`` trials of ``subj``."""
        if n_trials > len(self.masterordering):
            raise DataError(f"{self.path}: masterordering lists {len(self.masterordering)} trials, "
                            f"the sessions loaded hold {n_trials}")
        order = self.masterordering[:n_trials]
        return self.subjectim[subj - 1, order - 1] - 1, order <= self.n_shared

    def first_appearance(self, subj: int) -> tuple[np.ndarray, np.ndarray]:
        """Train and test 73k ids in order of first appearance over all trials (brain-diffuser's order)."""
        ids, test = self.trials(subj, len(self.masterordering))
        out = []
        for sel in (~test, test):
            uniq, first = np.unique(ids[sel], return_index=True)
            out.append(uniq[np.argsort(first)])
        return out[0], out[1]


def read_design(path: Path) -> Design:
    """The design in ``path``, checked against every invariant listed in the module doc."""
    from scipy.io import loadmat

    require_file(path, DESIGN_NEEDED)
    try:
        m = loadmat(path, variable_names=["masterordering", "subjectim", "sharedix", "stimpattern"])
    except Exception as e:  # scipy raises NotImplementedError for v7.3, ValueError for junk
        raise DataError(f"{path}: unreadable MATLAB file ({type(e).__name__}: {e})") from None
    for key in ("masterordering", "subjectim"):
        if key not in m:
            raise DataError(f"{path}: no variable {key!r}")
    order = _indices(path, "masterordering", m["masterordering"]).reshape(-1)
    subjectim = _indices(path, "subjectim", m["subjectim"])
    if subjectim.ndim != 2 or subjectim.shape[0] != N_SUBJECTS:
        raise DataError(f"{path}: subjectim has shape {subjectim.shape}, expected ({N_SUBJECTS} subjects, images)")
    _within(path, "subjectim", subjectim, N_IMAGES, "73k ids")
    _within(path, "masterordering", order, subjectim.shape[1], "indices into subjectim's columns")
    counts = np.bincount(order, minlength=subjectim.shape[1] + 1)[1:]
    if (counts != REPEATS).any():
        k = int(np.flatnonzero(counts != REPEATS)[0])
        raise DataError(f"{path}: masterordering shows image index {k + 1} {counts[k]} times; NSD shows each of a "
                        f"subject's {subjectim.shape[1]} images {REPEATS} times")
    n_shared = 1000
    if "sharedix" in m:
        shared = _indices(path, "sharedix", m["sharedix"]).reshape(-1)
        n_shared = shared.size
        for s, row in enumerate(subjectim):
            if set(row[:n_shared].tolist()) != set(shared.tolist()):
                raise DataError(f"{path}: the first {n_shared} images of subjectim row {s + 1} are not the sharedix "
                                f"images (test trials are those with masterordering ≤ {n_shared})")
    return Design(path, order, subjectim, n_shared, _session_trials(path, m.get("stimpattern"), order.size))


def _indices(path: Path, name: str, value) -> np.ndarray:
    a = np.asarray(value)
    if a.size == 0 or a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and (a != np.rint(a)).any()):
        raise DataError(f"{path}: {name} must hold whole-number indices (got {a.dtype}, {a.size} values)")
    return np.atleast_2d(a).astype(np.int64) if name == "subjectim" else a.astype(np.int64)


def _within(path: Path, name: str, a: np.ndarray, high: int, what: str) -> None:
    if a.min() < 1 or a.max() > high:
        bad = a[(a < 1) | (a > high)].flat[0]
        raise DataError(f"{path}: {name} holds {int(bad)}, outside 1..{high} (1-based {what})")


def _session_trials(path: Path, pattern, n_trials: int) -> np.ndarray:
    """Stimulus trials per design session: from ``stimpattern`` (1 where a slot shows an image),
    else NSD's 750 — and they must add up to masterordering's length."""
    if pattern is None:
        per_session = np.full(n_trials // TRIALS_PER_SESSION, TRIALS_PER_SESSION)
        source = f"{TRIALS_PER_SESSION} per session (no stimpattern)"
    else:
        pattern = np.asarray(pattern)
        if pattern.ndim != 3 or not np.isin(pattern, (0, 1)).all():
            raise DataError(f"{path}: stimpattern should be sessions × runs × slots of 0/1, "
                            f"got shape {pattern.shape}")
        per_session = pattern.reshape(len(pattern), -1).sum(1).astype(np.int64)
        source = "stimpattern"
    if per_session.sum() != n_trials:
        raise DataError(f"{path}: {source} gives {int(per_session.sum())} trials, masterordering lists {n_trials}")
    return per_session
