"""Per-tenant submission rate limits (``RATE_LIMITS``): parsing, the token buckets, and
``POST /v1/tasks`` answering 429 over the real HTTP stack."""

from __future__ import annotations

import pytest

from orchestrator_api.config import ApiSettings, ConfigError
from orchestrator_api.ratelimit import Rate, RateLimiter, parse_rate_limits
from tests.api.conftest import ACME, API_KEYS, GLOBEX, ApiClientFactory, api_state
from tests.api.test_http_openapi import Checked, fetch_document
from tests.api.test_http_tasks import problem_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_per_second_minute_and_hour_with_a_default() -> None:
    limits = parse_rate_limits(" *=50/s, acme = 600/m ,batch=1000/h,odd=1.5 / s,")

    assert limits == {
        "*": Rate(50, 1.0),
        "acme": Rate(600, 60.0),
        "batch": Rate(1000, 3600.0),
        "odd": Rate(1.5, 1.0),
    }
    assert [str(rate) for rate in limits.values()] == ["50/s", "600/m", "1000/h", "1.5/s"]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("acme", "not tenant=N/s"),
        ("acme=fast", "not a rate"),
        ("acme=10/d", "not a rate"),
        ("acme=0/s", "at least 1"),
        ("acme=0.5/s", "at least 1"),
        ("acme=1/s,acme=2/s", "given twice"),
        ("bad tenant=1/s", "not tenant=N/s"),
    ],
)
def test_malformed_limits_say_which_entry_is_wrong(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_rate_limits(raw)


def test_a_bucket_allows_its_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter({"acme": Rate(3, 1.0)}, clock=clock)

    assert [limiter.acquire("acme") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("acme") == pytest.approx(1 / 3)
    clock.now += 0.34
    assert limiter.acquire("acme") == 0.0
    assert limiter.acquire("acme") > 0
    clock.now += 10  # refills up to the burst, no further
    assert [limiter.acquire("acme") for _ in range(4)][-1] > 0


def test_tenants_have_their_own_buckets_and_the_default_applies_to_the_rest() -> None:
    clock = Clock()
    limiter = RateLimiter({"*": Rate(1, 60.0), "acme": Rate(2, 1.0)}, clock=clock)

    assert [limiter.acquire("acme") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("globex") == 0.0
    assert limiter.acquire("initech") == 0.0  # its own bucket, at the default rate
    assert limiter.acquire("globex") == pytest.approx(60.0)
    assert limiter.rate("globex") == Rate(1, 60.0)


def test_without_a_default_unnamed_tenants_are_not_limited() -> None:
    limiter = RateLimiter({"acme": Rate(1, 3600.0)}, clock=Clock())

    assert all(limiter.acquire("globex") == 0.0 for _ in range(1000))
    assert limiter.rate("globex") is None


def test_rate_limits_are_read_from_the_environment() -> None:
    settings = ApiSettings.from_env({"API_KEYS": "acme:k", "RATE_LIMITS": "*=5/s,acme=60/m"})

    assert settings.rate_limits == {"*": Rate(5, 1.0), "acme": Rate(60, 60.0)}
    with pytest.raises(ConfigError, match=r"RATE_LIMITS: .*not a rate"):
        ApiSettings.from_env({"API_KEYS": "acme:k", "RATE_LIMITS": "acme=lots"})


async def test_a_tenant_over_its_rate_gets_a_429_and_nothing_is_stored(
    api_client: ApiClientFactory,
) -> None:
    settings = ApiSettings(api_keys=API_KEYS, rate_limits={"acme": Rate(2, 60.0)})
    client = await api_client(settings=settings)
    document = await fetch_document(client)
    call = Checked(client, document)

    statuses = [
        (await call("POST", "/v1/tasks", json={"prompt": "x", "cache": False}, headers=ACME))[0]
        for _ in range(3)
    ]

    assert statuses == [202, 202, 429]
    response = await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)
    problem = await problem_of(response, 429)
    assert problem["type"] == "urn:ai-orchestrator:problem:rate-limited"
    assert "2/m" in problem["detail"]
    assert 1 <= int(response.headers["Retry-After"]) <= 30
    assert len(api_state(client).store._entries) == 2  # type: ignore[attr-defined]
    other = await client.post("/v1/tasks", json={"prompt": "x"}, headers=GLOBEX)
    assert other.status == 202  # another tenant, not limited
