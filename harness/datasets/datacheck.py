"""``brainharness data check PATH``: which NSD layout(s) a folder holds, what is missing or
inconsistent, and the sizes — from file headers, without loading the data.

Each loader module knows its own layout (``inspect(root)`` in :mod:`brainharness.datasets.nsd`,
:mod:`brainharness.datasets.brain_diffuser`, :mod:`brainharness.datasets.algonauts`); a folder may hold several (e.g.
brain-diffuser's ``data`` folder has both ``nsddata`` and ``processed_data``).
"""
from __future__ import annotations

from pathlib import Path

LAYOUT_HINTS = ("nsddata/ + nsddata_betas/ + nsddata_stimuli/ (nsd)",
                "processed_data/subjXX/nsd_train_fmriavg_nsdgeneral_subN.npy (nsd-brain-diffuser)",
                "subjXX/training_split/ (algonauts2023)")


def check_path(path) -> dict:
    """``{"path", "layouts": [report per layout found], "problems", "ok"}``; never raises on bad data."""
    from . import algonauts, brain_diffuser, nsd

    root = Path(path).expanduser()
    result = {"path": str(root), "layouts": [], "problems": []}
    if not root.is_dir():
        result["problems"].append(f"{root}: not a folder")
    else:
        for module in (nsd, brain_diffuser, algonauts):
            report = module.inspect(root)
            if report is not None:
                result["layouts"].append(report)
        if not result["layouts"]:
            result["problems"].append(f"{root}: no known layout (looked for {'; '.join(LAYOUT_HINTS)})")
    result["ok"] = not result["problems"] and not any(r["problems"] for r in result["layouts"])
    return result


def format_report(result: dict) -> str:
    lines = [f"{result['path']}"]
    for r in result["layouts"]:
        lines.append(f"  layout: {r['layout']} ({r['description']})")
        if "design" in r:
            d = r["design"]
            lines.append(f"    design: {d['trials']} trials in {d['sessions']} sessions, {d['subjects']} subjects × "
                         f"{d['images_per_subject']} images, {d['shared']} shared")
        if "images" in r:
            lines.append(f"    images: {r['images']['n']} of {'×'.join(map(str, r['images']['shape']))}")
        if "ids" in r:
            lines.append(f"    stimulus ids: {r['ids']}")
        lines.append(f"    subjects: {len(r['subjects'])}")
        for name, entry in r["subjects"].items():
            lines.append(f"      {name}: {_describe(entry)}")
        lines += [f"    problem: {p}" for p in r["problems"]]
        lines += [f"    note: {n}" for n in r["notes"]]
    lines += [f"  problem: {p}" for p in result["problems"]]
    n = len(result["problems"]) + sum(len(r["problems"]) for r in result["layouts"])
    lines.append("  OK" if result["ok"] else f"  {n} problem{'s' * (n != 1)}")
    return "\n".join(lines)


def _describe(entry: dict) -> str:
    parts = []
    for version, b in entry.get("betas", {}).items():
        parts.append(f"{b['sessions']}/{entry['sessions_in_nsd']} sessions of {version} ({', '.join(b['formats'])}, "
                     f"{b['trials']} trials)")
    if "voxels" in entry and "volume" in entry:
        parts.append(f"{entry['voxels']} nsdgeneral voxels in {'×'.join(map(str, entry['volume']))}")
    for split in ("train", "test"):
        if split in entry:
            parts.append(f"{split} {entry[split]['images']} images × {entry[split]['voxels']} voxels")
    if "vertices" in entry:
        v = entry["vertices"]
        parts.append(f"{entry['images']} training images × {v['lh']}+{v['rh']} vertices, {entry['test_images']} test "
                     f"images, ROI classes: {', '.join(entry['roi_classes']) or 'none'}")
    return "; ".join(parts) or "nothing readable"
