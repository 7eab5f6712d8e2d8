"""deployment/docker/healthcheck.py: which URL it probes for which service, and its verdicts."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.deployment.support import HEALTHCHECK, load_module
from tests.support.redis_server import free_port

healthcheck = load_module(HEALTHCHECK, "deployment_healthcheck")


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_the_service_is_read_from_the_ai_orchestrator_command_line() -> None:
    argv = ["/opt/venv/bin/python", "/opt/venv/bin/ai-orchestrator", "worker", "--concurrency", "9"]
    assert healthcheck.service_command(argv) == ("worker", ["--concurrency", "9"])
    assert healthcheck.service_command(["/opt/venv/bin/ai-orchestrator", "api"]) == ("api", [])
    assert healthcheck.service_command(["redis-server"]) == ("", [])


def test_the_api_is_probed_on_its_port_over_loopback() -> None:
    assert healthcheck.probe_url("api", [], {}) == "http://127.0.0.1:8080/health"
    assert healthcheck.probe_url("api", [], {"PORT": "9000", "HOST": "0.0.0.0"}) == (
        "http://127.0.0.1:9000/health"
    )
    assert healthcheck.probe_url("api", ["--port", "9100"], {"PORT": "9000"}) == (
        "http://127.0.0.1:9100/health"
    )
    assert healthcheck.probe_url("api", ["--host=::1"], {}) == "http://[::1]:8080/health"
    assert healthcheck.probe_url("run", [], {"HOST": "10.0.0.1"}) == "http://127.0.0.1:8080/health"


def test_a_worker_is_probed_on_its_metrics_port() -> None:
    assert healthcheck.probe_url("worker", [], {}) == "http://127.0.0.1:9100/metrics"
    assert healthcheck.probe_url("worker", [], {"METRICS_PORT": "9200"}) == (
        "http://127.0.0.1:9200/metrics"
    )
    assert healthcheck.probe_url("submit", [], {}) is None


def test_200_is_healthy_and_anything_else_is_not(
    http_server: http.server.ThreadingHTTPServer,
) -> None:
    url = f"http://127.0.0.1:{http_server.server_address[1]}/health"
    assert healthcheck.check(url)[0] is True
    _Handler.status = 503
    try:
        healthy, detail = healthcheck.check(url)
    finally:
        _Handler.status = 200
    assert healthy is False
    assert "503" in detail


def test_nothing_listening_is_unhealthy() -> None:
    healthy, detail = healthcheck.check(f"http://127.0.0.1:{free_port()}/health")
    assert healthy is False
    assert "unreachable" in detail


def test_a_process_that_is_not_a_service_is_unhealthy() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        result = subprocess.run(
            [sys.executable, str(HEALTHCHECK)],
            env={"HEALTHCHECK_PID": str(sleeper.pid), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: process")
