"""Replay a recorded case bit for bit, diagnose it, and promote it into the regression corpus."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.cases import Case, load_case, save_case
from harness.problem import POISON_REGIONS, SLOT_REGIONS
from harness.runner import execute
from harness.trial import Outcome, Trial

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
                 f"poison    " + (", ".join(f"{r}=0x{getattr(t.poison, r):02X}" for r in POISON_REGIONS + SLOT_REGIONS
                                            if getattr(t.poison, r)) or "none")
                 + (" + stale memory" if t.poison.stale_memory else "")
                 + (f"; activation scales {t.a_layout}" if t.a_layout else "")]
        if self.digest_ok is False:
            lines.append(f"operands  DIGEST MISMATCH: rebuilt operands differ from the recorded ones "
                         f"({self.outcome.digest} != {self.case.digest}); this is not the same case")
        elif self.digest_ok:
            lines.append("operands  rebuilt bit for bit (digest matches)")
        if t.backend != self.case.backend:  # the same inputs on another backend: says nothing of a fix
            verdict = {"pass": f"PASSES on {t.backend} (the case failed on {self.case.backend})",
                       "fail": f"FAILS on {t.backend} too", "crash": f"CRASHED on {t.backend}",
                       "skip": f"{t.backend} cannot run here"}[o.status]
        else:
            verdict = {"pass": "PASSES now", "fail": "STILL FAILS", "crash": "CRASHED",
                       "skip": "cannot run here"}[o.status]
        lines.append(f"result    {verdict}: {o.reason or (o.result.summary if o.result else '')}")
        for key, label in (("nan_rows", "NaN rows"), ("changed_rows", "rows"), ("changed_cols", "columns")):
            if m.get(key):
                vals = m[key]
                lines.append(f"  {label + ' ':<10}{vals[:16]}{' ...' if len(vals) > 16 else ''}")
        if m.get("max_err_units") is not None:
            lines.append(f"  max error {m['max_err_units']:.4g} x bound" + (f" at {m['argmax']}" if m.get("argmax") else ""))
        if m.get("region"):
            lines.append(f"  poisoned region {m['region']} ({m.get('poison_kind')})")
        return "\n".join(lines)


def check_fits(problem) -> None:
    """Refuse a case that cannot fit in this machine's memory before building it, rather than be
    killed by the OS half-way: the harness's peak is at most ``CASE_MEMORY_MULTIPLE`` times the
    case's operand bytes (harness/memory.py, measured in bench/RESULTS.md).  Raises ValueError
    naming the problem's shape, the estimate and what is available (GPU memory on a GPU node, the
    host's available memory otherwise)."""
    import os

    from harness import env
    from harness.memory import CASE_MEMORY_MULTIPLE, operand_bytes

    need = CASE_MEMORY_MULTIPLE * operand_bytes(problem.m, problem.n, problem.k)
    e = env.current()
    if e.device == "cuda":
        import torch

        have, where = torch.cuda.mem_get_info()[0], "free GPU memory"
    else:
        have, where = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available host memory"
    if need > have:
        raise ValueError(f"problem m={problem.m} n={problem.n} k={problem.k}: needs up to {need / 2**30:.1f} GiB "
                         f"({CASE_MEMORY_MULTIPLE}x its operands); this machine has {have / 2**30:.1f} GiB of {where}")


def replay(path: str | Path, backend: str | None = None) -> Replay:
    case = load_case(path)
    if backend is not None:
        from harness.backends import registry

        registry.get(backend)  # unknown names fail here, with the list of known ones
    trial = case.trial(backend)
    check_fits(trial.problem)
    outcome = execute(trial, digest=True)
    digest_ok = None
    if case.digest and outcome.digest and (backend is None or backend == case.backend):
        digest_ok = outcome.digest == case.digest
    return Replay(case, trial, outcome, digest_ok)


def promote(path: str | Path, *, name: str | None = None, note: str | None = None, expect: str = "xfail",
            tracks: str | None = None, dest: Path | None = None, force: bool = False) -> Path:
    """Copy a case into the regression corpus with a name, a note and an expectation.

    Raises ValueError for a bad ``name``/``expect``, and when ``dest/<name>.json`` exists already
    (unless ``force``: then it is replaced), so one failure never lands twice under two names."""
    if expect not in ("pass", "xfail"):
        raise ValueError(f"--expect={expect!r}: expected 'pass' or 'xfail'")
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
