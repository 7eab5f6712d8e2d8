"""Every setting a service reads is documented, and the examples are real settings."""

from __future__ import annotations

import re

from tests.deployment.support import ROOT, env_file_values
from tests.support.settings_names import api_variables, service_variables, worker_variables

#: The standard OpenTelemetry exporter variables are documented as a family (the README's
#: "Tracing" paragraph), not one by one.
_OTEL_FAMILY = re.compile(r"OTEL_EXPORTER_OTLP_(TRACES_)?(COMPRESSION|TIMEOUT|HEADERS)")


def test_every_setting_is_in_the_readme() -> None:
    # In "Configuration", or (providers, tracing) in the section about them.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    undocumented = sorted(
        name
        for name in service_variables()
        if f"`{name}`" not in readme
        and f"`{name}(" not in readme
        and f"`{name}=" not in readme
        and not _OTEL_FAMILY.fullmatch(name)
    )
    assert not undocumented, f"the README lacks {undocumented}"


def test_the_otlp_family_is_named_in_the_readme() -> None:
    assert "OTEL_EXPORTER_OTLP_*" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_env_examples_name_only_real_settings() -> None:
    # A typo in an example (set or commented out) would silently do nothing.
    for example, known in (
        (".api_env.example", api_variables()),
        (".worker_env.example", worker_variables()),
    ):
        text = (ROOT / example).read_text(encoding="utf-8")
        named = set(env_file_values(ROOT / example))
        named |= set(re.findall(r"^# ?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
        assert named <= known, f"{example}: {sorted(named - known)} are not settings"


def test_the_api_example_shows_the_console_and_batch_settings() -> None:
    text = (ROOT / ".api_env.example").read_text(encoding="utf-8")
    for name in (
        "ADMIN_TENANTS",
        "CONSOLE_TRACE_URL",
        "MAX_BATCH_FILE_BYTES",
        "BATCH_FILE_TTL_HOURS",
    ):
        assert re.search(rf"^# ?{name}=", text, flags=re.MULTILINE), name
