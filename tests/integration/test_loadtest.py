"""Load-test smoke: the locustfile loads, the corpus is deterministic and varied, and a short
`run_loadtest.py` run (cde serve on the tiny checkpoint + headless locust) has zero failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import TINY_CHECKPOINT as TINY

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "loadtest"

SCENARIOS = {"Embed/query", "Embed/document", "EmbedStream/bulk", "CreateContextSet"}

sys.path.insert(0, str(LOADTEST))
import corpus  # noqa: E402
import results  # noqa: E402
import run_loadtest  # noqa: E402
import soak  # noqa: E402


def test_locustfile_loads_with_every_scenario() -> None:
    # In a subprocess: importing locust monkey-patches this process for gevent.
    listed = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOADTEST / "locustfile.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for user in ("QueryUser", "DocumentUser", "BulkStreamUser", "ContextSetUser"):
        assert user in listed.stdout


def test_corpus_is_deterministic_and_varied() -> None:
    queries = corpus.queries(300)
    documents = corpus.documents(40)
    assert queries == corpus.queries(300)
    assert documents == corpus.documents(40)
    assert corpus.queries(50, seed=1) != queries[:50]
    assert len(set(queries)) == len(queries)
    assert len(set(documents)) == len(documents)
    assert len({q.split()[0] for q in queries}) >= 5  # not one template
    assert all(4 <= corpus.token_count(q) <= 12 for q in queries)
    lengths = [corpus.token_count(d) for d in documents]
    assert all(200 <= n <= 500 for n in lengths)
    assert max(lengths) - min(lengths) >= 100  # lengths vary too
    fixed = corpus.documents(5, min_tokens=256, max_tokens=256)
    assert {corpus.token_count(d) for d in fixed} == {256}


def test_corpus_token_counts_match_the_bert_tokenizer() -> None:
    from cde_model.tokenizer import bundled_vocabulary_dir
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_vocabulary_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    for text in corpus.queries(100) + corpus.documents(10) + corpus.context_documents(10):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        assert len(encoded.ids) == corpus.token_count(text), text


def test_verdict_and_results_section(tmp_path: Path) -> None:
    def row(name: str, failures: int, p99: float) -> run_loadtest.StatsRow:
        return run_loadtest.StatsRow("grpc", name, 10, failures, 5.0, 9.0, p99, p99, 1.0)

    assert run_loadtest.verdict([row("Aggregated", 0, 100.0)], 200.0) == []
    assert len(run_loadtest.verdict([row("Aggregated", 1, 100.0)], 200.0)) == 1
    assert len(run_loadtest.verdict([row("Aggregated", 0, 300.0)], 200.0)) == 1
    assert run_loadtest.verdict([], 200.0) == ["no requests were made"]

    page = tmp_path / "RESULTS.md"
    page.write_text("# Benchmark results\n\n## A\n\nkeep\n\n## Load\n\nold\n\n## B\n\nkeep b\n")
    results.replace_section(page, "## Load", "## Load\n\nnew")
    assert page.read_text() == (
        "# Benchmark results\n\n## A\n\nkeep\n\n## Load\n\nnew\n\n## B\n\nkeep b\n"
    )
    results.replace_section(page, "## C", "## C\n\nc")
    assert page.read_text().endswith("## B\n\nkeep b\n\n## C\n\nc\n")


def test_soak_growth_is_measured_after_the_warm_up() -> None:
    mib = 1 << 20
    samples = [
        soak.Sample(0.0, 50 * mib, 500 * mib, 5),  # start-up growth is not judged
        soak.Sample(120.0, 90 * mib, 1000 * mib, 5),
        soak.Sample(300.0, 95 * mib, 1200 * mib, 5),
        soak.Sample(600.0, 98 * mib, 1050 * mib, 5),
    ]
    gateway, triton = soak.growth(samples, warm_up_s=120.0)
    assert (gateway.base_bytes, gateway.end_bytes) == (90 * mib, 98 * mib)
    assert triton.peak_bytes == 1200 * mib and abs(triton.ratio - 0.05) < 1e-9
    ok = run_loadtest.StatsRow("grpc", "Aggregated", 10, 0, 5.0, 9.0, 9.0, 9.0, 1.0)
    assert soak.verdict([ok], [gateway, triton], max_growth=0.10) == []
    assert len(soak.verdict([ok], [gateway, triton], max_growth=0.06)) == 1  # gateway +8.9%
    failed = run_loadtest.StatsRow("grpc", "Aggregated", 10, 2, 5.0, 9.0, 9.0, 9.0, 1.0)
    assert soak.verdict([failed], [gateway], max_growth=0.10) == ["2 of 10 requests failed"]
    assert soak.growth(samples, warm_up_s=700.0) == []
    levels = (1000, 1200, 1100)  # RSS swinging with the batches in flight, no growth
    swinging = [soak.Sample(120.0 + 5 * i, mib, levels[i % 3] * mib, 5) for i in range(60)]
    _, swing = soak.growth(swinging, warm_up_s=120.0)
    assert swing.ratio == 0.0 and swing.peak_bytes == 1200 * mib  # medians, not single samples
    assert soak.verdict([ok], [], max_growth=0.10) == ["no RSS sample after the warm-up"]


@pytest.mark.timeout(420)
def test_short_load_test_has_no_failures(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    completed = subprocess.run(
        [
            sys.executable,
            str(LOADTEST / "run_loadtest.py"),
            "--model",
            str(TINY),
            "--users",
            "16",
            "--spawn-rate",
            "16",
            "--run-time",
            "20",
            "--p99-ms",
            "30000",
            "--reports",
            str(reports),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    stats = {entry["name"]: entry for entry in json.loads((reports / "loadtest.json").read_text())}
    assert set(stats) >= SCENARIOS, output[-4000:]
    assert all(entry["num_failures"] == 0 for entry in stats.values())
    assert stats["Embed/query"]["num_requests"] >= 10
    assert (reports / "loadtest_stats.csv").is_file()
    assert (reports / "loadtest.html").stat().st_size > 0
