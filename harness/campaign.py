"""Time-based fuzz campaigns: spend the budget, show progress, stop cleanly, share across nodes.

A *campaign* is a property-suite session in the ``fuzz`` profile with a time budget
(``--nvfp4-budget T``; ``nvfp4-harness fuzz --budget T``).  Without a campaign each test stops at
its example cap; in a campaign every (backend, property) pair fuzzes with fresh seeds past its
cap until its share of the budget is spent.

Schedule (docs/campaigns.md):

* The campaign holds ``W x T`` worker-seconds (``W`` xdist workers, budget ``T``).  When a pair's
  test starts, it gets ``slice = pool / remaining``: ``pool`` is the worker time left until the
  deadline minus what the pairs running on the other workers have already been promised, and
  ``remaining`` counts the pairs that no worker has started yet (this one included) among those
  this machine can run.  So the budget is shared evenly over the pairs, and the last pair on every
  worker ends at the deadline.
* A pair first runs up to its example cap (the coverage run), which may take up to twice its slice:
  a pair whose examples are slow gets more time to reach its cap.  Then, if its slice is not spent,
  it runs further Hypothesis runs of up to ``cap`` examples each, every one with a fresh seed, until
  it is; no example starts after the slice's end (nor after the deadline): the run is ended there
  by ``RunStopped``.
* A run that finds a failure shrinks it to the end, past the slice or the deadline if need be (the
  minimized case is what the campaign is for).
* A pair that fails gets a second slice (more time where bugs are): after a failure the reuse
  phase is dropped, so the following runs look for other failing examples instead of replaying
  the one found.

Interruption: the first SIGINT/SIGTERM stops every worker at the next example (the running example
finishes and is recorded; a failure being shrunk is shrunk to the end and written); the report is
rendered from what exists.  A second signal aborts.  Records are appended and fsynced one by one
(harness/results.py), so a worker killed by the OS loses nothing recorded.

Shared state lives in ``RESULTS_DIR/campaign/``: ``plan.json`` (controller: deadline, workers),
``worker-<id>.json`` (each worker: pid, pairs started, the running pair and its slice end, cases,
failures), ``stop`` (present once a stop was requested) and ``events.jsonl`` (example-database
outages and reconnections).  Every file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

CAMPAIGN_DIR = "campaign"


# ----------------------------------------------------------------------------------------------
# small file helpers
# ----------------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` runs (on this machine; a killed worker its parent has not reaped yet
    is a zombie, and counts as gone)."""
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def log_event(results_dir: str | Path | None, kind: str, message: str) -> None:
    """Append one event (an example-database outage, a reconnection, an interruption) to
    ``campaign/events.jsonl`` and print it on stderr."""
    print(f"nvfp4-harness: {message}", file=sys.stderr, flush=True)
    if not results_dir:
        return
    path = Path(results_dir) / CAMPAIGN_DIR / "events.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.time(), "pid": os.getpid(), "kind": kind, "message": message}) + "\n")
    except OSError:
        pass


def is_campaign(profile: str | None, budget_s: float | None) -> bool:
    """A campaign is the fuzz profile with a time budget; the ci profile (derandomized, small) and
    the replay profile never are."""
    return profile == "fuzz" and bool(budget_s)


# ----------------------------------------------------------------------------------------------
# sharding across nodes
# ----------------------------------------------------------------------------------------------
def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` (1 <= i <= N) -> ``(i, N)``; None for None.  Raises ValueError naming the value."""
    if text is None:
        return None
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/N with integers 1 <= i <= N, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text!r}: expected i/N with integers 1 <= i <= N, e.g. 1/4")
    return i, n


def shard_pairs(pairs: list[tuple[str, str]], shard: tuple[int, int] | None) -> list[tuple[str, str]]:
    """The pairs node ``i`` of ``N`` runs: every N-th pair of the sorted (backend, property) list,
    starting at the i-th.  Deterministic (depends only on the pair list), disjoint, and covering; each
    node gets many backends and many properties rather than a block of one backend."""
    if shard is None:
        return list(pairs)
    i, n = shard
    ordered = sorted(set(pairs))
    return [p for j, p in enumerate(ordered) if j % n == i - 1]


# ----------------------------------------------------------------------------------------------
# the controller's side: plan, stop, progress
# ----------------------------------------------------------------------------------------------
def write_plan(results_dir: str | Path, budget_s: float, workers: int, start: float) -> dict:
    plan = {"start": start, "budget_s": budget_s, "deadline": start + budget_s, "workers": max(1, workers)}
    _write_json(Path(results_dir) / CAMPAIGN_DIR / "plan.json", plan)
    return plan


def request_stop(results_dir: str | Path, why: str) -> None:
    path = Path(results_dir) / CAMPAIGN_DIR / "stop"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(why + "\n", encoding="utf-8")


def worker_states(results_dir: str | Path) -> list[dict]:
    out = []
    for path in sorted((Path(results_dir) / CAMPAIGN_DIR).glob("worker-*.json")):
        st = _read_json(path)
        if st:
            out.append(st)
    return out


def progress_summary(results_dir: str | Path, now: float | None = None) -> dict:
    """Campaign totals and one row per worker (cases, cases/s, failures, running pair), from the
    workers' state files."""
    now = time.time() if now is None else now
    plan = _read_json(Path(results_dir) / CAMPAIGN_DIR / "plan.json") or {}
    rows = []
    for st in worker_states(results_dir):
        elapsed = max(1e-9, (st.get("updated") or now) - st.get("started", now))
        rows.append({"worker": st.get("worker"), "pid": st.get("pid"),
                     "cases": st.get("cases", 0), "failures": st.get("failures", 0),
                     "rate": st.get("cases", 0) / elapsed, "pair": st.get("current") or "",
                     # "" while it runs; "done" once its session ended normally; "dead" if it vanished
                     "state": "done" if st.get("finished") else "" if _alive(st.get("pid")) else "dead"})
    start = plan.get("start", now)
    return {"cases": sum(r["cases"] for r in rows), "failures": sum(r["failures"] for r in rows),
            "rate": sum(r["cases"] for r in rows) / max(1e-9, now - start),
            "elapsed": now - start, "left": max(0.0, plan.get("deadline", now) - now),
            "stopping": (Path(results_dir) / CAMPAIGN_DIR / "stop").exists(), "workers": rows}


def summary_line(s: dict) -> str:
    per = "; ".join(f"{r['worker']} {r['cases']} ({r['rate']:.1f}/s)" + (f" {r['state']}" if r["state"] else "")
                    for r in s["workers"])
    state = " stopping" if s["stopping"] else ""
    return (f"campaign{state}: {s['cases']} cases, {s['rate']:.1f} cases/s, {s['failures']} failures, "
            f"{s['elapsed']:.0f} s elapsed, {s['left']:.0f} s left" + (f" | {per}" if per else ""))


class Progress:
    """Live progress of a campaign, in the controller.  On a terminal: a ``rich`` live table, one
    row per worker (cases, cases/s, failures, pair running) under the campaign totals and the time
    left.  Otherwise (CI logs): one summary line every ``interval`` seconds."""

    def __init__(self, results_dir: str | Path, *, stream=None, interval: float = 30.0,
                 live: bool | None = None):
        self.results_dir = Path(results_dir)
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        if self.live:
            try:
                import rich  # noqa: F401
            except ImportError:  # a declared dependency; lines rather than nothing without it
                self.live = False
        self.interval = interval if not self.live else 0.5
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _table(self):
        from rich.table import Table

        s = progress_summary(self.results_dir)
        t = Table(title=summary_line({**s, "workers": []}), title_justify="left", expand=False)
        for col in ("worker", "cases", "cases/s", "failures", "running"):
            t.add_column(col, justify="right" if col in ("cases", "cases/s", "failures") else "left")
        for r in s["workers"]:
            t.add_row(str(r["worker"]) + (f" ({r['state']})" if r["state"] else ""), str(r["cases"]),
                      f"{r['rate']:.1f}", str(r["failures"]), str(r["pair"]))
        return t

    def _run(self) -> None:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream)
            with Live(self._table(), console=console, refresh_per_second=2, transient=False) as live:
                while not self._stop.wait(self.interval):
                    live.update(self._table())
                live.update(self._table())
        else:
            while not self._stop.wait(self.interval):
                print(summary_line(progress_summary(self.results_dir)), file=self.stream, flush=True)

    def start(self) -> "Progress":
        self._thread = threading.Thread(target=self._run, name="nvfp4-campaign-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.live:
            print(summary_line(progress_summary(self.results_dir)), file=self.stream, flush=True)


class Interruption:
    """Signal handling of a campaign process.  The first SIGINT/SIGTERM calls ``on_first`` (ask
    for a clean stop); the second restores the default handlers and raises KeyboardInterrupt
    (abort).  Only in the main thread; ``restore()`` puts the previous handlers back."""

    def __init__(self, on_first: Callable[[int], None]):
        self.on_first = on_first
        self.count = 0
        self._old: dict[int, Any] = {}

    def install(self) -> "Interruption":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            self.on_first(signum)
            return
        self.restore()
        raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old.clear()


class Controller:
    """The controller's part of a campaign: writes the plan, shows progress, turns the first
    SIGINT/SIGTERM into a stop request for every worker (the ``stop`` file) and the second into
    KeyboardInterrupt (pytest-xdist then tears the workers down)."""

    def __init__(self, results_dir: str | Path, budget_s: float, workers: int, start: float,
                 progress_interval: float | None = None):
        self.results_dir = Path(results_dir)
        self.plan = write_plan(results_dir, budget_s, workers, start)
        interval = progress_interval or float(os.environ.get("NVFP4_HARNESS_PROGRESS_INTERVAL", "30"))
        # the terminal's stderr itself: without xdist the tests run in this process under pytest's
        # output capture, which would swallow what the progress thread prints
        try:
            stream = os.fdopen(os.dup(2), "w", buffering=1)
        except OSError:  # pragma: no cover - no stderr at all
            stream = sys.stderr
        self.progress = Progress(results_dir, interval=interval, stream=stream)
        self.interruption = Interruption(self._first)

    def _first(self, signum: int) -> None:
        name = signal.Signals(signum).name
        request_stop(self.results_dir, f"{name} at {time.time():.3f}")
        _STOP.set()
        log_event(self.results_dir, "stop", f"{name}: stopping the campaign after the running examples "
                                            f"(minimized failures are written, then the report); "
                                            f"send it again to abort")

    def start(self) -> "Controller":
        self.interruption.install()
        self.progress.start()
        return self

    def stop(self) -> None:
        self.progress.stop()
        self.interruption.restore()
        if self.progress.stream is not sys.stderr:
            try:
                self.progress.stream.close()
            except OSError:
                pass


_STOP = threading.Event()  # set by the first SIGINT/SIGTERM of this process


def install_worker_signal_handlers() -> Interruption:
    """In a worker of a campaign: the first SIGINT/SIGTERM asks for a clean stop (checked before
    every example), the second aborts."""
    return Interruption(lambda signum: _STOP.set()).install()


def runnable_pairs(items, environment) -> list[str]:
    """Node ids of the property-suite items whose backend can run here (the pairs that share the
    budget; an unsupported pair is skipped at once and gets no share)."""
    from harness.backends import registry

    out = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("backend_name")
        if name is None or "property_name" not in params:
            continue
        try:
            if registry.get(name).support(environment):
                out.append(item.nodeid)
        except Exception:  # an unknown backend is reported by the test itself
            continue
    return out


# ----------------------------------------------------------------------------------------------
# the worker's side: slices, the example gate, the loop of Hypothesis runs
# ----------------------------------------------------------------------------------------------
def _skip_exceptions() -> tuple[type[BaseException], ...]:
    """pytest's skip (a BaseException, not an Exception)."""
    out: list[type[BaseException]] = []
    try:
        import pytest

        out.append(pytest.skip.Exception)
    except ImportError:  # pragma: no cover - outside pytest
        pass
    return tuple(out)


class RunStopped(KeyboardInterrupt):
    """Ends the current Hypothesis run of a campaign at once; the campaign loop catches it.

    A KeyboardInterrupt on purpose: it is the one exception Hypothesis's engine lets through
    without saving the example that raised it to the example database (any other exception
    escaping a test, a skip included, stores that example as a failure to replay, which would fill
    the shared database with passing examples).  Never raised while a failure of the run is being
    shrunk."""


@dataclass
class Slice:
    pair: str
    start: float
    end: float            # no example of a fresh-seed run starts after this (nor after the deadline)
    cover_end: float = 0.0  # the first run (up to the example cap) may go on until this
    coverage: bool = True   # the first run is under way


class WorkerCampaign:
    """One worker's view of the campaign (see the module docstring for the schedule)."""

    def __init__(self, results_dir: str | Path, worker: str, all_pairs: list[str]):
        self.dir = Path(results_dir) / CAMPAIGN_DIR
        self.worker = worker
        self.all_pairs = list(all_pairs)   # node ids of the pairs this machine can run, any worker
        plan = _read_json(self.dir / "plan.json")
        if plan is None:
            raise RuntimeError(f"campaign plan {self.dir / 'plan.json'} is missing or unreadable")
        self.deadline = float(plan["deadline"])
        self.workers = int(plan["workers"])
        self.started_pairs: list[str] = []
        self.slice: Slice | None = None
        self.cases = 0
        self.failures = 0
        self.t0 = time.time()
        self.stop_requested = False
        self.failure_pending = False  # the running Hypothesis run has found a failure
        self.finished = False         # the worker's session ended normally (its state is final)
        self._last_write = 0.0
        self._save(force=True)

    # -- state shared with the other workers and the controller --------------------------------
    def _save(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        _write_json(self.dir / f"worker-{self.worker}.json", {
            "worker": self.worker, "pid": os.getpid(), "started": self.t0, "updated": now,
            "pairs_started": self.started_pairs, "cases": self.cases, "failures": self.failures,
            "current": self.slice.pair if self.slice else None,
            "slice_end": self.slice.end if self.slice else None, "finished": self.finished})

    def stopping(self) -> bool:
        if not self.stop_requested and (_STOP.is_set() or (self.dir / "stop").exists()):
            self.stop_requested = True
        return self.stop_requested

    def plan_slice(self, pair: str, now: float | None = None) -> Slice:
        now = time.time() if now is None else now
        others = [s for s in worker_states(self.dir.parent) if s.get("worker") != self.worker]
        started = set(self.started_pairs)
        committed = 0.0
        for s in others:
            started.update(s.get("pairs_started") or [])
            if s.get("current") and s.get("slice_end") and _alive(s.get("pid")):
                committed += max(0.0, min(float(s["slice_end"]), self.deadline) - now)
        remaining = [p for p in self.all_pairs if p not in started] or [pair]
        if pair not in remaining:
            remaining.append(pair)
        pool = max(0.0, self.workers * (self.deadline - now) - committed)
        share = pool / len(remaining)
        self.slice = Slice(pair, now, min(self.deadline, now + share), min(self.deadline, now + 2 * share))
        self.started_pairs.append(pair)
        self._save(force=True)
        return self.slice

    def gate(self, final: bool) -> bool:
        """Whether the next example may run: returns True, or raises RunStopped (the run ends).
        Hypothesis's final replay of a failure always runs (it writes the minimized case), and so
        does every example of a run that has found a failure: its shrinking goes on to the end (a
        skip would discard the failure; a rejected replay of an example that failed is an
        inconsistency for Hypothesis)."""
        if final or self.failure_pending:
            return True
        now = time.time()
        if self.stopping() or now >= self.deadline:
            allowed = False
        else:
            sl = self.slice
            allowed = sl is None or now < (sl.cover_end if sl.coverage else sl.end)
        if allowed:
            return True
        raise RunStopped("the campaign's time for this pair is spent, or a stop was requested")

    def note_example(self, outcome: str) -> None:
        """An example ran (before it is recorded): a failure makes the run shrink it."""
        if outcome in ("fail", "crash"):
            self.failure_pending = True

    def note_record(self, outcome: str, final: bool) -> None:
        if outcome != "skip":
            self.cases += 1
        if outcome in ("fail", "crash") and final:
            self.failures += 1
        self._save()

    def finish_pair(self) -> None:
        self.slice = None
        self._save(force=True)

    def finish(self) -> None:
        """The worker's session ended normally: its state file gets its final counts and says so
        (progress then shows the worker done, not dead)."""
        self.slice = None
        self.finished = True
        self._save(force=True)

    # -- the loop ----------------------------------------------------------------------------
    def run_pair(self, pair: str, call: Callable[[], Any], wrapped_test: Any) -> None:
        """Run Hypothesis runs of ``call`` (one call = one run of up to the example cap, with a
        fresh seed) until this pair's slice is spent; re-raise the first failure at the end."""
        from hypothesis import Phase, settings
        from hypothesis.errors import Unsatisfiable

        sl = self.plan_slice(pair)
        base_settings = getattr(wrapped_test, "_hypothesis_internal_use_settings", None)
        first_failure: BaseException | None = None
        runs = 0
        try:
            while True:
                self.failure_pending = False
                if runs > 0:
                    try:
                        self.gate(final=False)
                    except RunStopped:
                        break
                try:
                    runs += 1
                    call()
                except RunStopped:
                    break
                except (Unsatisfiable, *_skip_exceptions()):
                    # the test skipped itself, or every example of the run was rejected (a backend
                    # refusing them): the first run says so to pytest; a later one ends the pair
                    if runs == 1:
                        raise
                    break
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # a failure (AssertionError, an exception group, ...)
                    if first_failure is None:
                        first_failure = exc
                        sl.end = min(self.deadline, max(sl.end, time.time()) + (sl.end - sl.start))
                        if base_settings is not None:
                            # look for other failures: do not replay the one just found first
                            wrapped_test._hypothesis_internal_use_settings = settings(
                                base_settings, phases=[p for p in base_settings.phases if p != Phase.reuse])
                finally:
                    sl.coverage = False
        finally:
            if base_settings is not None:
                wrapped_test._hypothesis_internal_use_settings = base_settings
            self.finish_pair()
        if first_failure is not None:
            raise first_failure


# ----------------------------------------------------------------------------------------------
# a shared example database that survives real use
# ----------------------------------------------------------------------------------------------
def example_database(local_path: str | Path, redis_url: str | None, results_dir: str | Path | None = None):
    """The fuzz profile's example database: the local directory database, plus the shared Redis
    one when ``redis_url`` is given (Hypothesis's MultiplexedDatabase: every save goes to both,
    fetches read both, so a failure saved on any node is replayed first on every node)."""
    from hypothesis.database import DirectoryBasedExampleDatabase, MultiplexedDatabase

    local = DirectoryBasedExampleDatabase(str(local_path))
    if not redis_url:
        return local
    return MultiplexedDatabase(local, ResilientRedisDatabase(redis_url, results_dir=results_dir))


def _make_resilient_class():
    from hypothesis.database import ExampleDatabase

    class _Resilient(ExampleDatabase):
        """Hypothesis's RedisExampleDatabase that survives the server going away.

        While Redis is unreachable, fetches return nothing (the local database still answers, see
        ``example_database``), saves and deletes are queued (at most ``max_pending``), a line says so
        once per outage (stderr and ``campaign/events.jsonl``), and a reconnection is tried at most
        every ``retry_s`` seconds; on reconnection the queue is written, so failures found during
        the outage still reach every node."""

        def __init__(self, url: str, *, results_dir=None, retry_s: float = 2.0, timeout_s: float = 2.0,
                     max_pending: int = 10000):
            super().__init__()
            import redis
            from hypothesis.extra.redis import RedisExampleDatabase

            self.url = url
            self.results_dir = results_dir
            self.retry_s = retry_s
            self.max_pending = max_pending
            self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
            client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            self.inner = RedisExampleDatabase(client)
            self.down_since: float | None = None
            self._next_try = 0.0
            self._pending: list[tuple[str, tuple]] = []
            self._lock = threading.Lock()

        def __repr__(self) -> str:
            return f"ResilientRedisDatabase({self.url!r})"

        def _available(self) -> bool:
            if self.down_since is None:
                return True
            if time.time() < self._next_try:
                return False
            self._next_try = time.time() + self.retry_s
            try:
                self.inner.redis.ping()
            except self._errors:
                return False
            pending, self._pending = self._pending, []
            try:
                for op, args in pending:
                    getattr(self.inner, op)(*args)
            except self._errors:
                self._pending = pending
                return False
            outage = time.time() - self.down_since
            self.down_since = None
            log_event(self.results_dir, "redis-reconnected",
                      f"example database: Redis at {self.url} is back after {outage:.1f} s; "
                      f"{len(pending)} queued change(s) written")
            return True

        def _went_down(self, exc: BaseException) -> None:
            if self.down_since is None:
                self.down_since = time.time()
                self._next_try = time.time() + self.retry_s
                log_event(self.results_dir, "redis-unreachable",
                          f"example database: Redis at {self.url} is unreachable ({type(exc).__name__}: "
                          f"{exc}); using the local database only, reconnecting every {self.retry_s:g} s")

        def _call(self, op: str, *args, queue: bool):
            with self._lock:
                if self._available():
                    try:
                        return getattr(self.inner, op)(*args)
                    except self._errors as exc:
                        self._went_down(exc)
                if queue and len(self._pending) < self.max_pending:
                    self._pending.append((op, args))
                return None

        def fetch(self, key: bytes):
            return list(self._call("fetch", key, queue=False) or [])

        def save(self, key: bytes, value: bytes) -> None:
            self._call("save", key, value, queue=True)

        def delete(self, key: bytes, value: bytes) -> None:
            self._call("delete", key, value, queue=True)

        def move(self, src: bytes, dest: bytes, value: bytes) -> None:
            self._call("move", src, dest, value, queue=True)

    return _Resilient


def ResilientRedisDatabase(url: str, **kwargs):  # noqa: N802 - a class, built lazily (redis is optional)
    """See ``_make_resilient_class``; needs the ``redis`` package (``pip install redis``)."""
    global _RESILIENT
    if _RESILIENT is None:
        _RESILIENT = _make_resilient_class()
    return _RESILIENT(url, **kwargs)


_RESILIENT = None


# ----------------------------------------------------------------------------------------------
# merging results directories of several nodes
# ----------------------------------------------------------------------------------------------
def merge_results(dirs: list[str | Path], dest: str | Path) -> Path:
    """Copy the results directories of several nodes into ``dest`` as one results directory: each
    node's streams become ``results-<node>-<worker>.jsonl`` (the records' ``worker`` becomes
    ``<node>/<worker>``), case files are copied (same id = same case), and session.json gets the
    earliest start, the latest finish and the list of nodes.  ``<node>`` is ``n1``, ``n2``, ... in
    the order given.  Raises FileNotFoundError naming a directory that does not exist."""
    import shutil

    dest = Path(dest)
    srcs = [Path(d) for d in dirs]
    for d in srcs:
        if not d.is_dir():
            raise FileNotFoundError(f"RESULTS_DIR {str(d)!r}: no such directory (expected the folder a fuzz run wrote)")
    previous = _read_json(dest / "session.json")
    if dest.exists() and any(dest.iterdir()) and (previous or {}).get("profile") != "merged":
        raise FileExistsError(f"{dest} exists and is not a merged results directory: choose another place")
    for old in dest.glob("results-*.jsonl"):  # an earlier merge into the same place
        old.unlink()
    (dest / "cases").mkdir(parents=True, exist_ok=True)
    nodes = []
    started, finished, env, workers = [], [], None, {}
    for idx, d in enumerate(srcs, start=1):
        node = f"n{idx}"
        for stream in sorted(d.glob("results-*.jsonl")):
            wid = stream.stem[len("results-"):]
            with open(stream, encoding="utf-8", errors="replace") as src, \
                    open(dest / f"results-{node}-{wid}.jsonl", "w", encoding="utf-8") as out:
                for line in src:
                    try:
                        rec = json.loads(line)
                        rec["worker"] = f"{node}/{rec.get('worker', wid)}"
                        rec["node"] = node
                        out.write(json.dumps(rec) + "\n")
                    except ValueError:
                        out.write(line)  # kept as it is: the report lists unreadable lines
        for extra in sorted(d.glob("tracking-*.jsonl")):  # regression tracking verdicts, if any
            shutil.copy2(extra, dest / f"tracking-{node}-{extra.stem[len('tracking-'):]}.jsonl")
        for case in (d / "cases").glob("*.json"):
            target = dest / "cases" / case.name
            if not target.exists():
                shutil.copy2(case, target)
        session = _read_json(d / "session.json") or {}
        started += [session["started"]] if session.get("started") else []
        finished += [session["finished"]] if session.get("finished") else []
        env = env or session.get("environment")
        for w, info in (session.get("workers") or {}).items():
            workers[f"{node}/{w}"] = info
        nodes.append({"node": node, "results_dir": str(d.resolve()), "started": session.get("started"),
                      "finished": session.get("finished"), "argv": session.get("argv"),
                      "environment": session.get("environment")})
    from harness.results import write_session

    write_session(dest, {"started": min(started) if started else None, "finished": max(finished) if finished else None,
                         "environment": env or {}, "nodes": nodes, "workers": workers,
                         "argv": ["merged:", *[str(d) for d in srcs]], "profile": "merged"})
    return dest


# ----------------------------------------------------------------------------------------------
# the command line's side: run the property suite as a child that a Ctrl-C stops cleanly
# ----------------------------------------------------------------------------------------------
def call_interruptible(cmd: list[str], **popen_kwargs) -> tuple[int, int | None]:
    """``subprocess.call`` for the fuzz job: the child (pytest and its xdist workers) runs in its own
    process group, so a Ctrl-C on the terminal reaches this process only.  The first SIGINT/SIGTERM
    is passed to the pytest controller alone (it asks every worker to stop through the campaign's
    stop file; a worker that pytest-xdist is starting at that moment is not hit), the second too
    (pytest aborts and tears its workers down), a third kills the whole group.  Returns the child's
    exit status (128 + signal number if killed) and the first signal received (None if none)."""
    import subprocess

    child = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
    count = 0
    first: int | None = None

    def forward(signum, frame) -> None:
        nonlocal count, first
        count += 1
        first = first or signum
        sig = signum if count < 3 else signal.SIGKILL
        if count == 1:
            print(f"\nnvfp4-harness: {signal.Signals(signum).name}: stopping after the running examples "
                  f"(send it again to abort)", file=sys.stderr, flush=True)
        try:
            if count < 3:
                os.kill(child.pid, sig)
            else:
                os.killpg(child.pid, sig)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return (rc if rc >= 0 else 128 - rc), first
