"""The telemetry library's exceptions: one root, and the startup error a deployer can fix."""

from __future__ import annotations

from orchestrator_settings import ConfigError


class TelemetryError(Exception):
    """Root of every error raised by ``orchestrator_telemetry``."""


class TelemetryConfigError(TelemetryError, ConfigError):
    """A telemetry setting (an environment variable) is malformed; the message names it.

    A ``orchestrator_settings.ConfigError``, so one ``except ConfigError`` catches every
    package's setting errors.
    """
