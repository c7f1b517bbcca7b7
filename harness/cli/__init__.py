"""The ``brainharness`` command line.

Errors the user can fix (bad config, unknown plugin, missing file) end with one line on
stderr and exit status 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path

from brainharness import registry
from brainharness.cache import SUBDIRS, cache_root
from brainharness.capabilities import describe_provides
from brainharness.errors import HarnessError
from brainharness.params import param_lines

from .results import add_parser as add_results_parser


def _demo_config() -> dict:
    import yaml

    return yaml.safe_load(resources.files("brainharness.configs").joinpath("demo.yaml").read_text())


def cmd_list(args) -> int:
    reg = registry.REGISTRIES[args.kind]
    for name in reg.names():
        obj = reg.get(name)
        if args.kind in ("backbones", "tasks"):
            meta = obj.describe()
        else:
            meta = {"doc": (obj.__doc__ or "").strip().split("\n")[0]}
            if args.kind == "datasets":
                meta["provides"] = describe_provides(obj.provides)
        print(name + "\t" + "\t".join(f"{k}={v}" for k, v in meta.items()))
        for line in param_lines(getattr(obj, "params", None) or {}):  # name = default, type, doc
            print(line)
    return 0


def _print_leaderboard(results_dir: Path, out_dir: Path | None) -> list:
    """Print (and write) the leaderboard; returns the store's problems, each also on stderr."""
    from brainharness.leaderboard.tables import render_all_markdown, write_leaderboard

    problems: list = []
    print(render_all_markdown(results_dir, problems))
    if out_dir is not None:
        written = write_leaderboard(results_dir, out_dir, problems=[])  # the same store: already reported
        print(f"leaderboard written to {out_dir} ({', '.join(sorted(written)) or 'no results'})")
    for p in problems:
        print(f"brainharness: warning: {p}", file=sys.stderr)
    return problems


def cmd_run(args) -> int:
    from brainharness.config import load_config
    from brainharness.runner import Runner

    from tqdm.auto import tqdm

    from .results import outcome_line

    cfg = load_config(args.config)
    if args.policy:
        cfg["policy"] = args.policy
    runner = Runner(cfg, progress=not args.quiet)
    runner.run(on_unit=lambda outcome: tqdm.write(outcome_line(outcome)))  # each unit as it ends
    counts = {s: sum(o.status == s for o in runner.outcomes) for s in ("ran", "up to date", "failed")}
    print(f"{len(runner.outcomes)} unit(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts["failed"] else 0  # DESIGN §13: 1 = some units failed


def cmd_demo(args) -> int:
    from brainharness.config import load_config
    from brainharness.runner import Runner

    from brainharness.sweeps.study import Sweep

    cfg = load_config(_demo_config())  # relative paths resolve against the current folder
    runner = Runner(cfg, progress=not args.quiet)
    runner.run()
    summary = Sweep(runner).run(progress=not args.quiet)
    print(f"sweep {summary['study']}: best of {summary['n_complete_trials']} trials on the validation part "
          f"{summary['best_params']} → {summary['main_score']} = {summary['test_score']:.2f} on test")
    _print_leaderboard(Path(cfg["results_dir"]), Path(args.out))
    return 0


def cmd_sweep(args) -> int:
    from brainharness.sweeps.study import run_sweep

    source = _demo_config() if args.config == "demo" else args.config
    print(json.dumps(run_sweep(source, progress=not args.quiet), indent=2, default=str))
    return 0


def cmd_leaderboard(args) -> int:
    problems = _print_leaderboard(Path(args.results), Path(args.out) if args.out else None)
    return 1 if problems and args.strict else 0


def cmd_cache(args) -> int:
    from brainharness.features import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.action in ("ls", "verify"):  # ls checks metadata only; verify re-hashes every block
        entries = cache.entries(verify=args.action == "verify")
        for e in entries:
            key, state = e.get("key", {}), e["state"] + (f" ({e['what']})" if e.get("what") else "")
            print(f"{e['file']}\t{e['bytes'] / 1e6:.1f} MB\t{state}\t{key.get('backbone', {}).get('backbone')}"
                  f"\tlayer={key.get('layer')}\tshape={e.get('shape')}")
        bad, aside = (sum(e["state"] == state for e in entries) for state in ("corrupt", "set aside"))
        print(f"{len(entries)} feature file(s) in {cache.root}"
              + (f", {bad} corrupt (re-extracted when next used)" if bad else "")
              + (f", {aside} set aside (`cache clear` removes them)" if aside else ""))
        return 1 if bad and args.action == "verify" else 0
    elif args.part == "features":
        print(f"removed {cache.clear()} file(s) from {cache.root}")
    else:  # other cached artefacts (trained captioners, text embeddings, datasets …): whole folders
        import shutil

        root = cache_root(args.cache_dir)
        parts = [p for p in sorted(root.iterdir()) if p.is_dir()] if args.part == "all" and root.exists() \
            else [root / args.part]
        for part in parts:
            n = sum(1 for _ in part.rglob("*") if _.is_file()) if part.exists() else 0
            shutil.rmtree(part, ignore_errors=True)
            print(f"removed {n} file(s) from {part}")
    return 0


def cmd_data(args) -> int:
    from brainharness.datasets.datacheck import check_path, format_report

    report = check_path(args.path)
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0 if report.get("ok", True) else 1


def cmd_selftest(args) -> int:
    from .selftest import run_selftest

    result = run_selftest(progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        for name, c in result["checks"].items():
            print(f"{'ok  ' if c['ok'] else 'FAIL'} {name} = {c['value']:.4g} (require {c['require']})")
        print(f"selftest {'passed' if result['passed'] else 'FAILED'} in {result['seconds']} s")
    return 0 if result["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainharness", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run every (subject, backbone, task) of a config")
    s.add_argument("config")
    s.add_argument("--policy", choices=["skip-existing", "overwrite", "only-missing"])
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("demo", help="run the embedded demo on synthetic data and print the leaderboard")
    s.add_argument("--out", default="leaderboard_out", help="where to write the leaderboard files")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("sweep", help="run the Optuna sweep of a config ('demo' for the embedded one)")
    s.add_argument("config")
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("leaderboard", help="tables from the results store")
    s.add_argument("--results", default="results")
    s.add_argument("--out", help="write <task>.md/.csv/.tex and index.html here")
    s.add_argument("--strict", action="store_true", help="exit 1 if any record or sidecar of the store is broken")
    s.set_defaults(fn=cmd_leaderboard)

    add_results_parser(sub)

    s = sub.add_parser("list", help="list registered plugins")
    s.add_argument("kind", choices=registry.KINDS)
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("cache", help="inspect (ls), check every checksum (verify; exit 1 if corrupt) or clear the "
                                     "feature cache (clear PART: other cached artefacts)")
    s.add_argument("action", choices=["ls", "verify", "clear"])
    s.add_argument("part", nargs="?", default="features",
                   choices=[*SUBDIRS, "all"],
                   help="what `clear` removes (default: features; all = every folder of the cache)")
    s.add_argument("--cache-dir", help="cache root (default: $BRAINHARNESS_CACHE, else ~/.cache/brainharness)")
    s.set_defaults(fn=cmd_cache)

    s = sub.add_parser("data", help="inspect a dataset folder: layout found, sizes, problems")
    s.add_argument("action", choices=["check"])
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_data)

    s = sub.add_parser("selftest", help="check the installation against known synthetic truth")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_selftest)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "quiet", False):  # the model libraries' own bars too (read when they are imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return args.fn(args)
    except HarnessError as e:
        if args.debug:
            raise
        print(f"brainharness: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("brainharness: interrupted (completed results are kept; re-run to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `brainharness list tasks | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


