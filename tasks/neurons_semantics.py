"""The ``neurons`` task's semantics of decoded units (seed 002 Table 1).

Each analysed image's top ``semantic_units`` units (by g, over all chosen layers) are decoded
through the unembedding; each unit's ``top_tokens`` tokens, comma-joined, are one text. Per
image, the best of its units is kept (max over units), then the mean over images, for:

* ``sentence`` — cosine of the text's sentence-model embedding to the mean of the image's captions'
  (the caption metrics' ``sentence``);
* ``clipscore`` — CLIPScore (Hessel et al.) of the text against the image itself:
  ``100·max(cos(CLIP image, CLIP text), 0)`` (the scale of the paper's Table 1), with the weights of
  the caption metric ``clipscore_model`` (``clip_b32`` by default, CLIPScore's ViT-B/32) loaded by
  :func:`brainharness.metrics.caption_embeddings.clip_model` — the local caches only; where they are
  not there the column is ``None`` and the reason is in the record's ``details.clipscore``.

Both with the image's own units and with images and units paired at random (the derangement
``perm``: Table 1's baseline).
"""
from __future__ import annotations

import numpy as np

from brainharness.tasks import captioning as cap
from brainharness.tasks import neurons_core as nc
from brainharness.tasks.captioning_task import metric_device


def clip_scorer(name: str, images: np.ndarray, device: str | None, batch_size: int = 64):
    """``(score(texts, rows) -> (len(texts),) CLIPScores of texts[i] against images[rows[i]], description)``
    with CLIP metric ``name``'s cached weights, or ``(None, description with its reason)``."""
    import torch
    from PIL import Image

    from brainharness.metrics.caption_embeddings import clip_model, open_clip_text_encoder

    loaded, desc = clip_model(name, device)
    if loaded is None:
        return None, desc
    model, tokenizer, transform = loaded
    dev = desc.pop("device")
    feats = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = torch.stack([transform(Image.fromarray(np.asarray(im))) for im in images[s:s + batch_size]])
            feats.append(model.encode_image(x.to(dev)).float().cpu().numpy().astype(np.float64))
    img = np.concatenate(feats)
    img /= np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-8)
    encode = open_clip_text_encoder(model, tokenizer, dev)

    def score(texts: list[str], rows) -> np.ndarray:
        txt = encode(list(texts))
        txt /= np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-8)
        return 100.0 * np.maximum((txt * img[np.asarray(rows)]).sum(1), 0.0)

    return score, {**desc, "implementation": "CLIPScore 100·max(cos(image, text), 0) of the decoded units' "
                                             "comma-joined tokens, max over units, mean over images",
                   "clip_metric": name}


def semantics(task, gen, att: dict, refs: list, perm: np.ndarray, ctx, device: str, idx) -> tuple:
    """→ ``(rows, unit examples, clipscore description or "missing: <reason>")``."""
    p, tok = task.p, gen.tokenizer
    rows, examples = [], []
    u = min(p["semantic_units"], len(task.layers) * task.f)
    images = ctx.stimuli.images(np.asarray(ctx.score.stim_ids)[idx])
    clip, clip_desc = clip_scorer(p["clipscore_model"], images, metric_device(device))
    for prefix, (g, _c, _p0) in att.items():
        top = nc.top_units(g, u)  # (n, u) over all chosen layers
        ids = nc.decode_units(task.lm, task.layers, top.reshape(-1), p["top_tokens"])
        texts = [", ".join(w for w in (tok.decode([int(i)]).strip() for i in row) if w) for row in ids]
        for pairing, order in (("own", np.arange(len(refs))), ("random", perm)):
            image_of = order[np.arange(len(texts)) // u]  # unit text i belongs to image i // u
            pair_refs = [refs[j] for j in image_of]
            per, _summary, _ = cap.score_captions(texts, pair_refs, ["sentence"], metric_device(device),
                                                  ctx.cache_dir)
            value = float(per["sentence"].reshape(-1, u).max(1).mean()) if "sentence" in per else None
            clipscore = None if clip is None else float(clip(texts, image_of).reshape(-1, u).max(1).mean())
            rows.append({"prefix": prefix, "pairing": pairing, "sentence": value, "clipscore": clipscore,
                         "n_images": len(refs), "units_per_image": u})
        for i in range(min(p["examples"], len(refs))):
            for j in range(u):
                flat = int(top[i, j])
                examples.append({"stim_id": int(ctx.score.stim_ids[idx[i]]), "prefix": prefix,
                                 "layer": task.layers[flat // task.f], "unit": flat % task.f,
                                 "g": float(g[i, flat]), "tokens": texts[i * u + j]})
    return rows, examples, (clip_desc if clip is not None else f"missing: {clip_desc['reason']}")
