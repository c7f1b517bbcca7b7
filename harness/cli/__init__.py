"""The ``brainharness`` command line.

Errors the user can fix (bad config, unknown plugin, missing file, bad data, a usage mistake)
end with one line on stderr and exit status 2; ``--debug`` shows the traceback instead.
``run``, ``sweep`` and ``demo`` print each unit's result as it ends (:mod:`.terminal`).

Exit codes (every command):
  0    done: every unit ran or was up to date, the check found nothing wrong
  1    some units failed (each named on its line; the others still ran), or a check found
       damage (leaderboard --strict, results check, cache verify, selftest); also an
       unexpected internal error (one line; --debug shows its traceback)
  2    usage, config or data error: one line naming the problem, before any compute
       (data check: the folder has problems, each named in the report)
  130  interrupted (Ctrl-C): completed units are kept; re-run to resume

-q and --debug may come before or after the sub-command.
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

from .launch import add_options as add_launcher_options
from .launch import check_flags as check_launcher_flags
from .launch import cmd_status
from .results import add_parser as add_results_parser
from .terminal import counts_line, leaderboard_command, print_outcome, sweep_line, where_lines

EXIT_CODES = __doc__[__doc__.index("Exit codes"):]


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

    check_launcher_flags(args)
    cfg = load_config(args.config)
    if args.policy:
        cfg["policy"] = args.policy
    if args.launcher == "slurm":
        from .launch import run_on_slurm

        return run_on_slurm(cfg, args)
    runner = Runner(cfg, progress=not args.quiet)
    runner.run(on_unit=print_outcome)  # each unit's line as it ends
    print(counts_line(runner.outcomes))
    print("\n".join(where_lines(runner.outcomes, cfg["results_dir"])))
    return 1 if any(o.status == "failed" for o in runner.outcomes) else 0


def cmd_demo(args) -> int:
    from brainharness.config import load_config
    from brainharness.leaderboard.tables import check_out_dir
    from brainharness.runner import Runner
    from brainharness.sweeps.study import Sweep

    out = check_out_dir(args.out)  # before any compute
    cfg = load_config(_demo_config())  # relative paths resolve against the current folder
    runner = Runner(cfg, progress=not args.quiet)
    runner.run(on_unit=print_outcome)
    outcomes = list(runner.outcomes)
    summary = Sweep(runner).run(progress=not args.quiet, on_unit=lambda o: (outcomes.append(o), print_outcome(o)))
    print(sweep_line(summary))
    _print_leaderboard(Path(cfg["results_dir"]), out)
    print(counts_line(outcomes))
    print(f"records: {cfg['results_dir']}\nnext: open {out / 'index.html'}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cmd_sweep(args) -> int:
    from brainharness.config import load_config
    from brainharness.sweeps.study import run_sweep

    check_launcher_flags(args)
    cfg = load_config(_demo_config() if args.config == "demo" else args.config)
    if args.status or args.workers != 1 or args.launcher == "slurm":
        from brainharness.sweeps.launch import start_workers

        return start_workers(cfg, args)
    summary = run_sweep(cfg, progress=not args.quiet, on_unit=None if args.json else print_outcome,
                        resume_anyway=args.resume_anyway)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    results_dir = cfg["results_dir"]
    print(sweep_line(summary))
    print(f"records: {results_dir} (study {summary['storage']})")
    print(f"next: {leaderboard_command(results_dir)}")
    return 0


def cmd_leaderboard(args) -> int:
    from brainharness.leaderboard.tables import check_out_dir

    from .results import store_root

    results, out = store_root(args.results), check_out_dir(args.out) if args.out else None  # before any output
    problems = _print_leaderboard(results, out)
    return 1 if problems and args.strict else 0


def cmd_cache(args) -> int:
    from brainharness.features import FeatureCache

    if cache_root(args.cache_dir).is_file():
        raise HarnessError(f"--cache-dir {cache_root(args.cache_dir)} is a file, not a folder")
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
    return 0 if report.get("ok", True) else 2  # problems with the data: a data error


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


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` shows the usage)\n")


class _Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def version_text() -> str:
    """``brainharness 0.1.0 (git 0123456789ab, modified), python 3.11.7, torch 2.4.0``: torch's
    version is read from its metadata (importing torch takes seconds)."""
    from brainharness.provenance import code_identity, package_versions

    versions = package_versions()
    text = f"brainharness {versions.get('brainharness') or '(not installed)'}"
    code = code_identity() if (Path(__file__).resolve().parents[2] / ".git").exists() else {}  # a checkout
    if code.get("git_commit"):
        text += f" (git {code['git_commit'][:12]}{', modified' if code.get('git_dirty') else ''})"
    text += f", python {sys.version.split()[0]}"
    torch = sys.modules.get("torch")
    torch_version = getattr(torch, "__version__", None) or versions.get("torch")
    return text + (f", torch {torch_version}" if torch_version else "")


def _global_options(parser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="brainharness", description=__doc__.split("\n")[0], epilog=EXIT_CODES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_Version, help="the version (and git commit of a checkout), python, torch")
    _global_options(p, default=False)
    common = _Parser(add_help=False)  # the same options after the sub-command; unset there, they keep the above
    _global_options(common, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    s = add("run", help="run every (subject, backbone, task) of a config")
    s.add_argument("config")
    s.add_argument("--policy", choices=["skip-existing", "overwrite", "only-missing"])
    add_launcher_options(s, "units")
    s.set_defaults(fn=cmd_run)

    s = add("status", help="each unit of a config: done, pending, running (job id), failed or missing")
    s.add_argument("config")
    s.set_defaults(fn=cmd_status)

    s = add("demo", help="run the embedded demo on synthetic data and print the leaderboard")
    s.add_argument("--out", default="leaderboard_out", help="where to write the leaderboard files")
    s.set_defaults(fn=cmd_demo)

    s = add("sweep", help="run the Optuna sweep of a config ('demo' for the embedded one)")
    s.add_argument("config")
    s.add_argument("--json", action="store_true", help="print the summary as one JSON object instead of lines")
    s.add_argument("--resume-anyway", action="store_true",
                   help="the study's search space changed: keep its trials and sample the new space")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N local worker processes on the study (n_trials counts for all of them)")
    s.add_argument("--status", action="store_true", help="show the study's trials by state; run nothing")
    add_launcher_options(s, "workers")
    s.set_defaults(fn=cmd_sweep)

    s = add("leaderboard", help="tables from the results store")
    s.add_argument("--results", default="results")
    s.add_argument("--out", help="write <task>.md/.csv/.tex and index.html here")
    s.add_argument("--strict", action="store_true", help="exit 1 if any record or sidecar of the store is broken")
    s.set_defaults(fn=cmd_leaderboard)

    add_results_parser(sub, parents=[common])

    s = add("list", help="list registered plugins")
    s.add_argument("kind", choices=registry.KINDS)
    s.set_defaults(fn=cmd_list)

    s = add("cache", help="inspect (ls), check every checksum (verify; exit 1 if corrupt) or clear the "
                                     "feature cache (clear PART: other cached artefacts)")
    s.add_argument("action", choices=["ls", "verify", "clear"])
    s.add_argument("part", nargs="?", default="features",
                   choices=[*SUBDIRS, "all"],
                   help="what `clear` removes (default: features; all = every folder of the cache)")
    s.add_argument("--cache-dir", help="cache root (default: $BRAINHARNESS_CACHE, else ~/.cache/brainharness)")
    s.set_defaults(fn=cmd_cache)

    s = add("data", help="inspect a dataset folder: layout found, sizes, problems")
    s.add_argument("action", choices=["check"])
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_data)

    s = add("selftest", help="check the installation against known synthetic truth")
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
    except OSError as e:  # after BrokenPipeError (an OSError too): disk full, quota, read-only file system
        from brainharness.preflight import write_error

        line = write_error(e)
        if line is None or args.debug:
            raise
        print(f"brainharness: error: {line}", file=sys.stderr)
        return 2
    except Exception as e:  # not the input's fault: a bug or the machine (exit table: 1); one line all the same
        if args.debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"brainharness: error: {type(e).__name__}: {first} (unexpected: --debug shows the traceback)",
              file=sys.stderr)
        return 1


