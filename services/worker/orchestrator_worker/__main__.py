"""``python -m orchestrator_worker``: run one worker process with settings from the environment."""

from .service import main

main()
