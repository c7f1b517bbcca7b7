"""Declared contracts: what tasks need, what backbones and datasets provide, checked before any work.

The command-line checks run the real CLI in a subprocess on real configs and assert that a
mismatch ends with one line naming the pair and the capability, exit status 2, and nothing
written (no results, cache or W&B folder).
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brainharness import registry
from brainharness.capabilities import (
    CAPTIONS,
    DESCRIPTIONS,
    FINE_TUNABLE,
    IMAGE_FEATURES,
    IMAGE_TEXT_RETRIEVAL,
    QUERY_CAPTIONER,
    QUERY_TOKENS,
    ROI_MASKS,
    SINGLE_TRIALS,
    TEXT_FEATURES,
    check_config,
    check_unit,
    missing_members,
)
from brainharness.config import load_config
from brainharness.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
CLIP_TINY = next(b for b in DEMO["backbones"] if b.get("label") == "clip-tiny")
EVA_TINY = next(b for b in DEMO["backbones"] if b.get("label") == "eva-tiny")
BLIP2_TINY = next(b for b in DEMO["backbones"] if b.get("label") == "blip2-tiny")
SYNTHETIC = {"name": "synthetic", "n_train": 60, "n_test": 40, "n_voxels": 50, "image_size": 32, "seed": 1}


def _task(spec: dict):
    return registry.tasks.get(spec["name"])(**{k: v for k, v in spec.items() if k not in ("name", "label")})


def _cli_run(tmp_path: Path, dataset: dict, backbone: dict, task: dict) -> subprocess.CompletedProcess:
    """``brainharness run`` on a config whose every folder lies in ``tmp_path``."""
    cfg = {"experiment": "contract", "results_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache"),
           "dataset": dataset, "backbones": [backbone], "tasks": [task],
           "tracking": {"wandb": {"mode": "offline"}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "BRAINHARNESS_CACHE": str(tmp_path / "env-cache"), "WANDB_DIR": str(tmp_path / "wandb")}
    return subprocess.run([sys.executable, "-m", "brainharness.cli", "-q", "run", str(path)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)


def _assert_refused(proc: subprocess.CompletedProcess, tmp_path: Path, message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"brainharness: error: {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no results, cache or W&B folder


def test_aligned_encoding_on_clip_is_refused_before_anything_is_built(tmp_path):
    proc = _cli_run(tmp_path, SYNTHETIC, CLIP_TINY, {"name": "aligned_encoding"})
    _assert_refused(proc, tmp_path, "task 'aligned_encoding' needs a fine-tunable torch module with block "
                                    "read-outs from its backbone; backbone 'clip-tiny' (clip) does not provide it")


def test_decoding_on_pixels_is_refused(tmp_path):
    proc = _cli_run(tmp_path, SYNTHETIC, {"name": "pixels", "size": 8}, {"name": "decoding"})
    _assert_refused(proc, tmp_path, "task 'decoding' needs Q-Former query tokens (BLIP-2) from its backbone; "
                                    "backbone 'pixels' (pixels) does not provide it")


def test_a_dataset_without_captions_is_refused_before_it_is_read(tmp_path):
    # nsd with captions: none never loads COCO captions; its root is not even looked at
    dataset = {"name": "nsd", "root": str(tmp_path / "nsd-not-read"), "captions": "none"}
    task = {"name": "decoding", "label": "seed000", "retrieval_backbone": {"name": "blip2-synthetic",
                                                                           "variant": "retrieval"}}
    proc = _cli_run(tmp_path, dataset, {"name": "blip2-synthetic", "label": "captioner"}, task)
    _assert_refused(proc, tmp_path, "task 'seed000' (decoding) with stage2, retrieval or captioning needs captions "
                                    "from its dataset; dataset 'nsd' (nsd) does not provide it (only with "
                                    "captions: auto or required)")


@pytest.mark.parametrize("name", ["demo", "seed000", "seed003", "seed004"])
def test_every_builtin_config_pairing_validates(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    tasks = [(spec, _task(spec)) for spec in cfg["tasks"]]
    check_config(cfg, tasks)  # raises on the first mismatch
    # and what made them valid: the needs are really there to check
    needs = {n.capability for _, t in tasks for n in t.requirements()}
    assert IMAGE_FEATURES in needs or FINE_TUNABLE in needs


def test_blip2_capabilities_follow_the_variant(tmp_path):
    blip2, synthetic = registry.backbones.get("blip2"), registry.backbones.get("blip2-synthetic")
    generation = {IMAGE_FEATURES, QUERY_TOKENS, QUERY_CAPTIONER}
    retrieval = {IMAGE_FEATURES, QUERY_TOKENS, TEXT_FEATURES, IMAGE_TEXT_RETRIEVAL}
    assert blip2.provides_for({}) == generation  # Salesforce/blip2-opt-2.7b
    assert blip2.provides_for({"variant": "retrieval"}) == retrieval
    assert blip2.provides_for({"model": "Salesforce/blip2-itm-vit-g"}) == retrieval
    assert blip2.provides_for({"weights": "pretrained:Salesforce/blip2-itm-vit-g"}) == retrieval
    assert blip2.provides_for({"weights": "random-init", "model": "tiny-itm"}) == retrieval
    assert blip2.provides_for({"weights": "random-init"}) == generation
    assert synthetic.provides_for({}) == generation and synthetic.provides_for({"variant": "retrieval"}) == retrieval
    local = tmp_path / "saved"
    local.mkdir()
    (local / "config.json").write_text('{"architectures": ["Blip2ForImageTextRetrieval"]}')
    assert blip2.provides_for({"weights": f"local:{local}"}) == retrieval  # the folder's config says so
    with pytest.raises(ConfigError, match="variant must be one of"):
        blip2.provides_for({"variant": "captioning"})
    # the class-level answer is the one an instance arrives at
    for params in ({}, {"variant": "retrieval"}, {"model": "tiny-itm"}, {"weights": f"local:{local}"}):
        full = {"weights": "random-init", "config": BLIP2_TINY["config"], **params}
        if "local" in str(params.get("weights")):
            full = params
        assert blip2(**full).variant == blip2.variant_for(full)


def test_dataset_declarations_follow_their_parameters():
    def offered(name, **params):
        return registry.datasets.get(name).provides_for(params)

    assert offered("synthetic") == {CAPTIONS, DESCRIPTIONS, SINGLE_TRIALS, ROI_MASKS}
    assert offered("nsd") == {CAPTIONS, SINGLE_TRIALS, ROI_MASKS}
    assert offered("nsd", captions="none") == {SINGLE_TRIALS, ROI_MASKS}
    assert offered("nsd-brain-diffuser") == {CAPTIONS}
    assert offered("nsd-brain-diffuser", trials_root="/data/nsd") == {CAPTIONS, SINGLE_TRIALS}
    assert offered("algonauts2023") == {ROI_MASKS}
    assert offered("algonauts2023", nsd_root="/data/nsd") == {ROI_MASKS, CAPTIONS}


def test_needs_follow_the_task_parameters():
    dataset, gen = {"name": "synthetic"}, {"name": "blip2-synthetic"}
    # without captions and ROI captions no caption generator is needed: a retrieval model will do
    no_captions = _task({"name": "decoding", "captioning": False, "roi_captions": False,
                         "retrieval_backbone": {**gen, "variant": "retrieval"}})
    check_unit("decoding", no_captions, {**BLIP2_TINY, "variant": "retrieval"}, dataset)
    with pytest.raises(ConfigError, match="with captioning or roi_captions needs a caption generator"):
        check_unit("decoding", _task({"name": "decoding", "retrieval_backbone": {**gen, "variant": "retrieval"}}),
                   {**BLIP2_TINY, "variant": "retrieval"}, dataset)
    # the retrieval role: a generation model there is named with the option that would make it one
    task = _task({"name": "decoding", "retrieval_backbone": gen})
    with pytest.raises(ConfigError, match=r"^task 'decoding' with stage2 or retrieval needs an image-text retrieval "
                                          r"model \(BLIP-2 retrieval\) from its retrieval_backbone; backbone "
                                          r"'blip2-synthetic' \(blip2-synthetic\) does not provide it \(only with "
                                          r"variant: retrieval\)$"):
        check_unit("decoding", task, gen, dataset)
    # null: the unit's backbone takes the role
    with pytest.raises(ConfigError, match=r"from its retrieval_backbone \(null: the unit's backbone\); backbone "
                                          r"'blip2-tiny' \(blip2\)"):
        check_unit("decoding", _task({"name": "decoding", "retrieval_backbone": None}), BLIP2_TINY, dataset)
    # aligned_encoding: descriptions only where the dataset has them, and only for stage 2
    described = _task({"name": "aligned_encoding", "text_source": "descriptions"})
    check_unit("aligned_encoding", described, EVA_TINY, dataset)
    with pytest.raises(ConfigError, match="needs descriptions per stimulus from its dataset; dataset 'nsd' "):
        check_unit("aligned_encoding", described, EVA_TINY, {"name": "nsd", "captions": "none"})
    check_unit("aligned_encoding", _task({"name": "aligned_encoding", "stage": "1", "text_source": "descriptions"}),
               EVA_TINY, {"name": "nsd"})


def test_declarations_match_what_the_backbones_have(tmp_path):
    """Every declared capability's protocol members exist on an instance (looked up statically:
    no weights are loaded); and the capabilities a backbone does not declare are really missing."""
    specs = [{"name": "pixels", "size": 8}, {"name": "oracle"}, CLIP_TINY, EVA_TINY, BLIP2_TINY,
             {**BLIP2_TINY, "variant": "retrieval"}]
    for spec in specs:
        cls = registry.backbones.get(spec["name"])
        params = {k: v for k, v in spec.items() if k not in ("name", "label")}
        backbone = cls(**params)
        for cap in cls.provides_for(params):
            assert missing_members(backbone, cap) == [], (spec["name"], cap.name)
    clip = registry.backbones.get("clip")(**{k: v for k, v in CLIP_TINY.items() if k not in ("name", "label")})
    assert "block_readouts" in missing_members(clip, FINE_TUNABLE)  # why clip does not declare it
    assert missing_members(registry.backbones.get("pixels")(size=8), TEXT_FEATURES) == ["encode_text"]


def test_tasks_neither_probe_nor_import_backbones():
    for path in sorted((REPO / "tasks").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "hasattr", f"{path.name}:{node.lineno} probes with hasattr"
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(("brainharness.backbones", "backbones")), path.name
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("brainharness.backbones") for a in node.names), path.name


def test_listing_shows_provides_and_needs():
    code = ("import sys; from brainharness.cli import main\n"
            "for k in ('backbones','tasks','datasets'): main(['list', k])\n"
            "print('HEAVY', [m for m in ('torch','transformers','timm','open_clip') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rows = {line.split("\t")[0]: line for line in out.splitlines()}
    assert "HEAVY []" in out
    assert "provides=image_features, fine_tunable" in rows["eva"]
    assert "caption_generator [variant: generation]" in rows["blip2"]
    assert "needs=backbone: fine_tunable" in rows["aligned_encoding"]
    assert "retrieval_backbone: image_text_retrieval [with stage2 or retrieval]" in rows["decoding"]
    assert "captions [captions: auto or required]" in rows["nsd"]
