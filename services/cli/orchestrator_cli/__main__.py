"""``python -m orchestrator_cli``: the ``ai-orchestrator`` command."""

from .main import main

raise SystemExit(main())
