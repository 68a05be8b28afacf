"""`make soak`: locust at saturation against a full stack for minutes, watching memory.

Builds on `run_loadtest.py` (same stack: `cde serve` with the embedded Triton and a temporary
SQLite store; same locustfile and statistics). While locust runs, the resident memory (RSS) of
the gateway process and of Triton's process tree (tritonserver and its python-backend stubs) is
sampled every few seconds with psutil. The run passes when no request failed and neither RSS
grew by more than --max-growth from the minute after the warm-up to the last minute (medians).
Samples go to `<reports>/soak_rss.csv`; --record writes the "Soak" section of RESULTS.md.

    .venv/bin/python loadtest/soak.py [--users 32] [--spawn-rate 8] [--run-time 600]
        [--warm-up 120] [--interval 5] [--max-growth 0.10] [--record]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import run_loadtest as lt

SECTION = "## Soak (make soak)"
TRITON_NAME = "tritonserver"
WINDOW_S = 60.0  # RSS before and after is the median over this long


@dataclass(frozen=True)
class Sample:
    """RSS of the gateway and of Triton's process tree at `seconds` after the load started."""

    seconds: float
    gateway_bytes: int
    triton_bytes: int
    triton_processes: int


@dataclass(frozen=True)
class Growth:
    """One process (tree)'s RSS over the run."""

    name: str
    start_bytes: int
    base_bytes: int  # first sample after the warm-up
    end_bytes: int
    peak_bytes: int

    @property
    def ratio(self) -> float:
        """end / base - 1."""
        return self.end_bytes / self.base_bytes - 1.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=int(lt.env_default("CDE_SOAK_USERS", "32")))
    parser.add_argument("--spawn-rate", type=float, default=8.0)
    parser.add_argument(
        "--run-time", type=int, default=int(lt.env_default("CDE_SOAK_RUN_TIME", "600"))
    )
    parser.add_argument(
        "--warm-up", type=float, default=120.0, help="seconds of load before the RSS baseline"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--max-growth", type=float, default=0.10, help="allowed RSS growth after the warm-up"
    )
    parser.add_argument("--model", default=lt.env_default("CDE_MODEL", "demo"))
    parser.add_argument("--reports", type=Path, default=lt.REPORTS / "soak")
    parser.add_argument("--context", default="soak")
    parser.add_argument("--results", type=Path, default=lt.RESULTS)
    parser.add_argument(
        "--record", action="store_true", help=f'replace the "{SECTION}" section of --results'
    )
    args = parser.parse_args(argv)
    if not 1 <= args.users <= lt.MAX_USERS:
        parser.error(f"--users must be within 1..{lt.MAX_USERS}")
    if not 1 <= args.run_time <= lt.MAX_RUN_TIME_S:
        parser.error(f"--run-time must be within 1..{lt.MAX_RUN_TIME_S} seconds")
    if not 0 <= args.warm_up < args.run_time:
        parser.error("--warm-up must be shorter than --run-time")
    if args.interval <= 0 or args.spawn_rate <= 0:
        parser.error("--interval and --spawn-rate must be positive")
    return args


def tree_rss(process: psutil.Process) -> tuple[int, int]:
    """RSS of `process` and all its descendants, and how many there are (gone ones skipped)."""
    total, count = 0, 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for member in members:
        try:
            total += member.memory_info().rss
            count += 1
        except psutil.NoSuchProcess:
            continue
    return total, count


def sample(gateway: psutil.Process, seconds: float) -> Sample:
    """One sample: the `cde serve` process itself, and its tritonserver child's whole tree."""
    tritons = [child for child in gateway.children() if child.name().startswith(TRITON_NAME)]
    triton_bytes, triton_processes = 0, 0
    for triton in tritons:
        rss, count = tree_rss(triton)
        triton_bytes += rss
        triton_processes += count
    return Sample(seconds, gateway.memory_info().rss, triton_bytes, triton_processes)


class Sampler:
    """Samples every `interval_s` in a daemon thread until `stop()`."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = 0.0
        self.samples: list[Sample] = []

    def start(self) -> None:
        """Take the first sample now (time 0 = the load starts), then every interval."""
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> list[Sample]:
        """Stop sampling; the samples taken."""
        self._stopped.set()
        self._thread.join(30)
        return self.samples

    def _run(self) -> None:
        while True:
            try:
                self.samples.append(sample(self._process, time.monotonic() - self._started))
            except psutil.NoSuchProcess:
                return
            if self._stopped.wait(self._interval_s):
                return


def growth(samples: Sequence[Sample], warm_up_s: float, window_s: float = WINDOW_S) -> list[Growth]:
    """Gateway and Triton RSS growth from the first `window_s` after `warm_up_s` to the last
    `window_s` of the run, each the median of its samples: RSS also swings with the batches in
    flight (hundreds of MiB with long documents), which is not growth. Empty when no sample
    was taken after the warm-up."""
    after = [s for s in samples if s.seconds >= warm_up_s]
    if not after:
        return []
    base = [s for s in after if s.seconds <= after[0].seconds + window_s]
    end = [s for s in after if s.seconds >= after[-1].seconds - window_s]
    return [
        Growth(
            name,
            start_bytes=getattr(samples[0], field),
            base_bytes=int(statistics.median(getattr(s, field) for s in base)),
            end_bytes=int(statistics.median(getattr(s, field) for s in end)),
            peak_bytes=max(getattr(s, field) for s in samples),
        )
        for name, field in (("gateway", "gateway_bytes"), ("Triton", "triton_bytes"))
    ]


def verdict(rows: Sequence[lt.StatsRow], growths: Sequence[Growth], max_growth: float) -> list[str]:
    """Reasons the soak failed (empty: it passed); the p99 budget does not apply here."""
    total = next((r for r in rows if r.name == "Aggregated"), None)
    problems = []
    if total is None or total.requests == 0:
        problems.append("no requests were made")
    elif total.failures:
        problems.append(f"{total.failures} of {total.requests} requests failed")
    if not growths:
        problems.append("no RSS sample after the warm-up")
    for g in growths:
        if g.ratio > max_growth:
            problems.append(
                f"{g.name} RSS grew {g.ratio:+.1%} after the warm-up (limit {max_growth:.0%})"
            )
    return problems


def rss_table(growths: Sequence[Growth]) -> list[str]:
    """Markdown table of the RSS figures in MiB."""
    lines = [
        "| process | start MiB | minute after warm-up MiB | last minute MiB | peak MiB | growth |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    mib = 1 << 20
    for g in growths:
        lines.append(
            f"| {g.name} | {g.start_bytes / mib:.0f} | {g.base_bytes / mib:.0f} | "
            f"{g.end_bytes / mib:.0f} | {g.peak_bytes / mib:.0f} | {g.ratio:+.1%} |"
        )
    return lines


def shown(path: Path) -> str:
    """`path` relative to the repository when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(lt.REPO)) if resolved.is_relative_to(lt.REPO) else str(path)


def write_samples(path: Path, samples: Sequence[Sample]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seconds", "gateway_rss_bytes", "triton_rss_bytes", "triton_processes"])
        for s in samples:
            writer.writerow(
                [f"{s.seconds:.1f}", s.gateway_bytes, s.triton_bytes, s.triton_processes]
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.reports.mkdir(parents=True, exist_ok=True)
    (args.reports / "loadtest.json").unlink(missing_ok=True)  # never judge an earlier run
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cde-soak-") as store_dir:
        print(f"starting cde serve (model {args.model})", flush=True)
        log = args.reports / "server.log"
        with lt.running_gateway(args.model, Path(store_dir), log) as gateway:
            print(f"gateway ready on {gateway.address}", flush=True)
            lt.create_shared_context(gateway.address, args.context)
            sampler = Sampler(gateway.process.pid, args.interval)
            sampler.start()
            locust_status = lt.run_locust(args, gateway.address)
            samples = sampler.stop()
        print("stack stopped", flush=True)
    write_samples(args.reports / "soak_rss.csv", samples)
    stats_file = args.reports / "loadtest.json"
    if not stats_file.exists():
        print(f"locust wrote no statistics (exit status {locust_status})", file=sys.stderr)
        return 1
    rows = lt.read_stats(stats_file)
    growths = growth(samples, args.warm_up)
    problems = verdict(rows, growths, args.max_growth)
    lines = [*lt.table(rows), "", *rss_table(growths)]
    print("\n".join(lines))
    triton_processes = max((s.triton_processes for s in samples), default=0)
    summary = (
        f"{args.users} users (spawn rate {args.spawn_rate:g}/s) for {args.run_time} s, model "
        f"`{args.model}`, {os.cpu_count()} cores; 1-min load average {load_start:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end. RSS sampled every {args.interval:g} s "
        f"({len(samples)} samples; Triton = tritonserver + stubs, {triton_processes} "
        f"processes), medians of the minute after {args.warm_up:g} s of load and of the last "
        "minute, limit "
        f"{args.max_growth:.0%}: "
        + ("**passed**." if not problems else "**failed** (" + "; ".join(problems) + ").")
    )
    print(summary)
    intro = (
        f"`loadtest/soak.py` on {datetime.now(UTC):%Y-%m-%d}: the load test's "
        "stack and users (`run_loadtest.py`, `locustfile.py`) at saturation, "
        "checking for failures and memory growth. Samples: "
        f"`{shown(args.reports / 'soak_rss.csv')}`."
    )
    body = [*lines, "", summary]
    return lt.conclude(args.record, args.results, SECTION, intro, body, problems, locust_status)


if __name__ == "__main__":
    raise SystemExit(main())
