"""`make loadtest`: start the stack, run locust headless for a bounded time, check the result.

Starts `cde serve` (embedded Triton; the demo model unless CDE_MODEL is set) on free loopback
ports with a temporary SQLite store, creates the shared context set, runs
`locust -f loadtest/locustfile.py --headless` with bounded users and time (CSV and HTML reports
under loadtest/reports/), stops the stack, and exits non-zero if any request failed, none was
made, or the aggregated p99 latency exceeds the budget.

    .venv/bin/python loadtest/run_loadtest.py [--users 8] [--spawn-rate 8] [--run-time 60]
        [--p99-ms 10000] [--record]      # env: CDE_LOADTEST_USERS, ..._SPAWN_RATE, ..._RUN_TIME,
                                        #      CDE_LOADTEST_P99_MS, CDE_MODEL
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from results import replace_section

LOADTEST = Path(__file__).resolve().parent
REPO = LOADTEST.parent
REPORTS = LOADTEST / "reports"
RESULTS = LOADTEST / "RESULTS.md"
LOCUSTFILE = LOADTEST / "locustfile.py"
SECTION = "## Load test (make loadtest)"
MAX_USERS = 256
MAX_RUN_TIME_S = 900
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Gateway:
    """A running `cde serve` process and where it listens."""

    process: subprocess.Popen[str]
    address: str
    log: Path


@dataclass(frozen=True)
class StatsRow:
    """One row of locust's loadtest_stats.csv."""

    kind: str
    name: str
    requests: int
    failures: int
    median_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    rps: float


def env_default(name: str, default: str) -> str:
    return os.environ.get(name) or default


def loadtest_overrides() -> str:
    """The CDE_LOADTEST_* settings given in the environment, as `NAME=value` (for the record)."""
    return ", ".join(
        f"`{name}={value}`"
        for name, value in sorted(os.environ.items())
        if name.startswith("CDE_LOADTEST_")
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=int(env_default("CDE_LOADTEST_USERS", "8")))
    parser.add_argument(
        "--spawn-rate", type=float, default=float(env_default("CDE_LOADTEST_SPAWN_RATE", "8"))
    )
    parser.add_argument(
        "--run-time",
        type=int,
        default=int(env_default("CDE_LOADTEST_RUN_TIME", "60")),
        help="seconds of load",
    )
    parser.add_argument(
        "--p99-ms",
        type=float,
        default=float(env_default("CDE_LOADTEST_P99_MS", "10000")),
        help="budget of the aggregated 99th-percentile latency",
    )
    parser.add_argument("--model", default=env_default("CDE_MODEL", "demo"))
    parser.add_argument("--reports", type=Path, default=REPORTS)
    parser.add_argument("--context", default=env_default("CDE_LOADTEST_CONTEXT", "loadtest"))
    parser.add_argument(
        "--record", action="store_true", help=f'replace the "{SECTION}" section of RESULTS.md'
    )
    args = parser.parse_args(argv)
    if not 1 <= args.users <= MAX_USERS:
        parser.error(f"--users must be within 1..{MAX_USERS}")
    if not 1 <= args.run_time <= MAX_RUN_TIME_S:
        parser.error(f"--run-time must be within 1..{MAX_RUN_TIME_S} seconds")
    if args.spawn_rate <= 0:
        parser.error("--spawn-rate must be positive")
    return args


@contextlib.contextmanager
def running_gateway(model: str, store_dir: Path, log: Path) -> Iterator[Gateway]:
    """`cde serve` on free loopback ports with a SQLite store in `store_dir`; stopped on exit."""
    from cde_server.triton.launcher import free_ports

    port, triton_grpc, triton_http, triton_metrics = free_ports(4)
    env = dict(os.environ)
    env.update(
        CDE_MODEL=model,
        CDE_HOST="127.0.0.1",
        CDE_PORT=str(port),
        CDE_STORE=f"sqlite://{store_dir / 'store.db'}",
        CDE_METRICS_PORT="off",
        CDE_HTTP_PORT="off",  # locust speaks gRPC; 8080 may be taken
        CDE_LOG_LEVEL="WARNING",
        CDE_TRITON_BIND_ADDRESS="127.0.0.1",
        CDE_TRITON_HOST="127.0.0.1",
        CDE_TRITON_GRPC_PORT=str(triton_grpc),
        CDE_TRITON_HTTP_PORT=str(triton_http),
        CDE_TRITON_METRICS_PORT=str(triton_metrics),
        CDE_TRITON_EXIT_TIMEOUT_S="5",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    with log.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cde_server.cli.main", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
        )
        try:
            wait_until_ready(process, READY_TIMEOUT_S, log)
            yield Gateway(process, f"127.0.0.1:{port}", log)
        finally:
            stop(process)


def wait_until_ready(process: subprocess.Popen[str], timeout_s: float, log: Path) -> None:
    """Block until `cde serve` prints that the gateway is ready (RuntimeError otherwise)."""
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(stream: Iterator[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, args=(process.stdout,), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"cde serve exited with {process.wait()}; {log} ends:\n{tail}")
        if "gateway ready" in line:
            return
    raise RuntimeError(f"cde serve not ready after {timeout_s:.0f} s; see {log}")


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM (the gateway drains, then stops Triton); SIGKILL the group if that hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print("cde serve did not stop in time; killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left
    process.wait()


def create_shared_context(address: str, name: str) -> float:
    """Create (or replace) the shared context set from generated documents; seconds taken."""
    import corpus
    from cde_client import CdeClient

    documents = corpus.context_documents(int(env_default("CDE_LOADTEST_CONTEXT_DOCUMENTS", "64")))
    started = time.perf_counter()
    with CdeClient(address, timeout=600) as client:
        client.create_context_set(name, documents, replace=True, timeout=600)
    return time.perf_counter() - started


def run_locust(args: argparse.Namespace, address: str) -> int:
    """Run locust headless against `address`; its exit status."""
    args.reports.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(CDE_ADDRESS=address, CDE_LOADTEST_CONTEXT=args.context)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        f"{args.run_time}s",
        "--stop-timeout",
        "30",
        "--only-summary",
        "--csv",
        str(args.reports / "loadtest"),
        "--json-file",
        str(args.reports / "loadtest"),
        "--html",
        str(args.reports / "loadtest.html"),
    ]
    print("$ " + " ".join(command[2:]), flush=True)
    return subprocess.run(command, env=env, timeout=args.run_time + 180, check=False).returncode


def read_stats(path: Path) -> list[StatsRow]:
    """Per-name rows and an "Aggregated" row from locust's final JSON statistics.

    The JSON is written after every user has stopped, so unlike the CSV it includes the calls
    that finished during shutdown; percentiles come from locust's own histogram code.
    """
    from locust.stats import RequestStats, StatsEntry

    stats = RequestStats()
    entries = []
    for data in json.loads(path.read_text(encoding="utf-8")):
        entry = StatsEntry.unserialize(data, stats)
        entry.response_times = {int(ms): n for ms, n in data["response_times"].items()}
        entries.append(entry)
    total = stats.total  # "Aggregated"; its time span is the test's, as locust reports rates
    for entry in entries:
        total.extend(entry)
    return [
        StatsRow(
            kind=entry.method,
            name=entry.name,
            requests=entry.num_requests,
            failures=entry.num_failures,
            median_ms=entry.get_response_time_percentile(0.5) if entry.num_requests else 0.0,
            p95_ms=entry.get_response_time_percentile(0.95) if entry.num_requests else 0.0,
            p99_ms=entry.get_response_time_percentile(0.99) if entry.num_requests else 0.0,
            max_ms=entry.max_response_time or 0.0,
            rps=entry.total_rps,
        )
        for entry in [*sorted(entries, key=lambda e: e.name), total]
    ]


def table(rows: Sequence[StatsRow]) -> list[str]:
    """Markdown table of the stats rows."""
    lines = [
        "| name | requests | failures | req/s | median ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r.name if r.name == "Aggregated" else f"{r.kind} {r.name}"
        lines.append(
            f"| {name} | {r.requests} | {r.failures} | {r.rps:.2f} | {r.median_ms:.0f} | "
            f"{r.p95_ms:.0f} | {r.p99_ms:.0f} | {r.max_ms:.0f} |"
        )
    return lines


def verdict(rows: Sequence[StatsRow], p99_budget_ms: float) -> list[str]:
    """Reasons the run failed (empty: it passed)."""
    total = next((r for r in rows if r.name == "Aggregated"), None)
    if total is None or total.requests == 0:
        return ["no requests were made"]
    problems = []
    if total.failures:
        problems.append(f"{total.failures} of {total.requests} requests failed")
    if total.p99_ms > p99_budget_ms:
        problems.append(f"p99 {total.p99_ms:.0f} ms exceeds the budget of {p99_budget_ms:.0f} ms")
    return problems


def conclude(
    record: bool,
    results: Path,
    heading: str,
    intro: str,
    body: Sequence[str],
    problems: Sequence[str],
    locust_status: int,
) -> int:
    """Write the section (when `record`), print the problems; the exit status of the run."""
    if record:
        replace_section(results, heading, "\n".join([heading, "", intro, "", *body, ""]))
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if locust_status != 0 and not problems:
        print(f"FAILED: locust exited with {locust_status}", file=sys.stderr)
        return 1
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(LOADTEST))
    args.reports.mkdir(parents=True, exist_ok=True)
    (args.reports / "loadtest.json").unlink(missing_ok=True)  # never judge an earlier run
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cde-loadtest-") as store_dir:
        print(f"starting cde serve (model {args.model})", flush=True)
        with running_gateway(args.model, Path(store_dir), args.reports / "server.log") as gateway:
            startup_s = time.perf_counter() - started
            print(f"gateway ready on {gateway.address} after {startup_s:.0f} s", flush=True)
            context_s = create_shared_context(gateway.address, args.context)
            print(f"context set {args.context!r} created in {context_s:.1f} s", flush=True)
            locust_status = run_locust(args, gateway.address)
        print("stack stopped", flush=True)
    stats_file = args.reports / "loadtest.json"
    if not stats_file.exists():
        print(f"locust wrote no statistics (exit status {locust_status})", file=sys.stderr)
        return 1
    rows = read_stats(stats_file)
    problems = verdict(rows, args.p99_ms)
    lines = table(rows)
    print("\n".join(lines))
    summary = (
        f"{args.users} users (spawn rate {args.spawn_rate:g}/s) for {args.run_time} s, model "
        f"`{args.model}`, {os.cpu_count()} cores; 1-min load average {load_start:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end; stack start-up {startup_s:.0f} s, shared "
        f"context set {context_s:.1f} s. p99 budget {args.p99_ms:.0f} ms: "
        + ("**passed**." if not problems else "**failed** (" + "; ".join(problems) + ").")
    )
    print(summary)
    intro = (
        f"`loadtest/run_loadtest.py` on {datetime.now(UTC):%Y-%m-%d}: locust "
        "headless through `cde_client` against `cde serve` (embedded Triton, "
        "SQLite store). User classes of `loadtest/locustfile.py`, weighted "
        "10 : 4 : 1 : 1: short queries, 200-500-token documents, bulk EmbedStream, "
        "context-set create + delete; texts per call and pacing: the locustfile's "
        "defaults"
        + (f", except {overrides}" if (overrides := loadtest_overrides()) else "")
        + ". Reports: `loadtest/reports/loadtest*.csv`, `loadtest.html`."
    )
    return conclude(
        args.record, RESULTS, SECTION, intro, [*lines, "", summary], problems, locust_status
    )


if __name__ == "__main__":
    raise SystemExit(main())
