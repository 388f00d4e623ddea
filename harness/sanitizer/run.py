"""Running cases under compute-sanitizer: the tool, the child process, classification, choosing
cases, records and case files, the self-test of the mutants only this oracle catches, the command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from harness.sanitizer.findings import LINE_PREFIX, TOOLS, Finding, merge_reports, parse_text, parse_xml
from harness.sanitizer.operands import group_findings, locate

REPO_ROOT = Path(__file__).resolve().parents[2]
PRINT_LIMIT = 200
"""Errors the sanitizer prints per run (``--print-limit``); the rest are only counted."""


class SanitizerUnavailable(Exception):
    """compute-sanitizer cannot run here (no tool, no GPU): the message says why."""


def find_sanitizer(explicit: str | None = None) -> str:
    """Path of the compute-sanitizer executable: ``explicit``, then PATH, ``$CUDA_HOME/bin``,
    ``/usr/local/cuda/bin``.  Raises :class:`SanitizerUnavailable` naming where it looked."""
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise SanitizerUnavailable(f"--sanitizer={explicit!r}: no such executable")
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    looked = ["PATH"]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            cand = os.path.join(home, "bin", "compute-sanitizer")
            looked.append(os.path.dirname(cand))
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    raise SanitizerUnavailable("compute-sanitizer not found (looked in " + ", ".join(looked) +
                               "); it ships with the CUDA toolkit, or pass --sanitizer PATH")


def check_available(sanitizer: str | None = None) -> str:
    """The sanitizer's path, after checking that a CUDA GPU is visible (compute kernels run under
    the Triton interpreter on the CPU, where there is nothing to sanitize)."""
    from harness import env

    path = find_sanitizer(sanitizer)
    e = env.current()
    if e.device != "cuda":
        raise SanitizerUnavailable(f"compute-sanitizer needs a CUDA GPU; this machine has none ({e.summary()})")
    return path


@dataclass
class SanitizeResult:
    """One trial under one tool: the outcome (``pass``/``fail``/``skip``/``crash``) and its reason,
    the grouped findings, the tool's error count, seconds, the child's last status and output."""
    trial: Any                      # harness.trial.Trial
    tool: str
    status: Literal["pass", "fail", "skip", "crash"]
    reason: str
    findings: list[Finding] = field(default_factory=list)
    error_count: int | None = None
    duration_s: float = 0.0
    child_status: str | None = None
    output_tail: str = ""

    def measure(self) -> dict:
        return {"oracle": "compute-sanitizer", "tool": self.tool, "error_count": self.error_count,
                "child_status": self.child_status, "findings": [f.to_dict() for f in self.findings]}


def sanitize_trial(trial, tool: str = "memcheck", *, sanitizer: str | None = None, timeout_s: float = 600.0,
                   plugins: Iterable[str] = (), keep_dir: Path | None = None) -> SanitizeResult:
    """Run ``trial`` (a :class:`~harness.trial.Trial` or a grouped / fused-MoE
    :class:`~harness.grouped.problem.GroupedTrial`) once under ``compute-sanitizer --tool TOOL`` in a
    child process and classify.

    Raises ``ValueError`` for an unknown tool; never raises for what happens in the child.
    """
    if tool not in TOOLS:
        raise ValueError(f"--tool={tool!r}: expected one of {list(TOOLS)}")
    from harness import env
    from harness.grouped.registry import get_any

    t0 = time.perf_counter()

    def done(status, reason, **kw) -> SanitizeResult:
        return SanitizeResult(trial, tool, status, reason, duration_s=round(time.perf_counter() - t0, 3), **kw)

    try:
        path = check_available(sanitizer)
    except SanitizerUnavailable as exc:
        return done("skip", str(exc))
    backend = get_any(trial.backend)
    sup = backend.support(env.current())
    if not sup:
        return done("skip", sup.reason)
    work = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="nvfp4-sanitize-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        spec, amap, xml = work / "trial.json", work / "operands.json", work / f"{tool}.xml"
        # the child runs from the repository root: plugin files are passed by absolute path
        plugins = [str(Path(p).resolve()) if Path(p).is_file() else p for p in plugins]
        spec.write_text(json.dumps({"trial": trial.to_dict(), "plugins": plugins}))
        cmd = [path, "--tool", tool, "--print-limit", str(PRINT_LIMIT), "--show-backtrace", "no",
               "--xml", "--save", str(xml), sys.executable, "-m", "harness.sanitizer", "child", str(spec), str(amap)]
        child_env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
        child_env.pop("TRITON_INTERPRET", None)
        child_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in
                                                   child_env.get("PYTHONPATH", "").split(os.pathsep) if p])
        # its own process group: on a timeout the sanitizer and the process it runs end together
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env,
                                cwd=str(REPO_ROOT), start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return done("crash", f"timed out after {timeout_s:.0f} s under compute-sanitizer --tool {tool}",
                        output_tail=(out or "")[-4000:])
        result = classify(tool, out, xml.read_text(errors="replace") if xml.exists() else None,
                          json.loads(amap.read_text()) if amap.exists() else None)
    finally:
        if keep_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    result.trial = trial
    result.duration_s = round(time.perf_counter() - t0, 3)
    result.output_tail = out[-4000:]
    return result


def _refusal(rep, output: str, operand_map: dict | None) -> str | None:
    """The tool's own words when it refused to run the case: an ``Error:`` line of the sanitizer
    while the child did not finish, or, when the child never started (no operand map and no Python
    traceback), the sanitizer's last line naming an error."""
    if operand_map is not None and operand_map.get("status") == "done":
        return None
    if rep.refusals:
        return rep.refusals[0]
    if operand_map is None and "Traceback" not in output:
        said = [ln.removeprefix(LINE_PREFIX).strip() for ln in output.splitlines() if "error" in ln.lower()
                and "ERROR SUMMARY" not in ln]
        if said:
            return said[-1]
    return None


def classify(tool: str, output: str, xml_text: str | None, operand_map: dict | None) -> SanitizeResult:
    """Classify one sanitizer run from what it printed, the XML it saved and the child's map."""
    text_rep = parse_text(output, tool)
    xml_rep = None
    if xml_text:
        try:
            xml_rep = parse_xml(xml_text, tool)
        except ValueError:
            xml_rep = None
    rep = merge_reports(xml_rep, text_rep)
    buffers = (operand_map or {}).get("buffers", [])
    findings = group_findings([locate(f, buffers) for f in rep.findings])
    child = (operand_map or {}).get("status")
    child_error = (operand_map or {}).get("error")
    res = SanitizeResult(None, tool, "pass", "", findings, rep.error_count, child_status=child)
    if findings:
        res.status = "fail"
        res.reason = findings[0].line() + (f" (+{len(findings) - 1} more)" if len(findings) > 1 else "")
    elif rep.error_count:
        res.status = "fail"
        res.reason = f"{tool}: ERROR SUMMARY {rep.error_count} errors, none printed as an access error: " + \
            "; ".join(rep.api_errors[:2])
    elif (refusal := _refusal(rep, output, operand_map)) is not None:
        res.status, res.reason = "skip", f"compute-sanitizer refused: {refusal}"
    elif child == "unsupported":
        res.status, res.reason = "skip", f"unsupported: {child_error}"
    elif child != "done":
        last = [ln for ln in output.strip().splitlines() if ln.strip() and not ln.startswith(LINE_PREFIX)]
        why = child_error or (last[-1] if last else "no output")
        res.status, res.reason = "crash", f"the case did not finish under compute-sanitizer ({child or 'no map'}): {why}"
    elif rep.error_count is None:
        res.status, res.reason = "crash", "compute-sanitizer printed no ERROR SUMMARY: the run did not complete"
    return res


# ----------------------------------------------------------------------------------------------
# Choosing cases, recording results
# ----------------------------------------------------------------------------------------------
def is_grouped_trial(trial) -> bool:
    from harness.grouped.problem import GroupedTrial

    return isinstance(trial, GroupedTrial)


def level_of(trial) -> str:
    """The level a trial's results are recorded under: ``grouped`` or its backend's level."""
    if is_grouped_trial(trial):
        return "grouped"
    from harness.backends import registry

    return registry.get(trial.backend).level


def load_trial(path: str | Path):
    """The trial a case file records: a grouped (MoE) case file's
    :class:`~harness.grouped.problem.GroupedTrial` or a GEMM-level case's :class:`~harness.trial.Trial`.
    Raises the case readers' one-line errors."""
    from harness.grouped.cases import is_grouped_case_file, read_case

    if is_grouped_case_file(path):
        return read_case(path).trial
    from harness.cases import load_case

    return load_case(path).trial()


def shape_of(trial) -> dict:
    """The problem's dimensions: ``m, n, k`` (GEMM level); ``tokens, experts, splits`` and ``n, k``
    (grouped) or ``hidden, intermediate`` (fused MoE)."""
    p = trial.problem
    if not is_grouped_trial(trial):
        return {"m": p.m, "n": p.n, "k": p.k}
    from harness.grouped.problem import MoeProblem

    dims = {"hidden": p.hidden, "intermediate": p.intermediate} if isinstance(p, MoeProblem) else {"n": p.n, "k": p.k}
    return {"tokens": p.tokens, "experts": p.experts, "splits": list(p.splits), **dims}


def cases_in(paths: Iterable[str | Path]) -> list[Path]:
    """Case files named directly or found (``*.json``, sorted) in the directories named."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.json") if q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{str(p)!r}: no such case file or directory")
    return out


def sample_trials(backend_names: Iterable[str], per_backend: int, seed: int) -> list:
    """``per_backend`` trials per backend drawn from the property suite's own strategies
    (:func:`harness.suite.trials`, reference_agreement / quantizer_agreement; for a grouped or
    fused-MoE backend :func:`harness.grouped.strategies.trials_for`, reference_agreement with its
    padding poison), on this device's sizes, reproducibly for ``seed``.

    Hypothesis's first draw is the simplest example (m=1, one k-block: the regression corpus has
    those); it is kept only when nothing else was drawn."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hyp_seed

    from harness import env, suite
    from harness.grouped import registry as grouped_registry
    from harness.grouped.strategies import trials_for as grouped_trials_for
    from harness.grouped.registry import get_any
    from harness.trial import properties_for

    device = env.current().device
    sizes = suite.sizes_for(device)
    trials = []
    for name in backend_names:
        b = get_any(name)
        if grouped_registry.is_grouped(name):
            strategy = grouped_trials_for(b, b.properties[0], device)
        else:
            strategy = suite.trials(b, properties_for(b)[0], sizes)
        drawn: list = []

        @hyp_seed(seed)
        @settings(max_examples=per_backend + 1, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(t) -> None:
            if len(drawn) <= per_backend and t not in drawn:
                drawn.append(t)

        collect()
        trials.extend(drawn[1:] if len(drawn) > per_backend else drawn)
    return trials


def choose_trials(targets: Iterable[str | Path] = (), *, sample: int = 0, backends: str = "all",
                  seed: int = 0) -> list[tuple[Any, str]]:
    """(trial, source) of every case file named or found in ``targets`` (GEMM-level, linear,
    quantizer and grouped / fused-MoE case files alike; source: the path), then ``sample`` trials per
    backend of ``backends`` (:func:`_backend_names`; source ``sample seed=SEED``).  Raises the case
    readers' and the registries' one-line errors."""
    chosen = [(load_trial(p), str(p)) for p in cases_in(targets)]
    if sample:
        chosen += [(t, f"sample seed={seed}") for t in sample_trials(_backend_names(backends), sample, seed)]
    return chosen


def save_finding_case(results_dir: Path, result: SanitizeResult, level: str) -> str:
    """A case file for a sanitized trial with findings; it replays with ``replay --sanitize``."""
    from harness.cases import Case, save_case
    from harness.env import current

    t = result.trial
    observed = {"summary": result.reason, "status": result.status, "oracle": "compute-sanitizer",
                "sanitizer": {"tool": result.tool, "error_count": result.error_count,
                              "findings": [f.to_dict() for f in result.findings]}}
    if is_grouped_trial(t):
        from harness.grouped.cases import GroupedCase, write_case

        gcase = GroupedCase.create(t, observed=observed, environment=current().to_dict())
        gcase.id = f"sanitize-{result.tool}-{gcase.id}"[:128]
        target = Path(results_dir) / "cases" / f"{gcase.id}.json"
        gcase.replay = sanitize_replay_command(target, result.tool)
        written = write_case(gcase, target)
        return str(Path(written).relative_to(Path(results_dir)))
    case = Case.create(backend=t.backend, level=level, property=t.property, problem=t.problem, poison=t.poison,
                       observed=observed, a_layout=t.a_layout, environment=current().to_dict(), tp=t.tp,
                       parallel=t.parallel)
    case.id = f"sanitize-{result.tool}-{case.id}"[:128]
    target = Path(results_dir) / "cases" / f"{case.id}.json"
    case.replay = sanitize_replay_command(target, result.tool)
    written = save_case(case, target)
    return str(Path(written).relative_to(Path(results_dir)))


def sanitize_replay_command(path: Path, tool: str) -> str:
    from harness.cases import replay_command

    base = replay_command(path)
    head, _, rest = base.partition(" replay ")
    return f"{head} replay --sanitize --tool {tool} {rest}" if rest else f"{base} --sanitize --tool {tool}"


def record_of(result: SanitizeResult, *, level: str, case_file: str | None, test: str) -> dict:
    """A results-stream record (docs/results-format.md): property ``sanitizer:<tool>``."""
    from harness.results import RESULT_SCHEMA, now

    t = result.trial
    place = {"a_layout": t.a_layout, "tp": t.tp, "parallel": t.parallel} if not is_grouped_trial(t) else \
        {"a_layout": None}
    return {"schema": RESULT_SCHEMA, "time": now(), "worker": "sanitizer", "test": test, "backend": t.backend,
            "level": level, "property": f"sanitizer:{result.tool}", "outcome": result.status,
            "reason": result.reason, "problem": t.problem.to_dict(), "poison": t.poison.to_dict(),
            **place, "measure": result.measure(), "duration_s": result.duration_s, "digest": None,
            "case_file": case_file}


def describe(result: SanitizeResult) -> str:
    t = result.trial
    p = t.problem
    dims = " ".join(f"{k}={v}".replace(" ", "") for k, v in shape_of(t).items())
    layout = getattr(t, "a_layout", None)
    head = (f"{result.tool:<9} {t.backend:<28} {dims} {p.out_dtype}"
            + (f" {layout}" if layout else "") + f"  {result.status.upper()} ({result.duration_s:.1f} s)")
    lines = [head]
    if result.status == "fail":
        lines += [f"    {f.line()}" for f in result.findings[:12]]
        if len(result.findings) > 12:
            lines.append(f"    ... {len(result.findings) - 12} more")
        if not result.findings:
            lines.append(f"    {result.reason}")
    elif result.status in ("skip", "crash"):
        lines.append(f"    {result.reason}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Self-test: the mutants only this oracle catches
# ----------------------------------------------------------------------------------------------
@dataclass
class SanitizerScore:
    mutant: str
    tool: str
    expected: dict
    status: str
    caught: bool
    matched: str | None
    parent: str | None
    parent_status: str | None
    reason: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.caught and self.parent_status == "pass"


def finding_matches(f: Finding, expected: dict) -> bool:
    """Whether a finding is the one a mutant declares (every key it names must agree)."""
    return all(getattr(f, k) == v for k, v in expected.items())


def selftest(mutants: list[str] | None = None, *, sanitizer: str | None = None,
             progress=None) -> list[SanitizerScore]:
    """Run each sanitizer-only mutant's declared case under its tool: the declared finding (kernel,
    access, operand, region) must be reported, and the parent backend must run the same case clean.
    Raises :class:`SanitizerUnavailable` where the sanitizer cannot run."""
    from harness.backends import registry

    check_available(sanitizer)
    names = mutants or [b.name for b in registry.all_backends(include_mutants=True)
                        if getattr(b, "oracle", "properties") == "sanitizer"]
    scores = []
    for name in names:
        m = registry.get(name)
        if getattr(m, "oracle", "properties") != "sanitizer":
            raise ValueError(f"--mutant {name!r} is not a mutant only the sanitizer catches")
        trial = m.sanitizer_trial()
        res = sanitize_trial(trial, m.sanitizer_tool, sanitizer=sanitizer)
        match = next((f for f in res.findings if finding_matches(f, m.expected_finding)), None)
        parent_res = sanitize_trial(dataclasses.replace(trial, backend=m.parent), m.sanitizer_tool, sanitizer=sanitizer)
        s = SanitizerScore(name, m.sanitizer_tool, dict(m.expected_finding), res.status, match is not None,
                           match.line() if match else None, m.parent, parent_res.status,
                           res.reason if match is None else "", round(res.duration_s + parent_res.duration_s, 2))
        scores.append(s)
        if progress:
            progress(s)
    return scores


def scoreboard(scores: list[SanitizerScore]) -> str:
    head = f"{'mutant':<36} {'tool':<9} {'caught':<7} {'parent':<6}  finding"
    lines = [head, "-" * len(head)]
    for s in scores:
        lines.append(f"{s.mutant:<36} {s.tool:<9} {'yes' if s.caught else 'NO':<7} {(s.parent_status or '-'):<6}  "
                     f"{s.matched or s.reason}")
    bad = [s.mutant for s in scores if not s.ok]
    lines += ["", f"{len(scores) - len(bad)}/{len(scores)} sanitizer-only mutants caught with a clean parent"
              + (f"; NOT: {', '.join(bad)}" if bad else "")]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line (nvfp4-harness sanitize, nvfp4-harness replay --sanitize)
# ----------------------------------------------------------------------------------------------
EXIT_FINDINGS = 1
EXIT_CANNOT_RUN = 4


def _backend_names(spec: str) -> list[str]:
    """Backend names of ``--backends``: ``all`` (every backend of every level that runs here, the
    grouped and fused-MoE ones included), ``mutants`` (the sanitizer-only mutants) or a comma list;
    an unknown name raises :class:`~harness.backends.registry.UnknownBackendError` listing both registries."""
    from harness import env
    from harness.backends import registry
    from harness.grouped import registry as grouped_registry

    if spec == "all":
        e = env.current()
        return [b.name for b in (*registry.all_backends(), *grouped_registry.all_backends()) if b.support(e)]
    if spec == "mutants":
        return [b.name for b in registry.all_backends(include_mutants=True)
                if getattr(b, "oracle", "properties") == "sanitizer"]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        grouped_registry.get_any(n)  # an unknown name fails here with the list of known ones
    return names


def command(targets: list[str], *, sample: int = 0, backends: str = "all", seed: int = 0,
            tools: list[str] | None = None, results: str = "results/sanitizer", sanitizer: str | None = None,
            timeout_s: float = 600.0, run_selftest: bool = False, plugins: Iterable[str] = ()) -> int:
    """``nvfp4-harness sanitize``: exit 0 when every case ran clean (or was skipped by a backend that
    does not run here), 1 on a finding or a crash, 4 when the sanitizer cannot run at all."""
    from harness import results as results_mod

    tools = tools or ["memcheck"]
    for tool in tools:
        if tool not in TOOLS:
            raise ValueError(f"--tool={tool!r}: expected one of {list(TOOLS)}")
    if sample < 0:
        raise ValueError(f"--sample={sample}: expected a number of cases per backend >= 0")
    chosen = [(load_trial(p), str(p)) for p in cases_in(targets)]  # grouped (MoE) case files too
    names = _backend_names(backends) if sample else []
    if not chosen and not names and not run_selftest:
        raise ValueError("nothing to sanitize: name case files or directories, --sample N or --selftest")
    try:
        check_available(sanitizer)
    except SanitizerUnavailable as exc:
        print(f"nvfp4-harness: cannot sanitize: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if run_selftest:
        scores = selftest(sanitizer=sanitizer, progress=lambda s: print(
            f"  {s.mutant}: {'caught' if s.caught else 'NOT caught'}, parent {s.parent_status}", flush=True))
        print(scoreboard(scores))
        return 0 if scores and all(s.ok for s in scores) else EXIT_FINDINGS
    if sample:
        chosen += [(t, f"sample seed={seed}") for t in sample_trials(names, sample, seed)]
    out_dir = Path(results)
    stream = results_mod.ResultStream(out_dir, "sanitizer")
    counts = {"pass": 0, "fail": 0, "skip": 0, "crash": 0}
    t0 = time.perf_counter()
    try:
        for trial, source in chosen:
            level = level_of(trial)
            for tool in tools:
                res = sanitize_trial(trial, tool, sanitizer=sanitizer, timeout_s=timeout_s, plugins=plugins)
                case_file = save_finding_case(out_dir, res, level) if res.status == "fail" else None
                stream.write(record_of(res, level=level, case_file=case_file, test=f"sanitize {source}"))
                counts[res.status] += 1
                print(describe(res) + (f"\n    case: {out_dir / case_file}" if case_file else ""), flush=True)
    finally:
        stream.close()
        results_mod.finalize(out_dir)
    print(f"\nsanitized {sum(counts.values())} runs in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; results in {out_dir}")
    if counts["fail"] or counts["crash"]:
        return EXIT_FINDINGS
    return EXIT_CANNOT_RUN if not counts["pass"] else 0


def replay_command_line(case_path: str, *, backend: str | None = None, tool: str = "memcheck",
                        sanitizer: str | None = None) -> int:
    """``nvfp4-harness replay --sanitize CASE`` (a GEMM-level or a grouped case file): exit 0 clean,
    1 findings or crash, 4 cannot run."""
    from harness.cases import load_case
    from harness.grouped.cases import is_grouped_case_file, read_case

    if is_grouped_case_file(case_path):
        case = read_case(case_path)
        if backend is not None:
            from harness.grouped import registry as grouped_registry

            grouped_registry.get(backend)
        trial = case.trial_on(backend)
        from harness.replay import check_grouped_kind

        check_grouped_kind(case_path, trial, given=backend is not None)  # e.g. a fused-MoE case on a grouped GEMM
    else:
        case = load_case(case_path)
        if backend is not None:
            from harness.backends import registry

            registry.get(backend)
        trial = case.trial(backend)
    try:
        check_available(sanitizer)
    except SanitizerUnavailable as exc:
        print(f"nvfp4-harness: cannot sanitize: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    res = sanitize_trial(trial, tool, sanitizer=sanitizer)
    print(f"case      {case.id}")
    print(describe(res))
    recorded = (case.observed or {}).get("sanitizer")
    if isinstance(recorded, dict) and recorded.get("findings"):
        print("recorded  " + "; ".join(Finding.from_dict(f).line() for f in recorded["findings"][:4]))
    return {"pass": 0, "skip": EXIT_CANNOT_RUN}.get(res.status, EXIT_FINDINGS)
