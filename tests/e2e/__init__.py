"""End-to-end tests on real processes: a throwaway ``redis-server``, ``ai-orchestrator api``
and ``ai-orchestrator worker`` subprocesses, HTTP over loopback, an in-process OTLP receiver.

- ``test_stack.py``: one ``deployment/local/stack.py`` stack (Redis + API + 2 workers) for
  volume, streaming (SSE, WebSocket, ``Last-Event-ID``), tenant isolation and the trace;
- ``test_faults.py``: a worker SIGKILLed mid-task, Redis killed or frozen and back, graceful
  SIGTERM of workers and of the API (each test with its own processes);
- ``test_cli.py``: ``ai-orchestrator run`` without Redis, ``submit``, help, startup errors.

Run them with ``python -m pytest tests/e2e`` (about 1.5 minutes; all marked ``slow``).
"""
