#!/usr/bin/env python
"""Feature extraction from an HDF5 image brick like NSD's, as a share of the model-only rate.

    python bench/extraction.py --quick              # CPU check: 16 images, small BLIP-2 (< 5 min, 2 cores)
    python bench/extraction.py --device cuda        # the real figures: 1,024 images, fp16 autocast

A brick like NSD's ``nsd_stimuli.hdf5`` is written to a temporary folder: ``imgBrick``, uint8
``(N, 425, 425, 3)``, one image per chunk, uncompressed (as NSD ships it and as
``tests/nsd_layouts.py`` writes it). Then, for each model — the real architectures with
``weights: random-init`` (same compute as the pretrained models, no download), built through
the harness's own backbone plugins:

* ``clip-l14`` — open_clip ``ViT-L-14`` at 224 px (plugin ``clip``, layer ``embedding``);
* ``eva02-base`` — timm ``eva02_base_patch14_224`` (plugin ``eva``, layer ``pooled``);
* ``blip2`` — BLIP-2's ViT-g vision encoder + Q-Former, transformers' ``Blip2Config`` defaults
  (plugin ``blip2``, retrieval variant — no language model —, layer ``qformer``);

three figures in images/s:

(a) ``model_only`` — the forward pass the plugin runs for that layer, under the plugin's own
    autocast (fp16 on CUDA with ``--half``), on one batch already preprocessed and on the device,
    repeated ``--reps`` times after warm-up (``torch.cuda.synchronize`` around the timed loop);
(b) ``end_to_end`` — ``FeatureCache.features`` over all N images of a stimulus set read by the
    NSD loader's own reader (``brainharness.datasets.nsd_files.imgbrick_reader``): HDF5 reads,
    the plugin's preprocessing, the forward pass, the copy back and the feature-cache write;
(c) ``share`` = (b) / (a).

Also per model: ``preprocess`` (the plugin's ``pixels`` alone, images/s) and, once, ``read`` (the
brick through the NSD reader alone). The brick was just written, so its reads come from the OS
page cache: a cold disk can only make (b) slower. The last stdout line is one JSON object with
the device, torch version, precision, N and batch size. No network is used: random-init only,
Hugging Face offline.
"""
from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):  # before any HF import
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# bench/ is the script's folder (sys.path[0]): ``backbones`` here is bench/backbones.py
from backbones import device_name, sync  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brainharness import registry  # noqa: E402
from brainharness.data import Stimuli  # noqa: E402
from brainharness.datasets.nsd_files import imgbrick_reader  # noqa: E402
from brainharness.errors import ConfigError  # noqa: E402
from brainharness.features import FeatureCache  # noqa: E402
from brainharness.ridge import resolve_device  # noqa: E402

NSD_SIDE = 425  # nsd_stimuli.hdf5: imgBrick 73000 × 425 × 425 × 3 uint8
#: label → (registry name, options, what it is). The real architectures, random-init.
MODELS = {
    "clip-l14": ("clip", {"model": "ViT-L-14", "weights": "random-init"},
                 "open_clip ViT-L-14, 224 px, layer embedding"),
    "eva02-base": ("eva", {"model": "eva02_base_patch14_224.mim_in22k", "weights": "random-init"},
                   "timm eva02_base_patch14_224, layer pooled"),
    "blip2": ("blip2", {"weights": "random-init", "variant": "retrieval"},
              "BLIP-2 ViT-g (39 layers) + Q-Former (12 layers), Blip2Config defaults, layer qformer (32×768)"),
}
#: --quick only: BLIP-2 at its real widths but with fewer layers (the full ViT-g is ~5 GB and
#: minutes per batch on a 2-core CPU). Said in the output whenever it is used.
BLIP2_QUICK = {"vision_config": {"num_hidden_layers": 3}, "qformer_config": {"num_hidden_layers": 2}}
BLIP2_QUICK_NOTE = "QUICK CONFIG: ViT-g width, 3 of 39 vision layers, 2 of 12 Q-Former layers — not the real BLIP-2"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def describe_device(device: torch.device) -> str:
    """``device_name`` of bench/backbones.py, with the CPU model from /proc/cpuinfo on CPU."""
    name = device_name(device)
    model = cpu_model()
    return name.replace("cpu: ", f"cpu: {model}, ", 1) if device.type == "cpu" and model else name


def write_brick(path: Path, n: int, seed: int = 0, block: int = 64) -> float:
    """``imgBrick`` uint8 (n, 425, 425, 3), one image per chunk, uncompressed → seconds taken.

    Smooth random images (a coarse noise field upsampled, plus fine noise), written ``block``
    images at a time so memory stays small."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("imgBrick", shape=(n, NSD_SIDE, NSD_SIDE, 3), dtype=np.uint8,
                              chunks=(1, NSD_SIDE, NSD_SIDE, 3))
        for lo in range(0, n, block):
            k = min(block, n - lo)
            coarse = rng.integers(0, 256, (k, 17, 17, 3)).astype(np.float32)
            field = np.repeat(np.repeat(coarse, 25, axis=1), 25, axis=2)
            ds[lo:lo + k] = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    return time.perf_counter() - start


def forward(backbone):
    """The forward pass ``backbone.encode`` runs for its (default) layer, on a pixel tensor."""
    name, layer = backbone.registry_name, backbone.layer
    if name == "clip" and layer == "embedding":
        model = backbone.torch_model
        return model.encode_image
    if name == "eva" and layer == "pooled":
        def run(x):
            _, final = backbone.block_readouts(x, [], final=True)
            return backbone.torch_model.forward_head(final, pre_logits=True)
        return run
    if name == "blip2" and layer == "qformer":
        return lambda x: backbone.query_outputs(x)[2]
    raise ConfigError(f"extraction bench: no model-only path for {name} layer {layer}")


def to_device(x, device):
    return x.to(device, non_blocking=True)


def timed(device, fn) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def model_only(backbone, images: np.ndarray, device, reps: int, warmup: int) -> dict:
    """(a): ``reps`` forward passes of one preprocessed batch already on the device."""
    x = to_device(backbone.pixels(images), device)
    run = forward(backbone)

    def loop(k):
        with torch.no_grad(), backbone.autocast():
            for _ in range(k):
                out = run(x)
        return out

    timed(device, lambda: loop(warmup))
    seconds = timed(device, lambda: loop(reps))
    return {"images_per_s": round(reps * len(images) / seconds, 2), "seconds": round(seconds, 3), "reps": reps,
            "input": list(x.shape), "input_dtype": str(x.dtype).replace("torch.", "")}


def preprocess_rate(backbone, images: np.ndarray, device, bs: int) -> float:
    """The plugin's ``pixels`` alone over ``images`` (from memory), moved to the device; the
    second of two passes (the first calls of a processor are several times slower)."""
    def run():
        for i in range(0, len(images), bs):
            to_device(backbone.pixels(images[i:i + bs]), device)
    timed(device, run)
    return round(len(images) / timed(device, run), 2)


def bench_model(label: str, stimuli: Stimuli, ids: np.ndarray, cache_root: Path, device, args) -> dict:
    name, options, what = MODELS[label]
    options = dict(options)
    if label == "blip2" and args.quick:
        options["config"], what = BLIP2_QUICK, f"BLIP-2 {BLIP2_QUICK_NOTE}, layer qformer (32×768)"
    backbone = registry.backbones.get(name)(batch_size=args.batch_size, device=str(device), half=args.half,
                                            **options)
    setup = timed(device, backbone.ensure_ready)
    parts = ([backbone.model.vision_model, backbone.model.qformer] if name == "blip2" else
             [backbone.torch_model.visual] if name == "clip" else [backbone.torch_model])
    n_params = sum(p.numel() for m in parts for p in m.parameters())  # the image path only (no text tower)
    batch = stimuli.images(ids[:args.batch_size])
    a = model_only(backbone, batch, device, args.reps, args.warmup)
    pre = preprocess_rate(backbone, stimuli.images(ids[:min(len(ids), 2 * args.batch_size)]), device,
                          args.batch_size)
    cache = FeatureCache(cache_root / label)
    start = time.perf_counter()
    feats, info = cache.features(backbone, stimuli, ids)
    sync(device)
    e2e_s = time.perf_counter() - start
    if info["cache"] != "miss" or len(feats) != len(ids) or not np.isfinite(feats).all():
        raise RuntimeError(f"{label}: unexpected extraction result ({info['cache']}, {feats.shape})")
    b = len(ids) / e2e_s
    row = {"model": label, "what": what, "backbone": name, "layer": backbone.layer, "readout": backbone.readout,
           "weights": backbone.weights_info()["source"], "precision": backbone.precision(),
           "params_M": round(n_params / 1e6, 1), "feature_shape": list(feats.shape[1:]),
           "setup_s": round(setup, 2), "model_only": a, "preprocess_images_per_s": pre,
           "end_to_end": {"images_per_s": round(b, 2), "seconds": round(e2e_s, 3), "n_images": len(ids)},
           "share": round(b / a["images_per_s"], 3)}
    if label == "blip2" and args.quick:
        row["quick_config"] = BLIP2_QUICK
    del backbone, feats
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def read_rate(stimuli: Stimuli, ids: np.ndarray, bs: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(ids), bs):
        stimuli.images(ids[i:i + bs])
    return round(len(ids) / (time.perf_counter() - start), 1)


def skip_reason(e: Exception) -> str:
    """One line for a model that failed (the traceback too with BENCH_DEBUG=1)."""
    if os.environ.get("BENCH_DEBUG"):
        traceback.print_exc()
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"16 images, batch 4, 2 reps; blip2: {BLIP2_QUICK_NOTE}")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--n", type=int, help="images in the brick (default 1024; --quick 16)")
    ap.add_argument("--batch-size", type=int, help="default 64 on CUDA, 4 on CPU")
    ap.add_argument("--reps", type=int, help="timed forward passes for the model-only rate (default 20; --quick 2)")
    ap.add_argument("--warmup", type=int, help="untimed forward passes first (default 3 on CUDA, else 1)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--half", action=argparse.BooleanOptionalAction, default=None,
                    help="fp16 autocast (the plugins' 'half'; default on for CUDA, off for CPU, where it is a no-op)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--tmp", type=Path, help="folder for the brick and the feature cache (default: the system's)")
    ap.add_argument("--json", type=Path, help="also write the JSON summary here")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device here (torch.cuda.is_available() is False)")
    args.n = args.n or (16 if args.quick else 1024)
    args.batch_size = args.batch_size or (4 if args.quick or not cuda else 64)
    args.reps = args.reps or (2 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.half = cuda if args.half is None else args.half
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        ap.error(f"unknown model(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODELS)}")
    if args.n < args.batch_size:
        ap.error(f"--n ({args.n}) must be at least --batch-size ({args.batch_size})")
    args.models = models
    return args, device


def main(argv=None) -> dict:
    args, device = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = {"bench": "extraction", "device": describe_device(device), "torch": torch.__version__,
               "precision": "fp16 autocast" if args.half and device.type == "cuda" else "fp32",
               "n": args.n, "batch_size": args.batch_size, "reps": args.reps, "quick": args.quick,
               "brick": f"imgBrick uint8 ({args.n}, {NSD_SIDE}, {NSD_SIDE}, 3), chunks (1, {NSD_SIDE}, {NSD_SIDE}, 3)",
               "results": [], "skipped": {}}
    print(f"device: {summary['device']} · torch {torch.__version__} · {summary['precision']} · N {args.n} · "
          f"batch {args.batch_size}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="brainharness-extraction-", dir=args.tmp))
    try:
        brick = tmp / "nsd_stimuli.hdf5"
        t = write_brick(brick, args.n)
        ids = np.arange(args.n, dtype=np.int64)
        reader, fingerprint = imgbrick_reader(brick, ids)  # the NSD loader's own reader
        stimuli = Stimuli(ids=ids, read_images=reader, fingerprint=fingerprint)
        summary["read_images_per_s"] = read_rate(stimuli, ids, args.batch_size)
        print(f"brick: {summary['brick']} written in {t:.1f} s; NSD reader alone "
              f"{summary['read_images_per_s']} img/s", flush=True)
        for label in args.models:
            try:
                row = bench_model(label, stimuli, ids, tmp / "cache", device, args)
            except Exception as e:  # noqa: BLE001 - a model that cannot run here (memory, ...) is reported
                summary["skipped"][label] = reason = skip_reason(e)
                print(f"  {label:11s} skipped: {reason}", flush=True)
                continue
            summary["results"].append(row)
            print(f"  {label:11s} model-only {row['model_only']['images_per_s']:9.2f} img/s · end-to-end "
                  f"{row['end_to_end']['images_per_s']:9.2f} img/s · share {row['share']:.2f} · preprocess "
                  f"{row['preprocess_images_per_s']:8.1f} img/s · {row['precision']} · {row['params_M']} M params · "
                  f"{summary['device']} · {row['what']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    line = json.dumps(summary)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    return summary


if __name__ == "__main__":
    main()
