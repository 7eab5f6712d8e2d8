"""The benchmark harness runs end to end at tiny sizes, so it cannot rot unnoticed.

No timing is asserted (machines are noisy): only that each benchmark completes, counts what
it should, reports its targets, and stops every process it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.bench import bench
from tests.bench import console as console_bench
from tests.bench.processes import py_spy
from tests.bench.profiles import summarize

pytestmark = [pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY_DISPATCH = ["--tasks", "200", "--warmup-tasks", "20", "--workers", "50", "--tenants", "0"]
TINY_CONCURRENCY = [
    "--concurrency-tasks", "40", "--concurrency-warmup-tasks", "10",
    "--concurrency", "20", "--latency-ms", "50", "--tenants", "0",
]  # fmt: skip
TINY_HTTP = ["--duration", "1", "--http-warmup", "0.5", "--connections", "4"]
TINY_FOLLOWERS = ["--followers", "300", "--followers-sample", "100"]


def run_bench(
    capsys: pytest.CaptureFixture[str], workdir: Path, *args: str
) -> tuple[int, dict[str, Any]]:
    code = bench.main([*args, "--json", "--workdir", str(workdir), "--timeout", "60"])
    document: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return code, document


def started_pids(workdir: Path) -> list[int]:
    return [
        int(line.split()[-1])
        for path in workdir.rglob("pids.txt")
        for line in path.read_text().splitlines()
    ]


def assert_all_stopped(workdir: Path) -> None:
    pids = started_pids(workdir)
    assert pids, "the benchmark recorded no process"
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_dispatch_counts_every_task_through_a_worker(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, document = run_bench(capsys, tmp_path, "dispatch", *TINY_DISPATCH)

    result = document["benchmarks"]["dispatch"]
    assert code == 0, result
    assert result["status"] == "complete"
    assert result["completed"] == result["tasks"] == 200
    assert result["failed"] == 0
    assert result["tasks_per_second"] > 0
    assert isinstance(result["target"]["met"], bool)
    assert set(result["cpu_during_measurement"]) == {"worker", "redis-server", "harness"}
    assert document["tracing"].startswith("off")
    assert result["otlp_sink"] is None
    assert_all_stopped(tmp_path)


def test_dispatch_compares_the_fair_path_with_fifo_in_the_same_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, document = run_bench(
        capsys, tmp_path, "dispatch", *TINY_DISPATCH, "--tenants", "10", "--rounds", "2"
    )

    result = document["benchmarks"]["dispatch"]
    assert code == 0, result
    assert result["status"] == "complete"
    assert [f["tenants"] for f in result["fair"]] == [1, 10]
    assert len(result["rounds_tasks_per_second"]) == 2
    for fair, floor in zip(result["fair"], (">= 0.8", ">= 0.5"), strict=True):
        assert fair["status"] == "complete", fair
        assert len(fair["rounds_tasks_per_second"]) == 2
        assert fair["tasks_per_second"] > 0
        assert fair["over_fifo"] == pytest.approx(
            fair["tasks_per_second"] / result["tasks_per_second"], rel=0.01
        )
        assert fair["target"]["over_fifo"] == floor
        assert isinstance(fair["target"]["met"], bool)
    assert_all_stopped(tmp_path)


def test_concurrency_on_the_fair_path_reports_seconds_against_the_ideal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, document = run_bench(
        capsys, tmp_path, "concurrency", *TINY_CONCURRENCY, "--tenants", "10", "--rounds", "2"
    )

    result = document["benchmarks"]["concurrency"]
    assert code == 0, result
    assert [f["tenants"] for f in result["fair"]] == [1, 10]
    assert len(result["rounds_seconds"]) == 2
    assert result["seconds"] in result["rounds_seconds"]  # its median round
    for fair in result["fair"]:
        assert fair["status"] == "complete", fair
        assert fair["target"]["limit_seconds"] == pytest.approx(0.125)
        assert fair["over_ideal"] > 0
        assert len(fair["rounds_seconds"]) == 2
        assert fair["seconds"] in fair["rounds_seconds"]
    assert_all_stopped(tmp_path)


def test_concurrency_reports_seconds_against_the_ideal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, document = run_bench(capsys, tmp_path, "concurrency", *TINY_CONCURRENCY)

    result = document["benchmarks"]["concurrency"]
    assert code == 0, result
    assert result["status"] == "complete"
    assert result["completed"] == 40
    assert result["ideal_seconds"] == pytest.approx(0.1)
    assert result["target"]["limit_seconds"] == pytest.approx(0.125)
    assert_all_stopped(tmp_path)


@pytest.mark.parametrize(
    "loadgen",
    [
        pytest.param(
            "wrk",
            marks=pytest.mark.skipif(
                shutil.which("wrk") is None and not os.environ.get("CI"),
                reason="wrk not installed (tests/run.sh installs it; under CI this runs)",
            ),
        ),
        "python",
    ],
)
def test_http_measures_submissions_with_auth_on(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, loadgen: str
) -> None:
    code, document = run_bench(capsys, tmp_path, "http", *TINY_HTTP, "--loadgen", loadgen)

    result = document["benchmarks"]["http"]
    assert code == 0, result
    assert result["status"] == "complete"
    assert result["loadgen"] in {"wrk", "python-aiohttp"}
    cases = result["cases"]
    assert list(cases) == ["publish", "join", "hit"]  # every case, in one run
    for case in cases.values():
        assert case["status"] == "complete"
        assert case["requests"] > 0
        assert case["errors"]["status"] == 0  # every answer a 2xx: the key was accepted
        assert set(case["latency_ms"]) >= {"p50", "p99"}
        assert case["api_cpu_us_per_request"] > 0
    # "cache": false: every accepted submission is on the tasks stream (the warm-up's too).
    assert cases["publish"]["tasks_stream_length"] >= cases["publish"]["requests"]
    # The same prompt with the cache on joins the first task: almost nothing is published
    # (only what came before the first was confirmed published ran on its own).
    assert 1 <= cases["join"]["tasks_stream_length"] < cases["join"]["requests"] / 2
    # After the first task succeeded, every request is a cache hit: only the first ran.
    assert cases["hit"]["tasks_stream_length"] == 1
    assert set(result["over_publish"]) == {"join", "hit"}
    assert_all_stopped(tmp_path)


def test_http_runs_one_case_when_asked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, document = run_bench(capsys, tmp_path, "http", *TINY_HTTP, "--case", "join")

    result = document["benchmarks"]["http"]
    assert code == 0, result
    assert list(result["cases"]) == ["join"]
    assert result["over_publish"] is None
    assert_all_stopped(tmp_path)


def test_followers_joins_many_tasks_to_one_and_ends_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, document = run_bench(capsys, tmp_path, "followers", *TINY_FOLLOWERS)

    result = document["benchmarks"]["followers"]
    assert code == 0, result
    assert result["status"] == "complete"
    assert result["followers"] == 300
    assert result["not_joined"] == 0
    assert [s["after_followers"] for s in result["samples"]] == [0, 100, 200]
    assert result["tenths"]["samples_each"] == 1
    for key in ("wall_us_per_join", "harness_cpu_us_per_join", "redis_cpu_us_per_join"):
        assert result["first_sample"][key] is not None
        assert result["last_sample"][key] is not None
    assert result["terminal_event"]["applied"] is True
    assert result["terminal_event"]["longest_redis_command"].startswith("EVALSHA")
    assert result["sampled_followers_with_the_result"] == result["sampled_followers"] == 4
    assert result["sampled_followers_expiring_with_the_leader"] == 4
    # The leader's record is the same size after 300 joins as before the first.
    before, after = result["leader_record_bytes"].values()
    assert before == after
    assert_all_stopped(tmp_path)


def test_followers_measures_the_memory_store_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, document = run_bench(
        capsys, tmp_path, "followers", *TINY_FOLLOWERS, "--followers-store", "memory"
    )

    result = document["benchmarks"]["followers"]
    assert code == 0, result
    assert result["store"] == "MemoryTaskStore"
    assert result["sampled_followers_with_the_result"] == 4
    assert result["last_sample"]["redis_cpu_us_per_join"] is None


def test_chat_measures_what_the_orchestrator_adds_to_a_chat_client_s_wait(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, document = run_bench(
        capsys, tmp_path, "chat", "--chat-clients", "4", "--chat-rounds", "1",
        "--chat-latency-ms", "50",
        "--service-env", "LOG_LEVEL=INFO", "--service-env", "EVENT_LOOP=asyncio",
    )  # fmt: skip

    result = document["benchmarks"]["chat"]
    assert code == 0, result
    assert result["status"] == "complete"
    for key in ("provider_direct_ms", "streamed_ms", "non_streamed_ms"):
        assert set(result[key]) == {"first", "total"}
        assert result[key]["first"]["p50"] > 0
    # The provider's latency is in every path: nothing answers before it.
    assert result["streamed_ms"]["first"]["p50"] >= 50
    assert set(result["added_to_first_token_ms"]) == {"p50", "p99"}
    # --service-env reaches both services.
    for log in ("api.log", "worker.log"):
        assert "event loop asyncio" in (tmp_path / "chat" / log).read_text()
    assert_all_stopped(tmp_path)


@pytest.mark.parametrize(
    ("benchmark", "sizes"),
    [("dispatch", TINY_DISPATCH), ("http", [*TINY_HTTP, "--case", "publish"])],
    ids=["dispatch", "http"],
)
def test_tracing_exports_the_services_spans_to_the_sink(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, benchmark: str, sizes: list[str]
) -> None:
    code, document = run_bench(capsys, tmp_path, benchmark, *sizes, "--tracing", "1")

    result = document["benchmarks"][benchmark]
    assert code == 0, result
    assert result["status"] == "complete"
    assert document["tracing"]["ratio"] == 1.0
    assert document["tracing"]["exporter"] == "OTLP/HTTP to a local sink"
    measured = result["cases"]["publish"] if benchmark == "http" else result
    sink = measured["otlp_sink"]
    assert sink["total"]["spans"] > 0
    assert sink["total"]["rejected"] == 0
    assert 0 <= sink["during_measurement"]["spans"] <= sink["total"]["spans"]
    assert "otlp-sink" in measured["cpu_during_measurement"]
    assert any(line.startswith("otlp-sink ") for line in _pids_lines(tmp_path))
    assert_all_stopped(tmp_path)


def _pids_lines(workdir: Path) -> list[str]:
    return [line for path in workdir.rglob("pids.txt") for line in path.read_text().splitlines()]


def test_baseline_runs_the_bare_equivalents_under_the_same_conditions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, document = run_bench(
        capsys, tmp_path, "all", "--baseline",
        *TINY_DISPATCH, *TINY_CONCURRENCY, *TINY_HTTP, *TINY_FOLLOWERS,
    )  # fmt: skip

    assert code == 0, document
    benchmarks = document["benchmarks"]
    for name in ("dispatch", "concurrency"):
        baseline = benchmarks[name]["baseline"]
        assert baseline["status"] == "complete", (name, baseline)
        assert baseline["orchestrator_over_baseline"] > 0
    assert benchmarks["dispatch"]["baseline"]["tasks_per_second"] > 0
    assert benchmarks["concurrency"]["baseline"]["seconds"] > 0
    http = benchmarks["http"]
    assert http["baseline"]["status"] == "complete"
    assert http["baseline"]["requests_per_second"] > 0
    # Each case against the same bare run: what the headline's "of bare" shows.
    assert set(http["baseline"]["orchestrator_over_baseline"]) == {"publish", "join", "hit"}
    for case in http["cases"].values():
        assert case["over_baseline"] > 0
    assert benchmarks["followers"]["status"] == "complete"
    assert_all_stopped(tmp_path)


def test_a_stalled_benchmark_is_incomplete_and_exits_non_zero(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = bench.main(
        [
            "concurrency",
            "--json",
            "--workdir",
            str(tmp_path),
            "--timeout",
            "1",
            "--concurrency-tasks",
            "10",
            "--concurrency-warmup-tasks",
            "0",
            "--concurrency",
            "5",
            "--latency-ms",
            "60000",
        ]
    )

    result = orjson.loads(capsys.readouterr().out)["benchmarks"]["concurrency"]
    assert code == 1
    assert result["status"] == "incomplete"
    assert result["error"].startswith("0 of 10 tasks ended")
    assert_all_stopped(tmp_path)


def test_sigterm_stops_everything_the_harness_started(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.bench.bench",
            "concurrency",
            "--json",
            "--workdir",
            str(tmp_path),
            "--concurrency-tasks",
            "10",
            "--concurrency-warmup-tasks",
            "0",
            "--latency-ms",
            "60000",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while len(started_pids(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(started_pids(tmp_path)) >= 2, "redis and the worker never started"
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 130, stderr
    assert_all_stopped(tmp_path)


@pytest.mark.skipif(py_spy() is None, reason="py-spy not installed")
def test_profile_adds_where_the_worker_spent_its_cpu(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, document = run_bench(capsys, tmp_path, "dispatch", *TINY_DISPATCH, "--profile")

    result = document["benchmarks"]["dispatch"]
    assert code == 0, result
    assert result["profile_worker"]["samples"] > 0
    assert result["profile_worker"]["self_pct_top"]
    assert_all_stopped(tmp_path)


def test_profile_summary_of_raw_stacks(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "run (/x/site-packages/aiohttp/web.py:10);handle (/x/orchestrator_api/routes.py:5) 3\n"
        "run (/x/site-packages/aiohttp/web.py:10) 1\n"
    )

    summary = summarize(raw, rate=100)

    assert summary["samples"] == 4
    assert summary["busy_seconds"] == 0.04
    assert summary["self_pct_top"][0] == ["handle (/x/orchestrator_api/routes.py)", 75.0]
    assert summary["self_pct_by_package"] == {"orchestrator_api": 75.0, "aiohttp": 25.0}
    assert ["run (aiohttp/web.py)", 100.0] in summary["inclusive_pct_top"]


@pytest.mark.skipif(not console_bench.CHROMIUM.exists(), reason="Debian's chromium is missing")
def test_console_reports_cold_and_warm_load_times(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = console_bench.main(
        ["--runs", "1", "--tasks", "3", "--json", "--workdir", str(tmp_path), "--timeout", "60"]
    )
    result = orjson.loads(capsys.readouterr().out)
    assert code == 0, result
    for load in ("cold", "warm"):
        assert result[load]["task_list_ms"]["median"] > 0
        assert result[load]["files"] >= 3
    # The warm load revalidates: nothing but headers comes again.
    assert result["warm"]["transferred_bytes"] < result["cold"]["transferred_bytes"]
    assert isinstance(result["target"]["met"], bool)
    assert_all_stopped(tmp_path)
