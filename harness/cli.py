"""The ``nvfp4-harness`` command line.

  nvfp4-harness backends [--mutants] [--json]       every backend, available or not, and why
  nvfp4-harness fuzz [options]                      the main job: property suite + HTML report
  nvfp4-harness replay CASE.json [--backend NAME]   rebuild a case bit for bit and diagnose it
  nvfp4-harness promote CASE.json --name N          copy a case into regressions/
  nvfp4-harness report RESULTS_DIR -o FILE          render the HTML report
  nvfp4-harness selftest                            prove the oracle against planted bugs
  nvfp4-harness record-verified RESULTS_DIR         record where each backend computed (bench/verified.json)
  nvfp4-harness sanitize [CASES|DIRS] [--sample N]  rerun cases under compute-sanitizer
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VERIFIED = REPO_ROOT / "bench" / "verified.json"


class UsageError(Exception):
    """A bad argument: printed as ``nvfp4-harness: error: ...`` with exit status 2."""


def positive_int(text: str) -> int:
    """argparse type (the CLI and the pytest plugin's options): an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type (the CLI and the pytest plugin's options): a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _workers(text: str) -> str:
    """``-n``: ``auto`` or a worker count >= 0 (0: no xdist, everything in this process)."""
    if text == "auto" or (text.isdigit() and int(text) >= 0):
        return text
    raise argparse.ArgumentTypeError(f"expected 'auto' or a number of workers >= 0, got {text!r}")


def _user_path(text: str | Path) -> Path:
    """A path the user typed, resolved against the working directory the command was started in."""
    return Path(os.path.abspath(os.path.expanduser(str(text))))


def _plugin_spec(spec: str) -> str:
    """A plugin file named relative to the user's working directory, made absolute (module names
    are kept as they are)."""
    return str(_user_path(spec)) if spec.endswith(".py") or Path(spec).exists() else spec


def _load_plugins(specs: list[str]) -> None:
    from harness.backends import registry

    for spec in specs or []:
        registry.load_plugin(spec)


# ----------------------------------------------------------------------------------------------
def cmd_backends(args) -> int:
    from harness import env
    from harness.backends import registry

    from harness import verified

    from harness.grouped import registry as grouped_registry

    _load_plugins(args.plugin)
    e = env.current()
    record = verified.load(args.verified)
    rows = []
    for b in [*registry.all_backends(include_mutants=args.mutants),
              *grouped_registry.all_backends(include_mutants=args.mutants)]:
        s = b.support(e)
        rows.append({**b.describe(), **({"quantizes": bool(b.quantizes)} if b.level == "grouped" else {}),
                     "available": bool(s), "reason": s.reason,
                     "verified": [x.to_dict() for x in record.get(b.name, [])],
                     "ever_computed": verified.ever_computed(b.name, record),
                     "verified_summary": verified.describe(b.name, record)})
    if args.json:
        print(json.dumps({"environment": e.to_dict(), "backends": rows,
                          "load_errors": registry.load_errors()}, indent=2))
        return 0
    print(f"environment: {e.summary()}")
    for level in ("gemm", "linear", "quantizer", "checkpoint", "grouped"):
        sel = [r for r in rows if r["level"] == level]
        if not sel:
            continue
        print(f"\n{level}-level backends")
        print(_backend_table(sel, level))
    errs = registry.load_errors()
    for mod, err in errs.items():
        print(f"\nwarning: {mod}: {err}", file=sys.stderr)
    return 0


def _backend_table(rows: list[dict], level: str) -> str:
    """One aligned table: a header row, then one row per backend (the reason column is last and
    free-running)."""
    if level in ("quantizer", "checkpoint"):
        head = ("backend", "runs", "scale layout", "reason")
        body = [(r["name"], "yes" if r["available"] else "no", "/".join(r["a_layouts"]), r["reason"]) for r in rows]
    elif level == "grouped":  # MoE: one grouped activation buffer, per-expert weights
        head = ("backend", "runs", "quantizes", "A scales", "W scales", "N align", "K align", "reason")
        body = [(r["name"], "yes" if r["available"] else "no", "yes" if r.get("quantizes") else "no",
                 "/".join(r["a_layouts"]), r["w_layout"], str(r["n_align"]), str(r["k_align"]), r["reason"])
                for r in rows]
    else:
        head = ("backend", "runs", "A scales", "W scales", "N align", "K align", "m max", "reason")
        body = [(r["name"], "yes" if r["available"] else "no", "/".join(r["a_layouts"]), r["w_layout"],
                 str(r["n_align"]), str(r["k_align"]), str(r["m_max"]) if r["m_max"] else "-", r["reason"])
                for r in rows]
    widths = [max(len(str(x[i])) for x in (head, *body)) for i in range(len(head) - 1)]
    lines = []
    for i, row in enumerate((head, *body)):
        cells = [f"{str(c):<{w}}" for c, w in zip(row, widths)] + [str(row[-1])]
        lines.append(("  " + "  ".join(cells)).rstrip())
        r = rows[i - 1] if i else None
        if r is not None and r.get("verified_summary") and not r["name"].startswith("mutant-"):
            lines.append(" " * (4 + widths[0]) + r["verified_summary"])  # under the "runs" column
    return "\n".join(lines)


def _properties_dir() -> Path:
    d = REPO_ROOT / "properties"
    if not d.is_dir():
        raise UsageError(f"the property suite folder {d} is missing: run the fuzz job from a checkout of "
                         f"nvfp4-harness (pip install -e .)")
    return d


def _check_selection(args) -> None:
    """Unknown names, and a backend/property selection that leaves nothing to run, are usage errors."""
    from harness.backends import registry
    from harness.grouped import registry as grouped_registry
    from harness.trial import all_properties, properties_for, selection_group

    backends = None
    if args.backends not in ("all", "mutants"):
        names = [n.strip() for n in args.backends.split(",") if n.strip()]
        if not names:
            raise UsageError(f"--backends {args.backends!r}: expected comma-separated backend names, 'all' or 'mutants'")
        backends = [grouped_registry.get_any(n) for n in names]  # GEMM-level, linear, ... and grouped
    if args.properties == "all":
        return
    wanted = [p.strip() for p in args.properties.split(",") if p.strip()]
    for p in wanted or [args.properties]:
        if p not in all_properties():
            raise UsageError(f"--properties: unknown property {p!r}; expected some of {list(all_properties())}")
    pool = backends if backends is not None else \
        registry.all_backends(include_mutants=args.backends == "mutants") + \
        ([] if args.backends == "mutants" else grouped_registry.all_backends())
    pool = [b for b in pool if b.mutant] if args.backends == "mutants" else pool
    if not any(p in properties_for(b) for b in pool for p in wanted):
        by_group = {}
        for b in pool:
            by_group.setdefault(selection_group(b), properties_for(b))
        raise UsageError(f"--properties {args.properties!r} applies to none of the selected backends "
                         f"({', '.join(b.name for b in pool)}); their properties are: "
                         + "; ".join(f"{g}: {', '.join(ps)}" for g, ps in by_group.items()))


def user_command(argv: list[str] | None) -> str:
    """What the user typed, as one shell line (shown in the report's "command" row)."""
    return shlex.join(["nvfp4-harness", *(sys.argv[1:] if argv is None else argv)])


def cmd_fuzz(args) -> int:
    from harness import results as results_mod

    _load_plugins(args.plugin)
    _check_selection(args)
    root = _user_path(args.results)
    report = _user_path(args.report)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--results {args.results!r} is a file: expected a results folder")
    run_id = results_mod.new_run_id()
    run_dir = root / run_id
    cmd = [sys.executable, "-m", "pytest", str(_properties_dir()), "-p", "no:cacheprovider", "-q",
           "--nvfp4-results", str(root), "--nvfp4-run-id", run_id, "--nvfp4-profile", args.profile,
           "--nvfp4-backends", args.backends, "--nvfp4-properties", args.properties]
    if args.workers != "0":
        cmd += ["-n", args.workers]
    if args.budget:
        cmd += ["--nvfp4-budget", str(args.budget)]
    if args.examples:
        cmd += ["--nvfp4-examples", str(args.examples)]
    for spec in args.plugin or []:
        cmd += ["--nvfp4-plugin", _plugin_spec(spec)]
    cmd += ["--nvfp4-shard", args.shard] if args.shard else []
    cmd += ["--nvfp4-redis", args.redis] if args.redis else []
    print(f"run directory: {run_dir}", flush=True)
    env = {**os.environ, "NVFP4_HARNESS_FROM_CLI": "1", "NVFP4_HARNESS_COMMAND": args.command_line}
    from harness.campaign import call_interruptible

    # Ctrl-C / SIGTERM: the campaign stops after the running examples, then the report is rendered;
    # the user's working directory: relative paths (.hypothesis/, plugins) mean what they typed
    rc, interrupted = call_interruptible(cmd, env=env)
    from harness.report import render_report

    if run_dir.is_dir() and any(run_dir.glob("results-*.jsonl")):
        results_mod.finalize(run_dir)
        out = render_report(run_dir, report)
        print(f"report: {out}")
    else:
        print(f"nvfp4-harness: error: no results were recorded in {run_dir} (pytest exit status {rc})",
              file=sys.stderr)
        return rc or 1
    if interrupted:  # stopped by the user or the system: the report holds what ran; say so in the status
        print("nvfp4-harness: interrupted: the report shows the cases recorded until then", file=sys.stderr)
        return 128 + interrupted
    # pytest: 0 all passed, 1 some failed; both mean the job ran. Anything else is an error.
    return rc


def cmd_replay(args) -> int:
    from harness.replay import replay

    _load_plugins(args.plugin)
    if args.sanitize:
        from harness.sanitizer.run import replay_command_line

        return replay_command_line(args.case, backend=args.backend, tool=args.tool, sanitizer=args.sanitizer)
    r = replay(_user_path(args.case), backend=args.backend)
    print(r.diagnosis())
    return r.exit_code


def cmd_promote(args) -> int:
    from harness.replay import promote

    path = promote(args.case, name=args.name, note=args.note, expect=args.expect, tracks=args.tracks,
                   dest=_user_path(args.dest) if args.dest else None, force=args.force)
    print(f"promoted to {path}")
    return 0


def _not_a_folder(given, expected: str) -> str:
    """RESULTS_DIR ``given`` is no folder: the one-line error (missing, or a file: a case file replays)."""
    path = _user_path(str(given))
    if not path.is_file():
        return f"RESULTS_DIR {str(given)!r}: no such directory ({expected})"
    hint = "; a case file runs with `nvfp4-harness replay`" if path.suffix == ".json" else ""
    return f"RESULTS_DIR {str(given)!r}: a file, not a folder: {expected}{hint}"


def cmd_report(args) -> int:
    from harness.results import resolve_run_dir
    from harness.report import render_report

    dirs = []
    for given in args.results_dir:
        try:
            dirs.append(resolve_run_dir(_user_path(given)))
        except FileNotFoundError:
            raise UsageError(_not_a_folder(given, "expected the folder a fuzz run wrote")) from None
        except ValueError as exc:
            raise UsageError(f"RESULTS_DIR {given!r}: {exc}") from None
    if len(dirs) > 1:  # several nodes of one campaign: one report of their merged results
        from harness.campaign import merge_results
        from harness.results import finalize

        merged = _user_path(args.merged) if args.merged else _user_path(args.output).with_suffix(".results")
        d = merge_results(dirs, merged)
        finalize(d)
        print(f"merged results of {len(dirs)} directories: {d}")
    else:
        d = dirs[0]
    out = render_report(d, _user_path(args.output))
    print(f"report of {d}: {out}")
    return 0


def cmd_sanitize(args) -> int:
    from harness.sanitizer.run import command

    _load_plugins(args.plugin)
    return command(args.targets, sample=args.sample, backends=args.backends, seed=args.seed,
                   tools=args.tool or None, results=args.results, sanitizer=args.sanitizer,
                   timeout_s=args.timeout, run_selftest=args.selftest, plugins=args.plugin)


def cmd_selftest(args) -> int:
    from harness.selftest import main as selftest_main

    return selftest_main(budget_s=args.budget, examples=args.examples, mutants=args.mutant,
                         json_out=_user_path(args.json) if args.json else None)


def cmd_record_verified(args) -> int:
    from harness import verified

    d = Path(args.results_dir)
    if not d.is_dir():
        raise UsageError(_not_a_folder(d, "expected the folder a fuzz or test run wrote"))
    new = verified.update_from_results(d, args.file, source=args.source)
    if not new:
        print(f"{d}: no backend computed a case in this run; {args.file} left as it was")
        return 0
    for name, entry in sorted(new.items()):
        print(f"{name}: {entry.describe()}")
    print(f"recorded {len(new)} backends in {args.file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nvfp4-harness", description=(
        "Correctness fuzzing and regression harness for NVFP4 GEMM backends: odd shapes, TP splits and "
        "poisoned padding against an exact reference."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    b = sub.add_parser("backends", help="list every backend: available or not, and why")
    b.add_argument("--mutants", action="store_true", help="include the planted-bug backends")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.add_argument("--plugin", action="append", default=[], help="backend plugin module or .py file")
    b.add_argument("--verified", default=str(DEFAULT_VERIFIED), help="verification record (default: %(default)s)")
    b.set_defaults(func=cmd_backends)

    f = sub.add_parser("fuzz", help="run the property suite (pytest -n) and write the HTML report")
    f.add_argument("--backends", default="all", help="comma-separated names, 'all' or 'mutants'")
    f.add_argument("--properties", default="all", help="comma-separated property names or 'all'")
    f.add_argument("--profile", default="fuzz", choices=("ci", "fuzz", "replay"))
    f.add_argument("--examples", type=positive_int, default=None, help="max Hypothesis examples per test")
    f.add_argument("--budget", type=positive_seconds, default=None,
                   help="time budget in seconds, checked before every example")
    f.add_argument("--results", default="results",
                   help="results root: this run writes RESULTS/<run-id>/ and points RESULTS/latest at it "
                        "(default: results)")
    f.add_argument("--report", default="reports/index.html", help="HTML report path")
    f.add_argument("-n", "--workers", default="auto", type=_workers,
                   help="xdist workers: auto (one per GPU / core), N, or 0")
    f.add_argument("--plugin", action="append", default=[], help="backend plugin module or .py file")
    f.add_argument("--shard", default=None,
                   help="i/N: this node's share of the (backend, property) pairs of an N-node campaign")
    f.add_argument("--redis", default=None,
                   help="redis://HOST:PORT/DB: example database shared by every node (plus the local one)")
    f.set_defaults(func=cmd_fuzz)

    r = sub.add_parser("replay", help="rebuild a case bit for bit, rerun it and diagnose")
    r.add_argument("case", help="case file (JSON)")
    r.add_argument("--backend", default=None, help="run the case on another backend")
    r.add_argument("--plugin", action="append", default=[], help="backend plugin module or .py file")
    r.add_argument("--sanitize", action="store_true", help="rerun it under compute-sanitizer instead")
    r.add_argument("--tool", default="memcheck", choices=("memcheck", "initcheck", "racecheck"),
                   help="compute-sanitizer tool for --sanitize (default memcheck)")
    r.add_argument("--sanitizer", default=None, help="path of compute-sanitizer (default: PATH, CUDA_HOME)")
    r.set_defaults(func=cmd_replay)

    sz = sub.add_parser("sanitize", help="rerun cases under compute-sanitizer (padding left unwritten)")
    sz.add_argument("targets", nargs="*", help="case files or directories of case files (e.g. regressions/cases)")
    sz.add_argument("--sample", type=int, default=0, help="also draw N cases per backend from the strategies")
    sz.add_argument("--backends", default="all", help="for --sample: comma-separated names, 'all' (those that "
                                                      "run here) or 'mutants' (the sanitizer-only mutants)")
    sz.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")
    sz.add_argument("--tool", action="append", choices=("memcheck", "initcheck", "racecheck"),
                    help="compute-sanitizer tool (repeatable; default memcheck)")
    sz.add_argument("--results", default="results/sanitizer", help="results directory (default results/sanitizer)")
    sz.add_argument("--sanitizer", default=None, help="path of compute-sanitizer (default: PATH, CUDA_HOME)")
    sz.add_argument("--timeout", type=float, default=600.0, help="seconds per case and tool (default 600)")
    sz.add_argument("--selftest", action="store_true", help="check that each sanitizer-only mutant is caught")
    sz.add_argument("--plugin", action="append", default=[], help="backend plugin module or .py file")
    sz.set_defaults(func=cmd_sanitize)

    pr = sub.add_parser("promote", help="copy a case into the regression corpus")
    pr.add_argument("case")
    pr.add_argument("--name", default=None, help="file name in regressions/cases (default: the case id)")
    pr.add_argument("--note", default=None)
    pr.add_argument("--expect", default="xfail", choices=("pass", "xfail"),
                    help="xfail: known failing (tracks an upstream issue); pass: must pass")
    pr.add_argument("--tracks", default=None, help="upstream issue the known failure tracks")
    pr.add_argument("--force", action="store_true", help="replace a regression case of the same --name")
    pr.add_argument("--dest", default=None, help=argparse.SUPPRESS)
    pr.set_defaults(func=cmd_promote)

    rep = sub.add_parser("report", help="render the HTML report of a run directory")
    rep.add_argument("results_dir", nargs="+",
                     help="a run directory, or a results root (its latest run); several (one per node of a "
                          "campaign) are merged into one report")
    rep.add_argument("-o", "--output", default="reports/index.html")
    rep.add_argument("--merged", default=None,
                     help="where the merged results of several directories go (default: OUTPUT's name with .results)")
    rep.set_defaults(func=cmd_report)

    s = sub.add_parser("selftest", help="run the property suite against every planted-bug backend")
    s.add_argument("--budget", type=positive_seconds, default=60.0, help="seconds allowed per mutant (default 60)")
    s.add_argument("--examples", type=positive_int, default=200, help="max examples per mutant and property")
    s.add_argument("--mutant", action="append", default=None, help="only this mutant (repeatable)")
    s.add_argument("--json", default=None, help="also write the scoreboard as JSON here")
    s.set_defaults(func=cmd_selftest)

    v = sub.add_parser("record-verified", help="record where each backend computed, from a results directory")
    v.add_argument("results_dir", help="results directory of a fuzz or test run (session.json, results-*.jsonl)")
    v.add_argument("--file", default=str(DEFAULT_VERIFIED), help="verification record (default: %(default)s)")
    v.add_argument("--source", default=None, help="where the evidence is kept (default: the directory's name and date)")
    v.set_defaults(func=cmd_record_verified)
    return p


#: Set to ``1`` to see the optional libraries' import-time notices on stderr (hidden by default).
SHOW_LIBRARY_NOTICES_ENV = "NVFP4_SHOW_LIBRARY_NOTICES"

#: Loggers whose WARNING records, printed while an optional library is imported, say nothing about the
#: NVFP4 code the harness tests: torchao logs each of its compiled extensions built for another GPU or
#: CUDA version that it skips (``torchao/__init__.py``), and torch's pytree module logs a deprecation
#: that torchao's own enum registrations trigger.
LIBRARY_NOTICE_LOGGERS = ("torchao", "torch.utils._pytree")

#: Modules whose UserWarnings at import are notices of the same kind (ModelOpt warns when the installed
#: transformers is newer than it was tested with; the harness does not use its Hugging Face support).
LIBRARY_NOTICE_MODULES = r"(torchao|modelopt)(\.|$)"


def quiet_library_notices(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> bool:
    """Keep the optional libraries' import-time notices off the command's stderr: the loggers in
    :data:`LIBRARY_NOTICE_LOGGERS` report ERROR and above only, and UserWarnings raised from the
    modules matching :data:`LIBRARY_NOTICE_MODULES` are ignored.  Errors still print, and a library
    that fails to import still makes its backends unavailable with the reason.  Returns False and
    changes nothing when ``NVFP4_SHOW_LIBRARY_NOTICES`` is set to anything but ``0``."""
    if environ.get(SHOW_LIBRARY_NOTICES_ENV, "").strip() not in ("", "0"):
        return False
    for name in LIBRARY_NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=LIBRARY_NOTICE_MODULES)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = user_command(argv)
    quiet_library_notices()
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        parser.exit(2, f"nvfp4-harness: error: {exc}\n")
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        from harness.backends.registry import PluginError, UnknownBackendError
        from harness.cases import CaseFileError

        if isinstance(exc, (CaseFileError, UnknownBackendError, PluginError, ValueError, FileNotFoundError)):
            parser.exit(2, f"nvfp4-harness: error: {exc}\n")
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
