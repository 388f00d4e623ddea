"""pytest plugin of nvfp4-harness (loaded through the ``pytest11`` entry point).

* ``-n auto`` on a GPU node starts one xdist worker per visible GPU (``--nvfp4-workers-per-gpu``
  more), and each worker is pinned to its GPU (CUDA_VISIBLE_DEVICES) before CUDA initialises; on a
  CPU machine it starts one worker per core and the Triton interpreter is used.
* Options choose backends, properties, the Hypothesis profile, a time budget and the results dir.
* Every executed case is appended to the worker's result stream; each minimized failure is saved as
  a case file; the controller aggregates the streams at the end (see docs/results-format.md).

This module imports neither torch nor harness at import time: a worker must set
CUDA_VISIBLE_DEVICES before anything initialises CUDA.

Controller and workers talk through pytest-xdist's own channels: the controller decides the run
(results directory, start time, each worker's GPU) and hands it to every worker in
``workerinput["nvfp4"]`` (:func:`pytest_configure_node`); each worker sends back what it is and how
many cases it recorded in ``workeroutput["nvfp4"]``, which the controller reads when the worker
goes down (:func:`pytest_testnodedown`) and writes into session.json.  The cases themselves never
wait for that: each worker appends them to its own fsync'd result stream as they happen, so a
worker killed mid-session (a sticky CUDA error ends the process on purpose) loses nothing recorded.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_KEY = "nvfp4"
_FROM_CLI_ENV = "NVFP4_HARNESS_FROM_CLI"  # set by `nvfp4-harness fuzz`: it renders the report itself
"""The key of this plugin's entries in xdist's ``workerinput`` / ``workeroutput`` dicts."""


@dataclass
class RunPlan:
    """What the controller decides for a session and tells every worker (``workerinput["nvfp4"]``)."""
    results_dir: str
    start: float                      # time.time() at the controller's start
    gpus: list[str]                   # CUDA_VISIBLE_DEVICES entries the workers share
    workers_per_gpu: int = 1
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # controller: what workers sent back
    recorded: int = 0                 # cases recorded in this session (all workers)
    crashed: list[str] = field(default_factory=list)  # workers that went down with an error

    def gpu_of(self, worker: str) -> str | None:
        """The GPU of xdist worker ``gwN``: workers_per_gpu consecutive workers per GPU, round robin."""
        if not self.gpus or not worker.startswith("gw"):
            return None
        idx = int(worker[2:] or 0)
        return self.gpus[(idx // self.workers_per_gpu) % len(self.gpus)]

    def for_worker(self, worker: str) -> dict[str, Any]:
        return {"results_dir": self.results_dir, "start": self.start, "gpu": self.gpu_of(worker)}


def pytest_addoption(parser: pytest.Parser) -> None:
    from harness.cli import positive_int, positive_seconds  # stdlib-only module: no torch at plugin load

    g = parser.getgroup("nvfp4-harness", "NVFP4 GEMM correctness harness")
    g.addoption("--nvfp4-backends", default="all",
                help="comma-separated backend names, 'all' (default) or 'mutants' (the planted-bug backends)")
    g.addoption("--nvfp4-properties", default="all", help="comma-separated property names or 'all'")
    g.addoption("--nvfp4-profile", default=None, choices=("ci", "fuzz", "replay"),
                help="Hypothesis profile: ci (derandomized, small), fuzz (random, example database, many "
                     "examples), replay (only stored examples). Default: ci")
    g.addoption("--nvfp4-examples", type=positive_int, default=None,
                help="override max_examples per test (a positive integer)")
    g.addoption("--nvfp4-budget", type=positive_seconds, default=None,
                help="time budget in seconds for the whole session, checked before every example; "
                     "tests starting later are skipped")
    g.addoption("--nvfp4-results", default=None,
                help="results root: each session writes its own run directory ROOT/<run-id>/ and points "
                     "ROOT/latest at it (default: results/ for a property run; a temporary folder when "
                     "the property suite runs only as part of the whole test suite)")
    g.addoption("--nvfp4-run-id", default=None, help="name of this session's run directory (default: "
                                                     "UTC time and a random suffix)")
    g.addoption("--nvfp4-plugin", action="append", default=[],
                help="extra backend plugin: a module name or a path to a .py file (repeatable)")
    g.addoption("--nvfp4-workers-per-gpu", type=int, default=1, help="xdist workers per GPU with -n auto")
    g.addoption("--nvfp4-shard", default=None,
                help="i/N: run only node i's share of the (backend, property) pairs of an N-node campaign")
    g.addoption("--nvfp4-redis", default=os.environ.get("NVFP4_HARNESS_REDIS"),
                help="redis://HOST:PORT/DB: share the example database of the fuzz and replay profiles "
                     "with every node (default: $NVFP4_HARNESS_REDIS; the local .hypothesis/ always too)")


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() != ""]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    gpus = _visible_gpus()
    if gpus:
        return len(gpus) * max(1, config.getoption("--nvfp4-workers-per-gpu"))
    return os.cpu_count() or 1


def _register_profiles(redis_url: str | None = None, results_dir: str | None = None) -> None:
    from hypothesis import HealthCheck, Phase, settings

    from harness.campaign import example_database

    # function_scoped_fixture: the property suite's `backend` fixture is meant to run once per test
    # (support and time-budget gate before Hypothesis starts), not once per example
    common = dict(deadline=None, print_blob=False,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much, HealthCheck.differing_executors,
                                         HealthCheck.function_scoped_fixture])
    db_path = Path(os.environ.get("NVFP4_HARNESS_DB", ".hypothesis/nvfp4-examples"))
    # no explain phase: it re-runs a failing case under a tracer, which makes Triton kernels crawl
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]
    settings.register_profile("ci", derandomize=True, max_examples=4, database=None, phases=phases, **common)
    database = example_database(db_path, redis_url, results_dir)
    # derandomize=False explicitly: on a CI machine (the CI variable set) Hypothesis's own default
    # profile is derandomized, and a fuzz profile inheriting that repeats the same examples in every
    # fresh campaign run (seen in .ci/run: 4 distinct examples in 98 cases)
    settings.register_profile("fuzz", max_examples=60, database=database, phases=phases, derandomize=False,
                              **common)
    settings.register_profile("replay", max_examples=1, phases=[Phase.explicit, Phase.reuse],
                              database=database, derandomize=False, **common)


def _share_cpu_threads(workers: int) -> None:
    """Give each xdist worker its share of the CPU cores for torch's intra-op threads (unless
    OMP_NUM_THREADS says otherwise): with every worker using all cores, small CPU matmuls spend
    most of their time waiting for descheduled threads (measured on the 2-core CI machine: 1.6x
    slower tests; see bench/RESULTS.md)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(workers))))


def _is_worker(config: pytest.Config) -> bool:
    """An xdist worker (not a pytest run that merely inherited a worker's environment)."""
    return hasattr(config, "workerinput")


def _worker_input(config: pytest.Config) -> dict[str, Any]:
    return config.workerinput.get(_KEY, {})  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nvfp4: a property-suite case of nvfp4-harness")
    if not _is_worker(config):
        # controller (or plain run): decide the GPU list and the results dir for the workers
        start = time.time()
        gpus = _visible_gpus()
        wpg = max(1, config.getoption("--nvfp4-workers-per-gpu"))
        _load_plugins(config)
        _check_selection(config)
        # after every check: a refused command leaves no empty run directory behind
        plan = RunPlan(str(_run_dir(config)), start, gpus, wpg)
        config._nvfp4_plan = plan  # type: ignore[attr-defined]
        tx = getattr(config.option, "tx", None)
        if gpus and tx and all(t == "popen" for t in tx):
            # each xdist worker gets its GPU in its environment before its interpreter starts (a
            # worker that sets CUDA_VISIBLE_DEVICES itself can be too late: anything that touches
            # CUDA at start-up fixes the device list); a restarted worker reuses its spec
            config.option.tx = [f"popen//env:CUDA_VISIBLE_DEVICES={plan.gpu_of(f'gw{i}')}" for i in range(len(tx))]
    else:
        # the fallback for workers started without the spawn environment: still before any test
        # (and so before anything in this process initialises CUDA)
        gpu = _worker_input(config).get("gpu")
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        _share_cpu_threads(config.workerinput.get("workercount", 1))  # type: ignore[attr-defined]
    _register_profiles(config.getoption("--nvfp4-redis"), config._nvfp4_plan.results_dir  # type: ignore[attr-defined]
                       if not _is_worker(config) else _worker_input(config).get("results_dir"))
    from hypothesis import settings

    profile = config.getoption("--nvfp4-profile") or "ci"
    settings.load_profile(profile)
    if config.getoption("--nvfp4-examples"):
        settings.register_profile("nvfp4-override", settings(settings.default,
                                                             max_examples=config.getoption("--nvfp4-examples")))
        settings.load_profile("nvfp4-override")
    config._nvfp4_profile = profile  # type: ignore[attr-defined]
    from harness import campaign

    try:
        campaign.parse_shard(config.getoption("--nvfp4-shard"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc).replace("--shard", "--nvfp4-shard", 1)) from None
    # a campaign: the fuzz profile with a time budget fuzzes until the budget is spent
    config._nvfp4_campaign = campaign.is_campaign(profile, config.getoption("--nvfp4-budget"))  # type: ignore[attr-defined]
    if config._nvfp4_campaign and _is_worker(config):  # type: ignore[attr-defined]
        campaign.install_worker_signal_handlers()
    if _is_worker(config):
        _load_plugins(config)


def _load_plugins(config: pytest.Config) -> None:
    from harness.backends import registry

    for spec in config.getoption("--nvfp4-plugin"):
        try:
            registry.load_plugin(spec)
        except registry.PluginError as exc:  # one line, exit status 4, no INTERNALERROR
            raise pytest.UsageError(str(exc).replace("--plugin ", "--nvfp4-plugin ", 1)) from None


def _run_dir(config: pytest.Config) -> Path:
    """This session's own run directory: ROOT/<run-id>/, with ROOT/latest pointing at it.  Relative
    paths resolve against the working directory pytest was started in."""
    from harness.results import new_run_dir

    root = config.getoption("--nvfp4-results")
    if root is None:
        # the whole test suite (README's test command) must not add runs to the user's results/
        root = "results" if _is_property_run(config) else tempfile.mkdtemp(prefix="nvfp4-harness-results-")
    root_path = Path(root)
    if not root_path.is_absolute():
        root_path = Path(config.invocation_params.dir) / root_path
    try:
        return new_run_dir(root_path, config.getoption("--nvfp4-run-id"))
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--nvfp4-results {str(root)!r}: {exc}") from None


def _check_selection(config: pytest.Config) -> None:
    """Unknown backend or property names, and a selection that leaves no (backend, property) pair,
    are usage errors (one line, exit status 4), not a silent "1 skipped"."""
    from harness.backends import registry
    from harness.grouped.registry import get_any
    from harness.trial import all_properties

    props = config.getoption("--nvfp4-properties")
    wanted = None
    if props not in ("all", None):
        wanted = [p.strip() for p in props.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in all_properties()]
        if unknown or not wanted:
            raise pytest.UsageError(f"--nvfp4-properties: unknown property {(unknown or [props])[0]!r}; "
                                    f"expected a comma-separated list of {', '.join(all_properties())} or 'all'")
    names = config.getoption("--nvfp4-backends")
    if names in ("all", "mutants", None):
        return
    try:
        backends = [get_any(n.strip()) for n in names.split(",") if n.strip()]
    except registry.UnknownBackendError as exc:
        raise pytest.UsageError(f"--nvfp4-backends: {exc}") from None
    if wanted is not None:
        from harness.trial import properties_for, selection_group

        if not any(p in properties_for(b) for b in backends for p in wanted):
            groups = {b.name: selection_group(b) for b in backends}
            raise pytest.UsageError(
                f"--nvfp4-properties {props!r} applies to none of --nvfp4-backends {names!r} "
                f"({', '.join(f'{n}: {g}' for n, g in groups.items())}); the properties of each "
                f"level are: " + "; ".join(f"{g}: {', '.join(properties_for(b))}"
                                           for g, b in {selection_group(b): b for b in backends}.items()))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Controller, per xdist worker (a replacement for a crashed one too): hand it the run plan."""
    plan: RunPlan = node.config._nvfp4_plan
    node.workerinput[_KEY] = plan.for_worker(node.workerinput["workerid"])


def _is_property_run(config: pytest.Config) -> bool:
    """A session that names the property suite or the regression corpus on its command line (or a
    results folder), as opposed to the whole test suite collected from ``testpaths``."""
    if config.getoption("--nvfp4-results"):
        return True
    if getattr(config, "args_source", pytest.Config.ArgsSource.ARGS) != pytest.Config.ArgsSource.ARGS:
        return False
    return any({"properties", "regressions"} & set(Path(str(a).split("::")[0]).parts) for a in config.args)


def _write_session_start(config: pytest.Config, plan: "RunPlan") -> None:
    from harness import env, results

    results.write_session(plan.results_dir, {
        "started": _dt.datetime.fromtimestamp(plan.start, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": list(config.invocation_params.args), "profile": config._nvfp4_profile,  # type: ignore[attr-defined]
        "command": os.environ.get("NVFP4_HARNESS_COMMAND") or shlex.join(
            ["python", "-m", "pytest", *config.invocation_params.args]),
        "environment": env.current().to_dict()})


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if _is_worker(config):
        return
    plan: RunPlan = config._nvfp4_plan  # type: ignore[attr-defined]
    campaign_run = getattr(config, "_nvfp4_campaign", False)
    if campaign_run:
        from harness import campaign

        tx = getattr(config.option, "tx", None) or []
        workers = len(tx) if getattr(config.option, "dist", "no") != "no" else 1
        config._nvfp4_controller = campaign.Controller(  # type: ignore[attr-defined]
            plan.results_dir, config.getoption("--nvfp4-budget"), max(1, workers), plan.start).start()
    if campaign_run or config.getoption("--nvfp4-results"):
        # a run asked to record (nvfp4-harness fuzz, a campaign): session.json from the start, so a
        # run that is killed still says when, where and how it ran
        _write_session_start(config, plan)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """Controller: a worker finished (or died): keep what it sent back."""
    plan: RunPlan = node.config._nvfp4_plan
    worker = node.workerinput["workerid"]
    sent = json.loads(getattr(node, "workeroutput", {}).get(_KEY) or "null")
    if sent:
        plan.workers[worker] = sent["info"]
        plan.recorded += sent["recorded"]
    if error:  # killed (a sticky CUDA error ends the worker after recording the crash): no output
        plan.crashed.append(worker)
        plan.workers.setdefault(worker, {"worker": worker, "gpu": plan.gpu_of(worker),
                                         "crashed": str(error)[:500]})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    harness_session: HarnessSession | None = getattr(config, "_nvfp4_session", None)
    if harness_session is not None and harness_session.campaign is not None and exitstatus != pytest.ExitCode.INTERRUPTED:
        harness_session.campaign.finish()
    if _is_worker(config):
        if harness_session is not None and harness_session.recorded:
            # as JSON text: execnet carries builtin types only (torch.__version__ is a str subclass)
            config.workeroutput[_KEY] = json.dumps({"info": harness_session.info,  # type: ignore[attr-defined]
                                                    "recorded": harness_session.recorded}, default=str)
        return
    controller = getattr(config, "_nvfp4_controller", None)
    if controller is not None:
        controller.stop()
    plan: RunPlan = config._nvfp4_plan  # type: ignore[attr-defined]
    if harness_session is not None and harness_session.recorded:  # a run without xdist
        plan.workers[harness_session.worker] = harness_session.info
        plan.recorded += harness_session.recorded
    if not plan.recorded and not plan.crashed:
        return  # this session ran no property case: leave the results directory alone
    from harness import results

    _write_session_start(config, plan)
    config._nvfp4_totals = results.finalize(plan.results_dir, workers=plan.workers)  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    tot = getattr(config, "_nvfp4_totals", None)
    if not tot:
        return
    from harness import results

    plan: RunPlan = config._nvfp4_plan
    res = plan.results_dir
    terminalreporter.write_sep("=", "nvfp4-harness")
    hint = "" if os.environ.get(_FROM_CLI_ENV) else f" (report: nvfp4-harness report {res} -o {res}/report.html)"
    records, _ = results.load_results(res)
    cases = results.totals([r for r in records if not results.is_test_skip(r)])
    n_skipped = sum(1 for r in records if results.is_test_skip(r))
    # cases (executed examples) and whole tests skipped before any example are different units
    terminalreporter.write_line(
        f"cases: {cases['pass']} passed, {cases['fail']} failed, {cases['crash']} crashed, {cases['skip']} refused "
        f"by the backend; {n_skipped} tests skipped before any example; results in {res}{hint}")
    # a backend none of whose tests ran an example (not installed, no GPU, budget spent) says why here,
    # so a run that computed nothing for it never reads as a clean one
    computed = {r.get("backend") for r in records if not results.is_test_skip(r)}
    idle: dict[str, str] = {}
    for r in records:
        if results.is_test_skip(r) and r.get("backend") not in computed:
            idle.setdefault(str(r.get("backend")), str(r.get("reason") or "no reason recorded"))
    if idle:
        terminalreporter.write_line(f"{len(idle)} backend{'s' if len(idle) > 1 else ''} computed no case here:")
        for name, why in sorted(idle.items()):
            terminalreporter.write_line(f"  {name}: {why.splitlines()[0] if why else why}")
    over = tot.get("accepted_overflow") or {}
    if over.get("outputs"):
        terminalreporter.write_line(
            f"accepted overflow: {over['outputs']} outputs in {over['results']} cases were ±inf where the "
            f"reference ± its error bound reaches the output format's overflow threshold (within the bound)")
    for name in sorted(plan.workers):
        w = plan.workers[name]
        if w.get("crashed"):
            terminalreporter.write_line(f"  worker {name}: crashed ({(w['crashed'] or '?').splitlines()[0][:120]})")
            continue
        e = w.get("environment", {})
        phys = w.get("physical_gpu") or {}
        where = (f"GPU {w.get('gpu')} of CUDA_VISIBLE_DEVICES ({e.get('gpu_name')}; NVML: physical GPU "
                 f"{phys.get('nvml_index', '?')}, {phys.get('uuid', '?')}, bus {phys.get('pci_bus_id', '?')})"
                 if e.get("device") == "cuda" else "CPU (Triton interpreter)")
        terminalreporter.write_line(f"  worker {w.get('worker')}: pid {w.get('pid')} on {where}")
    failures = results.new_failures(res)
    if failures:
        terminalreporter.write_sep("-", f"new failures ({len(failures)}): each replays with one command")
        for f in failures:
            terminalreporter.write_line(f"{f['backend']} · {f['property']} ({f['outcome']}): {f['reason']}")
            terminalreporter.write_line(f"  case file: {f['case_path']}")
            terminalreporter.write_line(f"  replay:    {f['replay']}")


# ----------------------------------------------------------------------------------------------
# The session object the property tests use
# ----------------------------------------------------------------------------------------------
class HarnessSession:
    """Runs trials, records every one, saves minimized failures, enforces the time budget."""

    def __init__(self, config: pytest.Config):
        from harness import env

        self.config = config
        if _is_worker(config):
            self.worker = config.workerinput["workerid"]  # type: ignore[attr-defined]
            plan = _worker_input(config)
        else:
            self.worker = "main"
            plan = config._nvfp4_plan.for_worker(self.worker)  # type: ignore[attr-defined]
        self.results_dir = Path(plan["results_dir"])
        self.start = float(plan["start"])
        self.gpu = plan["gpu"]
        self.env = env.current()
        self.budget = config.getoption("--nvfp4-budget")
        self._stream = None
        self.recorded = 0
        self.info: dict[str, Any] = {}
        """What this worker is (sent to the controller, see pytest_sessionfinish)."""
        config._nvfp4_session = self  # type: ignore[attr-defined]
        self.campaign = None  # harness.campaign.WorkerCampaign, once the first pair of a campaign starts
        # (outcome, final) of the cases recorded before it started (grouped pairs run first): the
        # campaign's counts, and so its progress lines, include them once it exists
        self.unnoted: list[tuple[str, bool]] = []
        self._stops: dict[str, str] = {}     # test -> why it stopped before max_examples
        self.refusals: dict[str, list[str]] = {}  # test -> the refusal reasons of its examples

    @property
    def stream(self):
        if self._stream is None:
            from harness.results import ResultStream

            self._stream = ResultStream(self.results_dir, self.worker)
            info = {"worker": self.worker, "gpu": self.gpu, "pid": os.getpid(),
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "environment": self.env.to_dict()}
            if self.env.device == "cuda":
                import torch

                from harness.env import physical_gpu

                keep = torch.ones(1, device="cuda")  # this process now holds a CUDA context
                torch.cuda.synchronize()
                info["physical_gpu"] = physical_gpu()
                del keep
            self.info = info
        return self._stream

    def over_budget(self) -> bool:
        return self.budget is not None and time.time() - self.start > self.budget

    def stop_reason(self, test: str) -> str | None:
        return self._stops.get(test)

    def selected(self, kind: str) -> list[str] | None:
        value = self.config.getoption(f"--nvfp4-{kind}")
        return None if value in ("all", None) else [v.strip() for v in value.split(",") if v.strip()]

    def record(self, trial, outcome, test: str, level: str, final: bool, scope: str = "case") -> None:
        from harness.results import make_record, save_failure_case

        case_file = None
        # scope "test": a whole test skipped before any example ran; "case": one executed example
        extra = {"gpu": self.gpu, "final": final, "scope": scope}
        if level == "grouped" and scope == "case":
            case_file = self._record_grouped(trial, outcome, final, extra)
        elif outcome.status in ("fail", "crash") and final:
            case_file = save_failure_case(self.results_dir, trial, outcome, level, self.env.to_dict())
        self.stream.write(make_record(trial, outcome, worker=self.worker, test=test, level=level,
                                      case_file=case_file, extra=extra))
        self.recorded += 1
        if self.campaign is not None:
            self.campaign.note_record(outcome.status, final)
        else:
            self.unnoted.append((outcome.status, final))

    def _record_grouped(self, trial, outcome, final: bool, extra: dict) -> str | None:
        """A grouped failure: its per-expert view goes into the record (``experts``) and, once
        minimized, its case file (harness.grouped.records); returns the case file's path."""
        if outcome.status not in ("fail", "crash"):
            return None
        from harness import tracking
        from harness.grouped import records, registry as grouped_registry

        extra["experts"] = records.experts_or_note(trial, outcome.measure)
        if not final:
            return None
        seen = tracking.sighting_now(self.env, grouped_registry.get(trial.backend))
        return records.save_failure_case(self.results_dir, trial, outcome, self.env.to_dict(), [seen.to_dict()])

    def campaign_gate(self) -> None:
        """In a campaign, before every example: raises harness.campaign.RunStopped (a KeyboardInterrupt
        the campaign catches: it ends the Hypothesis run there) once the pair's share of the budget is spent, the deadline
        is reached or a stop was requested; Hypothesis's final replay of a failure always runs."""
        if self.campaign is None:
            return
        from hypothesis.control import current_build_context

        try:
            final = current_build_context().is_final
        except Exception:
            final = True
        self.campaign.gate(final)

    def record_skip(self, backend, prop: str, reason: str, test: str) -> None:
        """Record a whole test skipped before any case ran (backend unavailable, budget spent)."""
        from harness.problem import GemmProblem
        from harness.trial import Outcome, Trial

        # a test that ran no example has no problem of its own: a placeholder keeps the record's shape
        trial = Trial(backend.name, prop, GemmProblem(1, 16, 16))
        self.record(trial, Outcome("skip", reason), test, backend.level, True, scope="test")

    def run(self, trial, test: str, digest: bool = False, ignore_budget: bool = False):
        """Execute a trial inside a Hypothesis test; record it; end the process on a lost context.

        The time budget is checked before every example: once it is spent the example is not run
        and ``None`` is returned (the property suite rejects it, so Hypothesis ends the test quickly
        with the examples already run).  ``ignore_budget``: the caller checks the budget itself (the
        grouped suite), so the example always runs."""
        from hypothesis.control import current_build_context

        from harness.backends import registry
        from harness.grouped import registry as grouped_registry
        from harness.grouped.checks import execute as execute_grouped
        from harness.runner import NOT_APPLICABLE, ContextLost, execute as execute_gemm
        from harness.trial import Outcome

        if self.over_budget() and self.campaign is None and not ignore_budget:
            self._stops.setdefault(test, f"time budget (--nvfp4-budget {self.budget:g} s) spent")
            return None

        try:
            final = current_build_context().is_final
        except Exception:
            final = True
        grouped = grouped_registry.is_grouped(trial.backend)
        execute = execute_grouped if grouped else execute_gemm  # the grouped (MoE) level has its own engine
        level = "grouped" if grouped else registry.get(trial.backend).level
        try:
            outcome = execute(trial, digest=digest)
        except ContextLost as exc:
            self.record(trial, Outcome("crash", str(exc)), test, level, True)
            os._exit(3)  # the CUDA context is gone: xdist restarts a fresh worker for the next tests
        if self.campaign is not None:
            self.campaign.note_example(outcome.status)
        # a property that cannot be checked on this backend skips the whole test (scope "test");
        # any other skip is one example the backend refused
        # (a grouped property that does not apply to one example, e.g. no zero-token expert in it,
        # is that example's skip)
        whole_test = outcome.status == "skip" and outcome.reason.startswith(NOT_APPLICABLE) and not grouped
        if outcome.status == "skip" and not whole_test:
            self.refusals.setdefault(test, []).append(outcome.reason)
        if outcome.status != "fail" or final:
            self.record(trial, outcome, test, level, final, scope="test" if whole_test else "case")
        return outcome

    def end_test(self, test: str, stop_reason: str) -> None:
        """Record why a property test stopped (Hypothesis statistics in the report)."""
        reason = self._stops.get(test) or stop_reason
        with open(self.results_dir / f"tests-{self.worker}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": test, "stop_reason": reason}) + "\n")


@pytest.fixture(scope="session")
def nvfp4_session(request: pytest.FixtureRequest) -> HarnessSession:
    return HarnessSession(request.config)


def key_examples(test: Any, key: str) -> bool:
    """Make ``key`` part of the Hypothesis example-database key of ``test`` (a ``@given`` function),
    where Hypothesis reads it: on its inner test (``hypothesis.internal.reflection.function_digest``;
    set on the ``@given`` wrapper itself it is ignored).  Returns False when ``test`` is not a
    Hypothesis test."""
    inner = getattr(getattr(test, "hypothesis", None), "inner_test", None)
    if inner is None:
        return False
    inner._hypothesis_internal_add_digest = key.encode()
    return True


def key_examples_by_item(item: pytest.Function) -> bool:
    """Give a parametrized Hypothesis test one example-database key per pytest item (its node id,
    e.g. ``properties/test_properties.py::test_property[torch-emu::determinism]``), with
    :func:`key_examples`.

    Hypothesis's pytest plugin does this only for ``@pytest.mark.parametrize`` (and parametrized
    fixtures, when its fixture health checks are on); the property suite parametrizes its (backend,
    property) pairs in ``pytest_generate_tests``, which leaves every pair on the one key of the test
    function.  A shared key mixes the pairs' examples: a correct backend's run replays a mutant's
    saved failure, passes it, and Hypothesis deletes it from the database (seen on a shared Redis:
    the node that found a failure could not replay it on another node).  Returns True when the key
    was set."""
    return getattr(item, "callspec", None) is not None and key_examples(item.obj, item.nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Every parametrized Hypothesis test gets its own example-database key
    (:func:`key_examples_by_item`).  In a campaign, a property test runs Hypothesis runs with fresh
    seeds until its pair's share of the budget is spent (harness/campaign.py); elsewhere pytest
    calls the test once."""
    key_examples_by_item(pyfuncitem)
    session = pyfuncitem.funcargs.get("nvfp4_session")
    if session is None or "property_name" not in pyfuncitem.funcargs \
            or not getattr(pyfuncitem.config, "_nvfp4_campaign", False):
        return None
    from harness import campaign

    if session.campaign is None:
        session.campaign = campaign.WorkerCampaign(session.results_dir, session.worker,
                                                   campaign.runnable_pairs(pyfuncitem.session.items, session.env))
        for status, final in session.unnoted:
            session.campaign.note_record(status, final)
        session.unnoted.clear()
    testargs = {arg: pyfuncitem.funcargs[arg] for arg in pyfuncitem._fixtureinfo.argnames}
    session.campaign.run_pair(pyfuncitem.nodeid, lambda: pyfuncitem.obj(**testargs), pyfuncitem.obj)
    return True
