"""Upstream tracking: what a regression run says about each case of the corpus.

A regression case records where it reproduced (``reproduced`` in the case file: date, GPU
architecture, library versions; older files give the same facts through ``environment`` and
``created``).  Each run of the corpus compares that with what it observes now, on this machine and
with the installed libraries, and classifies the case:

* ``still reproduces``: a known failure (``expect: xfail``) that still fails;
* ``fixed upstream``: a known failure that now passes: the versions then and now are named, and the
  case should be retired or kept as a guard (``expect: pass``);
* ``behaviour changed``: a known failure that no longer fails *or* passes on the architecture where
  it reproduced: the library now refuses the call (a clean refusal: a skip with its own message);
* ``guard holds`` / ``regressed``: a case expected to pass that passes / fails;
* ``not run here``: the backend cannot run on this machine and the case never reproduced on this
  architecture (e.g. a Blackwell-only case on a CPU).

A refusal is never ``fixed upstream``: only a computed result that passes the property is.

Versions are compared as recorded, from package metadata or the module's own ``__version__``
(:func:`harness.env.library_version`); nothing here knows which version of which library behaves
how.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from harness.backends.protocol import Backend
    from harness.cases import Case
    from harness.env import Environment

STILL = "still reproduces"
FIXED = "fixed upstream"
CHANGED = "behaviour changed"
GUARD = "guard holds"
REGRESSED = "regressed"
NOT_HERE = "not run here"
STATES = (CHANGED, FIXED, REGRESSED, STILL, GUARD, NOT_HERE)
"""All states, most newsworthy first (the order of the summaries)."""
TRANSITIONS = (CHANGED, FIXED, REGRESSED)
"""States that mean something changed since the case was recorded: shown first and loudest."""

TRACKING_FILE = "tracking-{worker}.jsonl"
"""One line per classified case in a results directory (read by the HTML report)."""

#: import name -> distribution name, where they differ
_DIST_OF = {"flashinfer": "flashinfer-python", "compressed_tensors": "compressed-tensors"}


@dataclass(frozen=True)
class Sighting:
    """Where a case was run: date (YYYY-MM-DD), architecture ("SM90" / "cpu"), GPU name and the
    versions of the libraries involved (name -> version, bare: no "(no package metadata)")."""
    date: str
    arch: str
    gpu_name: str | None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, names: list[str] | None = None) -> str:
        """``"flashinfer 0.7.2.post1, torch 2.11.0 on SM90 (NVIDIA H200), 2026-11-21"``."""
        keys = names if names is not None else sorted(self.versions)
        libs = ", ".join(f"{k} {self.versions[k]}" for k in keys if k in self.versions) or "versions not recorded"
        where = self.arch + (f" ({self.gpu_name})" if self.gpu_name else "")
        return f"{libs} on {where}, {self.date}"


def module_version(import_name: str) -> str | None:
    """The installed version of the package imported as ``import_name`` (None: not installed)."""
    from harness.env import bare_version, library_version

    return bare_version(library_version(_DIST_OF.get(import_name, import_name)))


def sighting_now(env: "Environment", backend: "Backend | None" = None, date: str | None = None) -> Sighting:
    """This machine now: torch, triton, flashinfer, torchao, compressed-tensors (those installed) and
    every package ``backend`` declares in its requirements."""
    import datetime as _dt

    from harness.env import bare_version

    versions = {k: bare_version(v) for k, v in env.library_versions().items() if v}
    for pkg in (backend.requirements.packages if backend is not None else ()):
        if pkg not in versions:
            v = module_version(pkg)
            if v:
                versions[pkg] = v
    day = date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    return Sighting(day, env.arch(), env.gpu_name, {k: v for k, v in versions.items() if v})


def sightings_of(case: "Case") -> list[Sighting]:
    """Where ``case`` reproduced: its ``reproduced`` list, or for files without one, its
    ``environment`` and ``created`` date (an empty list when neither names an architecture)."""
    if case.reproduced:
        return [Sighting(r["date"], r["arch"], r.get("gpu_name"), dict(r["versions"])) for r in case.reproduced]
    env = case.environment or {}
    cc, device = env.get("compute_capability"), env.get("device")
    if device == "cuda" and isinstance(cc, int):
        arch = f"SM{cc}"
    elif device == "cpu":
        arch = "cpu"
    else:
        return []
    from harness.env import bare_version

    versions = {k: bare_version(env[k]) for k in ("torch", "triton", "flashinfer", "torchao", "compressed_tensors")
                if isinstance(env.get(k), str) and env.get(k)}
    return [Sighting(case.created[:10], arch, env.get("gpu_name"), versions)]


def version_changes(then: Sighting, now: Sighting) -> list[str]:
    """``["flashinfer 0.7.2.post1 -> 0.7.4"]``: libraries recorded in both whose versions differ."""
    return [f"{k} {then.versions[k]} -> {now.versions[k]}" for k in sorted(then.versions)
            if k in now.versions and now.versions[k] != then.versions[k]]


@dataclass
class Transition:
    """The verdict of one regression case in one run."""
    case: str                   # case file name
    backend: str
    expect: str
    state: str                  # one of STATES
    then: Sighting | None       # where it reproduced (the sighting on this architecture, if any)
    now: Sighting
    outcome: str                # pass / fail / crash / skip / unsupported
    reason: str                 # the outcome's reason (a refusal: the library's message)
    tracks: str | None = None

    @property
    def headline(self) -> str:
        """One line: state, case, and the versions then and now."""
        changes = self.changes
        libs = sorted(self.then.versions) if self.then else sorted(self.now.versions)
        now_txt = self.now.describe([k for k in libs if k in self.now.versions] or None)
        if self.then is None:
            seen = "where it reproduced is not recorded"
        else:
            seen = f"reproduced with {self.then.describe()}"
        if self.then is not None and self.then.arch != self.now.arch:
            # another architecture: its library builds differ by nature, so they are no transition
            delta = f" [never recorded on {self.now.arch}: this run is not the setting where it reproduced]"
        else:
            delta = f" [{'; '.join(changes)}]" if changes else ""
        return f"{self.state.upper()}: {self.case} ({self.backend}): {seen}; now {now_txt}{delta}"

    @property
    def changes(self) -> list[str]:
        """Library version changes since the sighting on this architecture (none across architectures)."""
        if self.then is None or self.then.arch != self.now.arch:
            return []
        return version_changes(self.then, self.now)

    @property
    def advice(self) -> str:
        if self.state == FIXED:
            return ("it passes now: retire the case, or keep it as a guard against the bug coming back "
                    "(set expect: pass and record this sighting)")
        if self.state == CHANGED:
            return (f"the library now refuses the call instead of failing it ({self.reason}); keep the case as a "
                    f"guard that the refusal stays clean, or retire it")
        if self.state == REGRESSED:
            return f"a case that passed fails again: {self.reason}"
        if self.state == STILL:
            return f"tracks {self.tracks or 'an upstream issue'}: {self.reason}"
        if self.state == NOT_HERE:
            return self.reason
        return "passes, as expected"

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "backend": self.backend, "expect": self.expect, "state": self.state,
                "then": self.then.to_dict() if self.then else None, "now": self.now.to_dict(),
                "outcome": self.outcome, "reason": self.reason, "tracks": self.tracks,
                "changes": self.changes,
                "headline": self.headline, "advice": self.advice}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Transition":
        then = Sighting(**d["then"]) if d.get("then") else None
        return cls(d["case"], d["backend"], d["expect"], d["state"], then, Sighting(**d["now"]), d["outcome"],
                   d["reason"], d.get("tracks"))


def classify(case: "Case", case_name: str, now: Sighting, *, outcome: str, reason: str = "") -> Transition:
    """Classify one regression case run now.

    ``outcome``: ``"unsupported"`` when the backend's support() refused this machine (no call was
    made), else the runner's status (``pass`` / ``fail`` / ``crash`` / ``skip``; ``skip`` being a
    refusal at call time).  ``reason``: the support reason or the outcome's reason.
    """
    sightings = sightings_of(case)
    here = [s for s in sightings if s.arch == now.arch]
    then = here[-1] if here else (sightings[-1] if sightings else None)
    known_failure = case.expect == "xfail"
    if outcome in ("unsupported", "skip"):
        state = CHANGED if (known_failure and here) else NOT_HERE
    elif outcome == "pass":
        state = FIXED if known_failure else GUARD
    else:  # fail, crash
        state = STILL if known_failure else REGRESSED
    return Transition(case_name, case.backend, case.expect, state, then, now, outcome, reason, case.tracks)


# ----------------------------------------------------------------------------------------------
# Recording and summarising
# ----------------------------------------------------------------------------------------------
def record(results_dir: str | os.PathLike[str], worker: str, transition: Transition) -> Path:
    """Append ``transition`` to ``RESULTS_DIR/tracking-<worker>.jsonl`` (one JSON line, fsync'd)."""
    path = Path(results_dir) / TRACKING_FILE.format(worker=worker)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(transition.to_dict()) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def load(results_dir: str | os.PathLike[str], warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """Every tracking line of a results directory (the latest line per case wins), most newsworthy
    state first; unreadable lines are reported in ``warnings``."""
    latest: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(results_dir).glob(TRACKING_FILE.format(worker="*"))):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                Transition.from_dict(d)
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                if warnings is not None:
                    warnings.append(f"{path.name}:{i}: unreadable tracking line ({type(exc).__name__}); ignored")
                continue
            latest[d["case"]] = d
    order = {s: i for i, s in enumerate(STATES)}
    return sorted(latest.values(), key=lambda d: (order.get(d["state"], len(order)), d["case"]))


def summary_lines(transitions: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(title, lines) for the terminal summary of a regression run."""
    counts = {s: sum(1 for t in transitions if t["state"] == s) for s in STATES}
    title = "upstream tracking: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
    lines = []
    for t in transitions:
        if t["state"] in (GUARD, NOT_HERE):
            continue
        lines.append(t["headline"])
        lines.append(f"    -> {t['advice']}")
    quiet = [f"{counts[s]} {s}" for s in (GUARD, NOT_HERE) if counts[s]]
    if quiet:
        lines.append(f"({', '.join(quiet)}: not listed)")
    return title, lines
