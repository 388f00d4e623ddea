"""Replay a recorded case bit for bit, diagnose it, and promote it into the regression corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from harness.cases import Case, load_case, save_case
from harness.problem import POISON_REGIONS, SLOT_REGIONS
from harness.runner import execute
from harness.trial import Outcome, Trial

if TYPE_CHECKING:  # pragma: no cover
    from harness.grouped.cases import GroupedCase
    from harness.grouped.problem import GroupedTrial

REGRESSIONS_DIR = Path(__file__).resolve().parents[1] / "regressions" / "cases"

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_DIGEST = 3
EXIT_CANNOT_RUN = 4


@dataclass
class Replay:
    case: Case
    trial: Trial
    outcome: Outcome
    digest_ok: bool | None  # None: no digest to compare (or a different backend was asked for)

    @property
    def exit_code(self) -> int:
        if self.digest_ok is False:
            return EXIT_DIGEST
        if self.outcome.status == "skip":
            return EXIT_CANNOT_RUN
        return EXIT_PASS if self.outcome.status == "pass" else EXIT_FAIL

    def diagnosis(self) -> str:
        t, o, m = self.trial, self.outcome, self.outcome.measure
        p = t.problem
        lines = [f"case      {self.case.id}",
                 f"backend   {t.backend} ({self.case.level}), property {t.property}",
                 f"problem   m={p.m} n={p.n} k={p.k} out={p.out_dtype} data={p.distribution} seed={p.seed}"
                 + (f" batch={list(p.batch)}" if p.batch else "")
                 + (f" calibration={p.calibration:g} (static activation scale)" if p.calibration is not None else "")
                 + (f" partitions={list(p.partitions)} ({'fused' if p.fused_on_disk else 'split'} on disk)"
                    if p.partitions else "")
                 + (f" input_layout={p.input_layout} (x as a non-contiguous view)"
                    if p.input_layout != "contiguous" else "")
                 + (f"  [{p.origin}]" if p.origin else ""),
                 "poison    " + (", ".join(f"{r}=0x{getattr(t.poison, r):02X}" for r in POISON_REGIONS + SLOT_REGIONS
                                            if getattr(t.poison, r)) or "none")
                 + (" + stale memory" if t.poison.stale_memory else "")
                 + (f"; activation scales {t.a_layout}" if t.a_layout else "")]
        lines += _digest_lines(self.digest_ok, o.digest, self.case.digest)
        lines += _machine_lines(self.case.environment)
        lines.append(f"result    {_verdict(t.backend, self.case.backend, o)}")
        for key, label in (("nan_rows", "NaN rows"), ("changed_rows", "rows"), ("changed_cols", "columns")):
            if m.get(key):
                vals = m[key]
                lines.append(f"  {label + ' ':<10}{vals[:16]}{' ...' if len(vals) > 16 else ''}")
        if m.get("max_err_units") is not None and m.get("argmax"):  # the verdict line gives the value
            lines.append(f"  max error {m['max_err_units']:.4g} x bound at {m['argmax']}")
        if m.get("region"):
            lines.append(f"  poisoned region {m['region']} ({m.get('poison_kind')})")
        return "\n".join(lines)


def check_fits(problem) -> None:
    """Refuse a case that cannot fit in this machine's memory before building it, rather than be
    killed by the OS half-way: the harness's peak is at most ``CASE_MEMORY_MULTIPLE`` times the
    case's operand bytes (harness/memory.py, measured in bench/RESULTS.md).  Raises ValueError
    naming the problem's shape, the estimate and what is available (GPU memory on a GPU node, the
    host's available memory otherwise)."""
    from harness.memory import CASE_MEMORY_MULTIPLE, operand_bytes

    need = CASE_MEMORY_MULTIPLE * operand_bytes(problem.m, problem.n, problem.k)
    _check_memory(need, f"problem m={problem.m} n={problem.n} k={problem.k}")


def check_grouped_fits(problem) -> None:
    """:func:`check_fits` for a grouped or fused-MoE problem (:mod:`harness.grouped.problem`): its
    operands are, per expert, the expert's routed rows (rounded up to its ``row_align``), its weight
    [n, k] and its output rows; a fused-MoE problem has two such GEMMs (FC1: n = 2 * intermediate,
    k = hidden; FC2: n = hidden, k = intermediate).  The same ``CASE_MEMORY_MULTIPLE`` as a GEMM
    case.  Raises ValueError naming the shape, the estimate and what is available."""
    from harness.grouped.problem import MoeProblem
    from harness.memory import CASE_MEMORY_MULTIPLE, operand_bytes

    gemms = (problem.fc1(), problem.fc2()) if isinstance(problem, MoeProblem) else (problem,)
    need = CASE_MEMORY_MULTIPLE * sum(operand_bytes(-(-s // a) * a, g.n, g.k)
                                      for g in gemms for s, a in zip(g.splits, g.row_align))
    _check_memory(need, f"problem tokens={problem.tokens} experts={problem.experts} {_grouped_dims(problem)}")


def _check_memory(need: int, what: str) -> None:
    import os

    from harness import env
    from harness.memory import CASE_MEMORY_MULTIPLE

    e = env.current()
    if e.device == "cuda":
        import torch

        have, where = torch.cuda.mem_get_info()[0], "free GPU memory"
    else:
        have, where = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available host memory"
    if need > have:
        raise ValueError(f"{what}: needs up to {need / 2**30:.1f} GiB "
                         f"({CASE_MEMORY_MULTIPLE}x its operands); this machine has {have / 2**30:.1f} GiB of {where}")


def _grouped_dims(p) -> str:
    """The GEMM dimensions of a grouped problem (n, k) or a fused-MoE one (hidden, intermediate I)."""
    if hasattr(p, "intermediate"):
        return f"hidden={p.hidden} I={p.intermediate}"
    return f"n={p.n} k={p.k}"


@dataclass
class GroupedReplay:
    """A grouped case replayed (see :func:`replay`); the same exit codes as :class:`Replay`."""
    case: "GroupedCase"
    trial: "GroupedTrial"
    outcome: Outcome
    digest_ok: bool | None

    exit_code = Replay.exit_code

    def diagnosis(self) -> str:
        from harness.grouped.records import experts_or_note

        t, o, m = self.trial, self.outcome, self.outcome.measure
        p = t.problem
        poison = ", ".join(f"{r}=0x{getattr(t.poison, r):02X}" for r in t.poison.regions()) or "none"
        if t.property == "token_isolation":
            poison += f"; victim expert {t.poison.victim if t.poison.victim is not None else 0} " \
                      f"(weight scale byte 0x{t.poison.victim_byte:02X})"
        lines = [f"case      {self.case.id}",
                 f"backend   {t.backend} (grouped), property {t.property}",
                 f"problem   tokens={p.tokens} experts={p.experts} top_k={p.top_k} {_grouped_dims(p)} "
                 f"splits={list(p.splits)} row_align={list(p.row_align)} input_scales={p.input_scales} "
                 f"out={p.out_dtype} data={p.distribution} seed={p.seed}" + (f"  [{p.origin}]" if p.origin else ""),
                 f"poison    {poison}"]
        lines += _digest_lines(self.digest_ok, o.digest, self.case.digest)
        lines += _machine_lines(self.case.environment)
        lines.append(f"result    {_verdict(t.backend, self.case.backend, o)}")
        if o.status in ("pass", "fail"):
            for row in experts_or_note(t, m):
                err = row.get("max_err_units")
                what = [f"{row['tokens']} tokens {row['token_ids'][:8]}{' ...' if row['tokens'] > 8 else ''}"]
                if isinstance(err, (int, float)) or isinstance(err, str):
                    what.append(f"max error {err if isinstance(err, str) else format(err, '.4g')} x bound")
                if row["bad_tokens"]:
                    what.append(f"tokens out of bound or changed {row['bad_tokens'][:8]}")
                if row["padding"]:
                    what.append("poisoned padding " + ", ".join(f"{x['region']}=0x{x['byte']:02X}" for x in row["padding"]))
                flag = "DISAGREES" if row["disagrees"] else "ok"
                role = f" ({row['role']})" if row["role"] else ""
                lines.append(f"  expert {row['expert']}{role}: {flag}; " + "; ".join(what))
        for key, label in (("changed_tokens", "changed tokens"), ("nan_tokens", "NaN tokens"),
                           ("mismatches", "byte mismatches")):
            if m.get(key):
                vals = m[key]
                lines.append(f"  {label}: {vals[:16]}{' ...' if len(vals) > 16 else ''}")
        return "\n".join(lines)


def _digest_lines(digest_ok: bool | None, now: str | None, recorded: str | None) -> list[str]:
    if digest_ok is False:
        return [f"operands  DIGEST MISMATCH: rebuilt operands differ from the recorded ones "
                f"({now} != {recorded}); this is not the same case"]
    return ["operands  rebuilt bit for bit (digest matches)"] if digest_ok else []


def _machine_lines(recorded: Mapping[str, Any] | None) -> list[str]:
    """Where the case was recorded and where it replays now, when they differ: a case recorded on
    another kind of machine (a GPU-only failure replayed on the CPU, or another architecture) says
    nothing, by passing here, about the machine it failed on."""
    from harness import env

    if not recorded or not recorded.get("device"):
        return []
    here, there = env.machine(env.current().to_dict()), env.machine(recorded)
    if here == there:
        return []
    return [f"machine   recorded on {there}, replayed on {here}: a result here does not show what "
            f"{there} computes now"]


def _verdict(backend: str, recorded_backend: str, o: Outcome) -> str:
    if backend != recorded_backend:  # the same inputs on another backend: says nothing of a fix
        verdict = {"pass": f"PASSES on {backend} (the case failed on {recorded_backend})",
                   "fail": f"FAILS on {backend} too", "crash": f"CRASHED on {backend}",
                   "skip": f"{backend} cannot run here"}[o.status]
    else:
        verdict = {"pass": "PASSES now", "fail": "STILL FAILS", "crash": "CRASHED", "skip": "cannot run here"}[o.status]
    return f"{verdict}: {o.reason or (o.result.summary if o.result else '')}"


def replay_grouped(path: str | Path, backend: str | None = None) -> GroupedReplay:
    """Replay a grouped case file (:mod:`harness.grouped.cases`): rebuild its operands, compare
    their digest with the recorded one, and run its property again, on ``backend`` when given (a
    grouped backend; anything else raises UnknownBackendError or ValueError in one line)."""
    from harness.grouped import registry as grouped_registry
    from harness.grouped.cases import read_case
    from harness.grouped.checks import execute as execute_grouped

    case = read_case(path)
    if backend is not None and not grouped_registry.is_grouped(backend):
        level = grouped_registry.get_any(backend).level  # unknown names fail here, with both lists
        raise ValueError(f"--backend {backend!r}: a {level}-level backend cannot run a grouped case; grouped "
                         f"backends: {', '.join(sorted(b.name for b in grouped_registry.all_backends()))}")
    if not grouped_registry.is_grouped(case.backend) and backend is None:
        raise ValueError(f"{path}: backend={case.backend!r}: expected a grouped backend "
                         f"({', '.join(sorted(b.name for b in grouped_registry.all_backends()))}), or name one "
                         f"with --backend")
    trial = case.trial_on(backend)
    check_grouped_kind(path, trial, given=backend is not None)
    check_grouped_fits(trial.problem)
    outcome = execute_grouped(trial, digest=True)
    return GroupedReplay(case, trial, outcome, _digest_ok(case, outcome, backend))


def _digest_ok(case, outcome: Outcome, backend: str | None) -> bool | None:
    """Whether the operands rebuilt for the replay hash to the case's recorded digest; None where
    there is nothing to compare (no digest on either side, or the case run on another backend)."""
    if case.digest and outcome.digest and (backend is None or backend == case.backend):
        return outcome.digest == case.digest
    return None


def check_grouped_kind(path, trial: "GroupedTrial", *, given: bool) -> None:
    """A fused-MoE problem needs a fused-MoE backend, a grouped GEMM problem a grouped GEMM, and the
    case's property must be one the backend is put to: anything else is one ValueError line naming
    the backend (``--backend`` when the user gave it), rather than a "cannot run here" replay."""
    from harness.grouped import registry as grouped_registry
    from harness.grouped.problem import MoeProblem
    from harness.trial import properties_for

    b = grouped_registry.get(trial.backend)
    where = "--backend" if given else f"{path}: backend"
    moe_problem, moe_backend = isinstance(trial.problem, MoeProblem), getattr(b, "kind", "grouped") == "moe"
    if moe_problem != moe_backend:
        fits = sorted(x.name for x in grouped_registry.all_backends()
                      if (getattr(x, "kind", "grouped") == "moe") == moe_problem)
        raise ValueError(f"{where}={trial.backend!r}: a {'fused-MoE layer' if moe_backend else 'grouped GEMM'} "
                         f"cannot run this {'fused-MoE' if moe_problem else 'grouped GEMM'} case; expected one of "
                         f"{', '.join(fits)}")
    if trial.property not in properties_for(b):
        raise ValueError(f"{where}={trial.backend!r}: property={trial.property!r} does not apply to it; "
                         f"expected one of {list(properties_for(b))}")


def replay(path: str | Path, backend: str | None = None) -> "Replay | GroupedReplay":
    """Replay a case file: a GEMM-level, linear, quantizer or checkpoint case
    (:mod:`harness.cases`) or a grouped one (:mod:`harness.grouped.cases`, told apart by its schema)."""
    from harness.grouped.cases import is_grouped_case_file

    if is_grouped_case_file(path):
        return replay_grouped(path, backend)
    case = load_case(path)
    if backend is not None:
        from harness.grouped import registry as grouped_registry

        if grouped_registry.get_any(backend).level == "grouped":  # unknown names fail here, with both lists
            raise ValueError(f"--backend {backend!r}: a grouped backend cannot run a {case.level}-level case")
    trial = case.trial(backend)
    check_fits(trial.problem)
    outcome = execute(trial, digest=True)
    return Replay(case, trial, outcome, _digest_ok(case, outcome, backend))


def promote(path: str | Path, *, name: str | None = None, note: str | None = None, expect: str = "xfail",
            tracks: str | None = None, dest: Path | None = None, force: bool = False) -> Path:
    """Copy a case into the regression corpus with a name, a note and an expectation.

    Raises ValueError for a bad ``name``/``expect``, and when ``dest/<name>.json`` exists already
    (unless ``force``: then it is replaced), so one failure never lands twice under two names."""
    if expect not in ("pass", "xfail"):
        raise ValueError(f"--expect={expect!r}: expected 'pass' or 'xfail'")
    from harness.grouped.cases import SCHEMA as GROUPED_SCHEMA, is_grouped_case_file

    if is_grouped_case_file(path):
        raise ValueError(f"{path}: schema={GROUPED_SCHEMA!r}: the regression corpus (regressions/cases) holds "
                         f"GEMM-level, linear, quantizer and checkpoint cases only; keep the grouped case file and "
                         f"replay it with `nvfp4-harness replay`")
    case = load_case(path)
    case.note = note if note is not None else case.note
    case.expect = expect  # type: ignore[assignment]
    case.tracks = tracks if tracks is not None else case.tracks
    dest = dest or REGRESSIONS_DIR
    stem = name or case.id
    if not stem or any(c in stem for c in "/\\") or stem.startswith("."):
        raise ValueError(f"--name={name!r}: expected a plain file name (letters, digits, '-', '_')")
    target = dest / f"{stem}.json"
    if target.exists() and not force:
        raise ValueError(f"--name={stem!r}: {target} already exists; choose another --name, or pass "
                         f"--force to replace it")
    case.replay = ""
    return save_case(case, target, overwrite=force)
