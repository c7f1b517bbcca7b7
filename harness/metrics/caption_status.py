"""Which caption metrics this installation computes: ``python -m brainharness.metrics.caption_status``.

Scores two example captions with every metric of the seed-000 table and prints one line per
metric — its value, or ``missing: <how to supply it>`` — then where Java and WordNet came from.
``--require a,b`` exits 1 when one of those metrics is missing (the wheel check in CI requires
every metric whose dependencies pip installs; the CLIP columns need hub weights)."""
from __future__ import annotations

import argparse
import sys
import warnings

PREDS = ["a brown dog is running across a grassy field", "a plate of food on a wooden table"]
REFS = [["A brown dog runs across the grass.", "a dog running through a field"],
        ["A plate with food sits on a wooden table.", "food on a plate on a table"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m brainharness.metrics.caption_status",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--require", default="", help="comma-separated metric outputs that must be computed")
    args = ap.parse_args(argv)
    from . import captions as cm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # each missing metric is printed below instead
        _, summary, info = cm.caption_scores(PREDS, REFS, device="cpu")
    cm.close()
    for name, value in summary.items():
        print(f"{name:12s} {value:.4f}" if value is not None else f"{name:12s} missing: {info[name]['reason']}")
    java = next((info[k]["versions"].get("java") for k in ("cider", "meteor_coco") if info[k]["status"] == "ok"), None)
    print(f"java: {java or 'none'}")
    print(f"wordnet: {info['meteor'].get('wordnet') if info['meteor']['status'] == 'ok' else 'none'}")
    lacking = [m for m in filter(None, args.require.split(",")) if summary.get(m.strip()) is None]
    if lacking:
        print(f"caption_status: required metrics missing: {', '.join(lacking)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
