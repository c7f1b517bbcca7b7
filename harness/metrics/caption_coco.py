"""pycocoevalcap (Java) for the caption metrics: the PTB tokenizer, the METEOR 1.5 JVM (started once,
shut down at exit) and the inputs of the COCO scorers."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from brainharness.errors import HarnessError
from .caption_runtime import _cache, _first_line, _lock


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
