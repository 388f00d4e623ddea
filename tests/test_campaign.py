"""Time-based fuzz campaigns (harness/campaign.py): the budget is spent, progress is shown, a
Ctrl-C keeps everything, a killed worker loses nothing, shards split the pairs, and a real Redis
server carries failures from one node to another and survives a restart.

Every campaign here runs the real property suite in a subprocess (pytest or ``nvfp4-harness
fuzz``) on the CPU with small budgets; the Redis tests start their own ``redis-server`` (Debian's
package) on a free loopback port and skip, saying so, where it is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import campaign

ROOT = Path(__file__).resolve().parents[1]
TEST_ID = "properties/test_properties.py::test_property"


def _env(tmp_path: Path, db: str = "db", **extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NVFP4_HARNESS_DB": str(tmp_path / db),
           "NVFP4_HARNESS_PROGRESS_INTERVAL": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    env.update(extra)
    return env


def _pytest_cmd(results: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", str(ROOT / "properties"), "-p", "no:cacheprovider", "-q",
            "--nvfp4-profile", "fuzz", "--nvfp4-results", str(results), *args]


def _run(results: Path) -> Path:
    """The session's run directory under a results root (ROOT/latest), once the session made it."""
    return results / "latest" if (results / "latest").is_dir() else results


def _records(results: Path) -> list[dict]:
    results = _run(results)
    out = []
    for path in sorted(results.glob("results-*.jsonl")):
        for line in path.read_text().splitlines():
            out.append(json.loads(line))
    return out


def _cases(results: Path) -> list[dict]:
    return [r for r in _records(results) if r["outcome"] != "skip"]


def _wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended (status {proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ----------------------------------------------------------------------------------------------
# schedule and sharding (no subprocess)
# ----------------------------------------------------------------------------------------------
def test_shards_are_deterministic_disjoint_and_cover_every_pair() -> None:
    pairs = [(b, p) for b in ("torch-emu", "triton-emu-8x4", "linear-vllm[x]")
             for p in ("reference_agreement", "row_isolation", "k_tail", "determinism")]
    shards = [campaign.shard_pairs(pairs, (i, 3)) for i in (1, 2, 3)]
    assert sorted(p for s in shards for p in s) == sorted(pairs)  # covering and disjoint
    assert [len(s) for s in shards] == [4, 4, 4]
    assert shards == [campaign.shard_pairs(list(reversed(pairs)), (i, 3)) for i in (1, 2, 3)]  # order-free
    assert all(len({b for b, _ in s}) > 1 for s in shards)  # each node gets several backends
    assert campaign.shard_pairs(pairs, None) == pairs
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            campaign.parse_shard(bad)


def test_slices_share_the_worker_time_left_over_the_pairs_not_started(tmp_path: Path) -> None:
    start = time.time()
    campaign.write_plan(tmp_path, 100.0, 2, start)
    pairs = [f"p{i}" for i in range(4)]
    w0 = campaign.WorkerCampaign(tmp_path, "gw0", pairs)
    w1 = campaign.WorkerCampaign(tmp_path, "gw1", pairs)
    s0 = w0.plan_slice("p0", now=start)
    assert s0.end - start == pytest.approx(200.0 / 4)      # 2 workers x 100 s over 4 pairs
    s1 = w1.plan_slice("p1", now=start)                    # p0 is promised 50 s on gw0
    assert s1.end - start == pytest.approx((200.0 - 50.0) / 3)
    w0.finish_pair()
    s2 = w0.plan_slice("p2", now=start + 50)               # gw1 still has 0 s promised; 2 pairs left
    assert s2.end == pytest.approx(start + 50 + (2 * 50 - 0.0) / 2)
    last = w0.plan_slice("p3", now=start + 99)             # never past the deadline
    assert last.end == pytest.approx(start + 100)
    assert last.cover_end <= start + 100


def _given_test(w: "campaign.WorkerCampaign", seen: list, fails=lambda x: False):
    from hypothesis import given, settings, strategies as st
    from hypothesis.control import current_build_context
    from hypothesis.database import InMemoryExampleDatabase

    db = InMemoryExampleDatabase()

    @settings(max_examples=5, database=db, deadline=None, derandomize=False)
    @given(st.integers(0, 2**60))
    def t(x):
        w.gate(current_build_context().is_final)
        seen.append((time.time(), x))
        if fails(x):
            w.note_example("fail")
            raise AssertionError(f"planted failure at {x}")
        time.sleep(0.01)

    t.db = db
    return t


def test_a_pair_draws_fresh_examples_past_its_cap_until_its_slice_is_spent(tmp_path: Path) -> None:
    start = time.time()
    campaign.write_plan(tmp_path, 1.5, 1, start)
    w = campaign.WorkerCampaign(tmp_path, "main", ["p"])
    seen: list = []
    t = _given_test(w, seen)
    w.run_pair("p", t, t)
    spent = time.time() - start
    assert 1.4 <= spent <= 4.0, spent               # one pair, one worker: the whole budget (loaded CI)
    assert len(seen) > 3 * 5                        # many runs of the 5-example cap
    assert len({x for _, x in seen}) > 3 * 5        # with fresh seeds: new examples
    assert max(t0 for t0, _ in seen) < start + 1.5  # none started after the deadline
    # ending a run saved nothing: the database holds failures only (none here)
    assert not any(t.db.data.values()), t.db.data


def test_a_failing_pair_keeps_looking_and_reports_its_first_failure(tmp_path: Path) -> None:
    start = time.time()
    campaign.write_plan(tmp_path, 1.5, 1, start)
    w = campaign.WorkerCampaign(tmp_path, "main", ["p", "q"])   # q not started: p's slice is half
    seen: list = []
    t = _given_test(w, seen, fails=lambda x: x % 3 == 0)
    with pytest.raises(AssertionError, match="planted failure"):
        w.run_pair("p", t, t)
    # the pair's slice (0.75 s) was doubled after the failure: it fuzzed on past the first one
    assert time.time() - start >= 1.2
    assert sum(1 for _, x in seen if x % 3 == 0) > 1


def test_progress_shows_cases_rate_failures_and_time_left_per_worker(tmp_path: Path) -> None:
    import io

    start = time.time()
    campaign.write_plan(tmp_path, 60.0, 2, start - 10)
    w = campaign.WorkerCampaign(tmp_path, "gw0", ["p0"])
    w.plan_slice("p0")
    for outcome, final in (("pass", True), ("pass", True), ("fail", True), ("skip", True)):
        w.note_record(outcome, final)
    w._save(force=True)
    s = campaign.progress_summary(tmp_path)
    assert (s["cases"], s["failures"]) == (3, 1)
    assert 45 <= s["left"] <= 50.5
    line = campaign.summary_line(s)
    assert "3 cases" in line and "1 failures" in line and "gw0 3" in line
    assert " done" not in line and " dead" not in line  # running: this process is the worker
    # on a terminal: a rich live table, one row per worker
    pytest.importorskip("rich", reason="rich (a dependency of nvfp4-harness) draws the live table")
    out = io.StringIO()
    p = campaign.Progress(tmp_path, stream=out, live=True).start()
    time.sleep(0.3)
    p.stop()
    text = out.getvalue()
    assert "gw0" in text and "p0" in text and "cases/s" in text
    w.finish()  # the session ended normally: the last line says so instead of "dead" once it exits
    assert campaign.summary_line(campaign.progress_summary(tmp_path)).endswith(" done")


# ----------------------------------------------------------------------------------------------
# a campaign spends its budget
# ----------------------------------------------------------------------------------------------
def test_campaign_fuzzes_past_the_example_cap_until_the_budget_is_spent(tmp_path: Path) -> None:
    results = tmp_path / "results"
    budget = 15.0
    proc = subprocess.run(_pytest_cmd(results, "-p", "no:xdist", "--nvfp4-backends", "torch-emu",
                                      "--nvfp4-properties", "reference_agreement,determinism",
                                      "--nvfp4-examples", "2", "--nvfp4-budget", str(budget)),
                          env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = json.loads((_run(results) / "campaign" / "plan.json").read_text())
    cases = _cases(results)

    def end(r):  # when the case ended (the record's time, to the second)
        import datetime as dt

        return dt.datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()

    # the budget is spent: cases run until the deadline (records' times are whole seconds), and no
    # case starts after it (on a loaded machine the last one may end a little later)
    assert max(end(r) for r in cases) >= plan["start"] + 0.85 * budget - 1
    assert max(end(r) - r["duration_s"] for r in cases) <= plan["deadline"] + 1
    per_pair = {p: sum(1 for r in cases if r["property"] == p) for p in ("reference_agreement", "determinism")}
    # fresh seeds past the cap of 2 examples per test, for both pairs (the budget is shared)
    assert all(n > 2 for n in per_pair.values()), per_pair
    # new examples, not the same ones again (each run starts with Hypothesis's simplest example)
    distinct = {json.dumps([r["property"], r["problem"], r["poison"], r["a_layout"]], sort_keys=True) for r in cases}
    assert len(distinct) > 2 * 2 and len(distinct) >= len(cases) // 2, (len(distinct), len(cases))
    # the budget is shared evenly: neither pair starves.  Time is what is shared, not cases (on a GPU
    # a reference_agreement case costs several determinism cases: its exact reference runs on the
    # CPU), so compare the wall time each pair's cases span
    span = {}
    for p in per_pair:
        mine = [r for r in cases if r["property"] == p]
        span[p] = max(end(r) for r in mine) - min(end(r) - r["duration_s"] for r in mine)
    assert min(span.values()) >= max(span.values()) / 5, (span, per_pair)
    # progress: periodic one-line summaries when stderr is not a terminal
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("campaign")]
    assert len(lines) >= 3, proc.stderr[-2000:]
    assert f"{len(cases)} cases" in lines[-1], (lines[-1], len(cases))


def test_progress_counts_the_grouped_cases_run_before_the_first_dense_pair(tmp_path: Path) -> None:
    """The grouped suite's pairs run before the dense ones (test_grouped.py sorts first); the
    campaign's counters start with the first dense pair, and its last progress line still counts
    every case recorded, as the summary and the report do."""
    results = tmp_path / "results"
    proc = subprocess.run(_pytest_cmd(results, "-p", "no:xdist", "--nvfp4-backends", "grouped-triton-emu,torch-emu",
                                      "--nvfp4-properties", "reference_agreement", "--nvfp4-examples", "2",
                                      "--nvfp4-budget", "12"),
                          env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = _cases(results)
    assert {r["level"] for r in cases} == {"grouped", "gemm"}, sorted({r["level"] for r in cases})
    assert cases[0]["level"] == "grouped"
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("campaign")]
    assert lines and f"{len(cases)} cases" in lines[-1], (lines[-1:], len(cases))


def test_only_the_fuzz_profile_with_a_budget_is_a_campaign() -> None:
    """The ci profile stays derandomized and small: a budget does not make it fuzz past its cap."""
    assert campaign.is_campaign("fuzz", 60.0)
    assert not campaign.is_campaign("ci", 60.0)
    assert not campaign.is_campaign("replay", 60.0)
    assert not campaign.is_campaign("fuzz", None)


# ----------------------------------------------------------------------------------------------
# interruption
# ----------------------------------------------------------------------------------------------
def test_first_signal_asks_to_stop_the_second_aborts() -> None:
    asked = []
    handler = campaign.Interruption(asked.append).install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert asked == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
    finally:
        handler.restore()
    assert signal.getsignal(signal.SIGINT) is not handler._handle


def test_killed_worker_loses_nothing_and_ctrl_c_keeps_every_case_and_renders_the_report(tmp_path: Path) -> None:
    """``nvfp4-harness fuzz -n 2``: one xdist worker is killed by SIGKILL (as the OS's out-of-memory
    killer does) after it recorded cases; the campaign goes on; then Ctrl-C (SIGINT to the command)
    stops it: every recorded case is in the results directory, the report renders."""
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness", "fuzz", "--backends", "torch-emu", "--properties",
           "reference_agreement,determinism,row_isolation", "--examples", "2", "--budget", "300", "-n", "2",
           "--results", str(results), "--report", str(tmp_path / "report.html")]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(ROOT))
    try:
        def victim():
            for st in campaign.worker_states(_run(results)):
                if st.get("cases", 0) >= 2 and st.get("current"):
                    return st
            return None

        st = _wait_for(victim, 240, "a worker with 2 recorded cases", proc)
        stream = _run(results) / f"results-{st['worker']}.jsonl"
        before = stream.read_text().splitlines()
        os.kill(st["pid"], signal.SIGKILL)
        _wait_for(lambda: not campaign._alive(st["pid"]), 10, "the worker to die")
        _wait_for(lambda: len(_cases(results)) > len(before) + 1, 120, "cases after the kill", proc)
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        out, _ = proc.communicate(timeout=120)
        assert time.time() - t0 < 60, "the campaign did not stop promptly"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, out[-3000:]
    after = stream.read_text().splitlines()
    assert after[:len(before)] == before, "records of the killed worker were lost or changed"
    assert "crashed" in out.lower() or "replacing" in out.lower(), out[-3000:]
    # every case a worker counted is in the results directory, and in the session's totals.  A
    # worker saves its state at most every 0.5 s, so the SIGKILLed one may have recorded a few cases
    # its state file never counted; every other worker ended normally and counted exactly its own
    recorded = _cases(results)
    states = campaign.worker_states(_run(results))
    assert {r["worker"] for r in recorded} <= {s["worker"] for s in states}  # a late replacement may have none
    for s in states:
        own = sum(1 for r in recorded if r["worker"] == s["worker"])
        if s["pid"] == st["pid"]:
            assert 2 <= s["cases"] <= own, (s, own)
        else:
            assert s["cases"] == own, (s, own)
    session = json.loads((_run(results) / "session.json").read_text())
    assert session.get("finished")
    assert session["totals"]["pass"] + session["totals"]["fail"] + session["totals"]["crash"] == len(recorded)
    assert (_run(results) / "campaign" / "stop").exists()
    assert "report:" in out and "torch-emu" in (tmp_path / "report.html").read_text()


# ----------------------------------------------------------------------------------------------
# a shared example database on a real Redis server
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, tmp: Path):
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = _free_port()
        self.dir = tmp
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url)
        _wait_for(lambda: self._ping(client), 15, "redis-server to answer")
        return self

    @staticmethod
    def _ping(client) -> bool:
        try:
            return bool(client.ping())
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


@pytest.fixture
def redis_server(tmp_path: Path):
    pytest.importorskip("redis", reason="the redis package is needed for the shared example database")
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does)")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_database_survives_a_redis_restart_and_writes_what_it_queued(tmp_path: Path, redis_server) -> None:
    db = campaign.example_database(tmp_path / "local", redis_server.url, tmp_path)
    remote = campaign.ResilientRedisDatabase(redis_server.url, retry_s=0.2)
    db.save(b"k", b"before")
    assert set(remote.fetch(b"k")) == {b"before"}
    redis_server.stop()
    t0 = time.time()
    db.save(b"k", b"during")                 # no exception: the local database takes it
    assert set(db.fetch(b"k")) == {b"before", b"during"}
    assert time.time() - t0 < 5
    events = [json.loads(line) for line in (tmp_path / "campaign" / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["redis-unreachable"]
    redis_server.start()                     # same port, empty (no persistence)
    time.sleep(2.2)                          # past the reconnection interval
    db.save(b"k2", b"after")
    fresh = campaign.ResilientRedisDatabase(redis_server.url)
    assert set(fresh.fetch(b"k")) == {b"during"}   # queued during the outage, written on reconnection
    assert set(fresh.fetch(b"k2")) == {b"after"}
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "campaign" / "events.jsonl").read_text().splitlines()]
    assert kinds == ["redis-unreachable", "redis-reconnected"]


_WRITER = """
import sys
from harness import campaign
db = campaign.example_database(sys.argv[1], sys.argv[2] or None)
tag, n, size = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
for i in range(n):
    db.save(b"shared-key", (tag + "-%06d-" % i).encode() * (size // 16))
print("done", flush=True)
"""


def test_concurrent_writers_and_a_writer_killed_mid_write(tmp_path: Path, redis_server) -> None:
    local = tmp_path / "local"
    env = _env(tmp_path)
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(local), redis_server.url, f"w{i}", "100", "64"],
                                env=env, stdout=subprocess.PIPE, text=True) for i in range(4)]
    # a writer of large values to the same local database, killed while it writes
    victim = subprocess.Popen([sys.executable, "-c", _WRITER, str(local), "", "big", "100000", str(1 << 20)],
                              env=env, stdout=subprocess.PIPE, text=True)
    for w in writers:
        assert w.communicate(timeout=120)[0].strip() == "done"
    _wait_for(lambda: len(list(local.rglob("*"))) > 450, 60, "the big writer to write")
    victim.kill()
    victim.wait(timeout=10)
    expected = {(f"w{i}-%06d-" % j).encode() * 4 for i in range(4) for j in range(100)}
    remote = set(campaign.ResilientRedisDatabase(redis_server.url).fetch(b"shared-key"))
    assert remote == expected
    from hypothesis.database import DirectoryBasedExampleDatabase

    values = list(DirectoryBasedExampleDatabase(str(local)).fetch(b"shared-key"))
    assert expected <= set(values)
    big = [v for v in values if v.startswith(b"big")]
    assert big, "the killed writer wrote nothing"
    unit = len(b"big-000000-")
    for v in big:  # none torn by the kill
        assert v == v[:unit] * ((1 << 20) // 16), (len(v), v[:unit])


def test_two_nodes_share_one_redis_a_failure_is_replayed_first_and_reports_merge(tmp_path: Path,
                                                                                 redis_server) -> None:
    """Two simulated nodes (processes with different shards, each its own local database) share one
    Redis: node 1 finds the planted bug of a mutant; node 2, taking over node 1's shard afterwards,
    replays that failure first; ``nvfp4-harness report DIR1 DIR2`` holds both nodes."""
    from harness import cli

    pairs = ["--nvfp4-backends", "mutant-rows-unwritten,torch-emu", "--nvfp4-properties", "output_coverage",
             "--nvfp4-examples", "3", "--nvfp4-redis", redis_server.url, "-p", "no:xdist"]
    assert campaign.shard_pairs([("mutant-rows-unwritten", "output_coverage"), ("torch-emu", "output_coverage")],
                                (1, 2)) == [("mutant-rows-unwritten", "output_coverage")]
    r1, r2 = tmp_path / "node1", tmp_path / "node2"
    nodes = [subprocess.Popen(_pytest_cmd(r, *pairs, "--nvfp4-budget", "300", "--nvfp4-shard", f"{i}/2"),
                              env=_env(tmp_path, db=f"db{i}"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i, r in ((1, r1), (2, r2))]
    try:
        # both campaigns run side by side; each is stopped (SIGINT) once it has something to show
        _wait_for(lambda: any((_run(r1) / "cases").glob("*.json")) if (_run(r1) / "cases").is_dir() else False,
                  240, "node 1's minimized failure", nodes[0])
        _wait_for(lambda: len(_cases(r2)) >= 2, 240, "node 2's cases", nodes[1])
        for p in nodes:
            p.send_signal(signal.SIGINT)
        outs = [p.communicate(timeout=120)[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert nodes[0].returncode == 1, outs[0][-3000:]     # the mutant's failure
    assert nodes[1].returncode == 0, outs[1][-3000:]
    case_paths = sorted((_run(r1) / "cases").glob("*.json"))  # the first failure, and any found after it
    # the minimized failures node 1 recorded (one per Hypothesis run that found one: a stop never
    # interrupts shrinking, so the best example of each run in its database is one of these)
    failed = [r["problem"] for r in _records(r1) if r["outcome"] == "fail" and r["backend"] == "mutant-rows-unwritten"]
    assert {r["backend"] for r in _cases(r2)} == {"torch-emu"}
    # node 2 takes node 1's shard, with its own local database (which never saw that pair): the
    # first example it runs of the mutant's pair is node 1's minimized failure, from Redis
    r3 = tmp_path / "node2-again"
    again = subprocess.run(_pytest_cmd(r3, *pairs, "--nvfp4-shard", "1/2", "--nvfp4-profile", "replay"),
                           env=_env(tmp_path, db="db2"), capture_output=True, text=True, timeout=240)
    assert again.returncode == 1, again.stdout[-3000:]
    first = _cases(r3)[0]
    assert first["outcome"] == "fail" and first["backend"] == "mutant-rows-unwritten"
    assert first["problem"] in failed, (first["problem"], failed)
    # one report of both nodes
    merged_html = tmp_path / "merged.html"
    assert cli.main(["report", str(r1), str(r2), "-o", str(merged_html)]) == 0
    merged = merged_html.with_suffix(".results")
    recs = _records(merged)
    assert {r["node"] for r in recs} == {"n1", "n2"}
    assert len(recs) == len(_records(r1)) + len(_records(r2))
    assert all((merged / "cases" / c.name).exists() for c in case_paths)
    html = merged_html.read_text()
    assert "mutant-rows-unwritten" in html and "torch-emu" in html


@pytest.mark.parametrize(("mutant", "correct", "prop", "examples"), [
    ("mutant-rows-unwritten", "torch-emu", "output_coverage", 3),
    # about half the drawn grouped problems cannot show this mutant (with 3 examples, 1 run in 6
    # missed it on the CPU): 20 examples miss it with odds of about 1 in 10^5
    ("mutant-grouped-one-input-scale", "grouped-triton-emu", "reference_agreement", 20),
])
def test_each_pair_keeps_its_own_examples_in_a_shared_database(tmp_path: Path, mutant: str, correct: str,
                                                               prop: str, examples: int) -> None:
    """Each (backend, property) pair, dense or grouped, has its own example-database key: a mutant's
    minimized failure survives a correct backend's run in the same database (on one shared key,
    that run replayed the failure, passed it, and Hypothesis deleted it), and a replay-only run of
    the mutant's pair runs that failure first."""
    pairs = ["--nvfp4-backends", f"{mutant},{correct}", "--nvfp4-properties", prop, "-p", "no:xdist"]
    first = tmp_path / "first"
    # the mutant's pair runs first, the correct backend's pair after it, in one process
    proc = subprocess.run(_pytest_cmd(first, *pairs, "--nvfp4-examples", str(examples)), env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:]
    recs = _cases(first)
    assert recs[0]["backend"] == mutant and recs[-1]["backend"] == correct
    assert all(r["outcome"] == "pass" for r in recs if r["backend"] == correct)
    failed = [r["problem"] for r in recs if r["outcome"] == "fail" and r["final"]]
    assert failed and all(r["backend"] == mutant for r in recs if r["outcome"] == "fail")
    again = tmp_path / "again"
    proc = subprocess.run(_pytest_cmd(again, *pairs, "--nvfp4-profile", "replay"), env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:]
    replayed = _cases(again)
    assert replayed[0]["backend"] == mutant and replayed[0]["outcome"] == "fail"
    assert replayed[0]["problem"] in failed, (replayed[0]["problem"], failed)


def test_the_fuzz_profile_stays_random_on_a_ci_machine() -> None:
    """Hypothesis derandomizes its default profile where it detects CI (the CI variable); the fuzz
    and replay profiles must not inherit that, or every fresh campaign run repeats its examples."""
    code = ("from harness.pytest_plugin import _register_profiles; _register_profiles(); "
            "from hypothesis import settings; "
            "print(*(settings.get_profile(p).derandomize for p in ('fuzz', 'replay', 'ci')))")
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["False", "False", "True"], out.stdout
