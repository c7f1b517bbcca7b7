#!/usr/bin/env python
"""Feature-extraction throughput per backbone, and the cost of a feature-cache hit.

    python bench/backbones.py --quick        # < 2 min on 2 CPU cores
    python bench/backbones.py                # the demo's 1,900 images, 64 real-size images
    python bench/backbones.py --device cuda --n-real 512

Two stimulus sets from ``brainharness.datasets.synthetic.SyntheticDataset`` (written to a temporary cache
folder): the **demo** size (64 × 64 px images, the tiny random-init configs the demo and the
tests use) and the **real** model input size (224 × 224 px, the real architectures with
``weights: random-init`` — same compute as the pretrained models, no download).

For every registered backbone that can run here (baselines; clip, eva, blip2 when their
plugins import — otherwise skipped with the reason printed):

* ``setup_s`` — construction + ``ensure_ready`` (building the model, random init);
* ``images_per_s`` — a cold ``FeatureCache.features`` call over the whole set (reading the
  images, preprocessing, the forward pass, writing the HDF5 cache), after one untimed warm-up
  batch;
* ``cache_hit_s`` — the second, identical ``FeatureCache.features`` call (read back from HDF5).

Extra figures: EVA preprocessing alone at 224 px (the batched tensor path vs timm's per-image
PIL transform), and LLM-VEM's read-out of EVA-02 blocks 0, 2, 4, 6, 8, 10 as one
``encode_layers`` pass vs six ``encode`` calls. The last stdout line is one JSON object with
every figure and the device.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brainharness import registry  # noqa: E402
from brainharness.backbone import StimulusBatch  # noqa: E402
from brainharness.features import FeatureCache  # noqa: E402
from brainharness.ridge import resolve_device  # noqa: E402
from brainharness.datasets.synthetic import SyntheticDataset  # noqa: E402

# The tiny random-init architectures of the demo / tests (the library's own config formats).
EVA_DEMO = {"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 6, "num_heads": 4}
CLIP_TINY = {"embed_dim": 24,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
BLIP2_TINY = {"vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                                "initializer_range": 0.02},
              "qformer_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                 "num_attention_heads": 2, "vocab_size": 128, "max_position_embeddings": 64},
              "text_config": {"model_type": "opt", "vocab_size": 128, "hidden_size": 24, "word_embed_proj_dim": 24,
                              "ffn_dim": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
                              "max_position_embeddings": 64},
              "num_query_tokens": 4, "image_text_hidden_size": 16}
LLM_VEM_BLOCKS = [f"blocks.{i}" for i in (0, 2, 4, 6, 8, 10)]


def configs(heavy: bool) -> dict[str, list[tuple[str, str, dict]]]:
    """``{size: [(label, registry name, options)]}``; ``heavy`` adds BLIP-2's real ViT-g."""
    demo = [
        ("oracle", "oracle", {"layer": "all"}),
        ("pixels", "pixels", {"size": 16}),
        ("random-features", "random-features", {}),
        ("clip-tiny", "clip", {"weights": "random-init", "model_config": CLIP_TINY, "layer": "blocks.1",
                               "readout": "mean"}),
        ("eva-demo", "eva", {"weights": "random-init", "model_kwargs": EVA_DEMO, "layer": "blocks.3",
                             "readout": "mean"}),
        ("blip2-tiny", "blip2", {"weights": "random-init", "config": BLIP2_TINY, "variant": "generation"}),
    ]
    real = [
        ("pixels", "pixels", {"size": 16}),
        ("random-features", "random-features", {}),
        ("clip-ViT-B-32", "clip", {"model": "ViT-B-32", "weights": "random-init"}),
        ("eva02-base", "eva", {"model": "eva02_base_patch14_224.mim_in22k", "weights": "random-init"}),
    ]
    if heavy:  # ViT-g + Q-Former (~1.2 B parameters): minutes of random init and compute on a CPU
        real.append(("blip2-itm-vit-g", "blip2", {"weights": "random-init", "variant": "retrieval"}))
    return {"demo": demo, "real": real}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"{torch.get_num_threads()} torch threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stimuli_set(n: int, size: int, cache_dir: Path):
    n_test = max(2, n // 6)
    ds = SyntheticDataset(n_train=n - n_test, n_test=n_test, n_voxels=13, image_size=size, seed=0,
                          cache_dir=cache_dir).load()
    return ds.stimuli


def bench_backbone(label, name, options, stimuli, ids, cache, device, batch_size) -> dict:
    cls = registry.backbones.get(name)  # imports the plugin
    start = time.perf_counter()
    backbone = cls(**{"batch_size": batch_size, "device": str(device), **options})
    backbone.ensure_ready()
    sync(device)
    setup = time.perf_counter() - start
    backbone.encode(StimulusBatch(stimuli, ids[:2]), backbone.layer)  # warm-up
    sync(device)
    start = time.perf_counter()
    feats, info = cache.features(backbone, stimuli, ids)
    sync(device)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    again, info2 = cache.features(backbone, stimuli, ids)
    hit = time.perf_counter() - start
    assert info2["cache"] == "hit" and np.array_equal(feats, again), (info, info2)
    return {"backbone": label, "name": name, "weights": backbone.weights_info()["source"], "layer": backbone.layer,
            "readout": backbone.readout, "precision": backbone.precision(), "n_images": len(ids),
            "feature_shape": list(feats.shape[1:]), "setup_s": round(setup, 3), "extract_s": round(cold, 3),
            "images_per_s": round(len(ids) / cold, 2), "cache": info["cache"], "cache_hit_s": round(hit, 4)}


def bench_eva_extras(stimuli, ids, device, batch_size, n_layers_images) -> dict:
    """EVA at 224 px: preprocessing tensor vs PIL; LLM-VEM blocks in one pass vs six."""
    from brainharness.backbones.eva import Eva

    out = {}
    images = stimuli.images(ids)
    pp = {}
    for mode in ("tensor", "pil"):
        b = Eva(weights="random-init", preprocess=mode, device=str(device))
        b.pixels(images[:2])  # warm-up
        sync(device)
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            b.pixels(images[i:i + batch_size])
        sync(device)
        pp[f"{mode}_images_per_s"] = round(len(images) / (time.perf_counter() - start), 1)
    out["eva_preprocess_224"] = pp

    b = Eva(weights="random-init", readout="mean", device=str(device), batch_size=batch_size)
    b.ensure_ready()
    sub = ids[:n_layers_images]
    batches = [StimulusBatch(stimuli, sub[i:i + batch_size]) for i in range(0, len(sub), batch_size)]
    for batch in batches:
        batch.images  # read once: time the model, not the image reads  # noqa: B018
    b.encode(batches[0], "blocks.0")  # warm-up
    sync(device)
    start = time.perf_counter()
    one = [b.encode_layers(batch, LLM_VEM_BLOCKS) for batch in batches]
    sync(device)
    t_one = time.perf_counter() - start
    start = time.perf_counter()
    sep = [{layer: b.encode(batch, layer) for layer in LLM_VEM_BLOCKS} for batch in batches]
    sync(device)
    t_sep = time.perf_counter() - start
    same = all(np.allclose(o[k], s[k], rtol=1e-4, atol=1e-5) for o, s in zip(one, sep) for k in LLM_VEM_BLOCKS)
    out["eva_llm_vem_blocks"] = {"layers": LLM_VEM_BLOCKS, "n_images": len(sub), "encode_layers_s": round(t_one, 3),
                                 "separate_encode_s": round(t_sep, 3), "speedup": round(t_sep / t_one, 2),
                                 "same_features": bool(same)}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer images; < 2 min on 2 CPU cores")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n-demo", type=int, help="images at 64 px (default 1900; --quick 384)")
    ap.add_argument("--n-real", type=int, help="images at 224 px (default 64; --quick 8)")
    ap.add_argument("--batch-size", type=int, default=64, help="demo-size batch (real size: a quarter on CPU)")
    ap.add_argument("--heavy", action="store_true", help="also BLIP-2's real ViT-g (random-init, ~5 GB)")
    ap.add_argument("--only", help="comma-separated labels to run (eva-extras: the EVA extras)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--json", type=Path, help="also write the JSON summary here")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    n_demo = args.n_demo or (384 if args.quick else 1900)
    n_real = args.n_real or (8 if args.quick else 64)
    if args.threads:
        torch.set_num_threads(args.threads)
    bs_real = args.batch_size if device.type == "cuda" else max(1, args.batch_size // 4)
    only = set(args.only.split(",")) if args.only else None

    tmp = Path(tempfile.mkdtemp(prefix="brainharness-bench-"))
    summary = {"bench": "backbones", "device": device_name(device), "torch": torch.__version__, "quick": args.quick,
               "results": [], "skipped": {}}
    try:
        cache = FeatureCache(tmp / "cache")
        sets = {"demo": (64, n_demo, args.batch_size), "real": (224, n_real, bs_real)}
        for size_key, entries in configs(args.heavy or device.type == "cuda").items():
            size, n, bs = sets[size_key]
            start = time.perf_counter()
            stim = stimuli_set(n, size, tmp / "data")
            print(f"[{size_key}] {n} synthetic images of {size} px in {time.perf_counter() - start:.1f} s", flush=True)
            for label, name, options in entries:
                if only and label not in only:
                    continue
                key = f"{label}@{size}px"
                try:
                    row = bench_backbone(label, name, options, stim, stim.ids, cache, device, bs)
                except Exception as e:  # noqa: BLE001 - a plugin that cannot run here is reported, not fatal
                    reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                    summary["skipped"][key] = reason
                    print(f"  {key:28s} skipped: {reason}", flush=True)
                    if os.environ.get("BENCH_DEBUG"):
                        traceback.print_exc()
                    continue
                row["image_px"] = size
                summary["results"].append(row)
                print(f"  {key:28s} {row['images_per_s']:9.1f} img/s  setup {row['setup_s']:6.2f} s  "
                      f"cache hit {row['cache_hit_s'] * 1e3:7.1f} ms  features {row['feature_shape']}", flush=True)
            if size_key == "real" and (not only or "eva-extras" in only):
                try:
                    extra = bench_eva_extras(stim, stim.ids, device, bs, min(n, 2 if args.quick else 32))
                    summary.update(extra)
                    print(f"  eva preprocessing 224 px: {extra['eva_preprocess_224']}", flush=True)
                    print(f"  eva LLM-VEM blocks: {extra['eva_llm_vem_blocks']}", flush=True)
                except Exception as e:  # noqa: BLE001
                    summary["skipped"]["eva-extras"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
                    print(f"  eva extras skipped: {summary['skipped']['eva-extras']}", flush=True)
        known = {name for entries in configs(True).values() for _, name, _ in entries}
        for name in registry.backbones.names():
            if name not in known:
                summary["skipped"][name] = "no benchmark config for this backbone"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
