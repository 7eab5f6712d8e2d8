"""orchestrator_settings: every reader, its one-line errors naming the variable, and secrets
that never reach a message."""

from __future__ import annotations

import re

import pytest

from orchestrator_settings import ConfigError, Env, Secret


def env(**values: str) -> Env:
    return Env(values)


def fails(call: object, variable: str) -> ConfigError:
    """Run ``call`` (a zero-argument lambda), expect a ConfigError naming ``variable``."""
    assert callable(call)
    with pytest.raises(ConfigError) as raised:
        call()
    error = raised.value
    assert error.variable == variable
    assert str(error).startswith(f"{variable}: ")
    assert "\n" not in str(error)
    return error


# ConfigError


def test_config_error_is_one_line_naming_the_variable() -> None:
    error = ConfigError("NUMBER_OF_WORKERS", "expected an integer >= 1, got 'abc'")

    assert str(error) == "NUMBER_OF_WORKERS: expected an integer >= 1, got 'abc'"
    assert (error.variable, error.problem) == ("NUMBER_OF_WORKERS", error.problem)
    assert isinstance(error, ValueError)


def test_config_error_folds_a_multi_line_problem_into_one_line() -> None:
    error = ConfigError("PRICES_FILE", "is not JSON:\n  line 1\n\ncolumn 2")

    assert str(error) == "PRICES_FILE: is not JSON: line 1 column 2"


def test_the_services_and_telemetry_raise_the_one_config_error() -> None:
    import orchestrator_api
    import orchestrator_worker
    from orchestrator_telemetry import TelemetryConfigError, TelemetryError

    assert orchestrator_api.ConfigError is ConfigError
    assert orchestrator_worker.ConfigError is ConfigError
    assert issubclass(TelemetryConfigError, ConfigError)
    assert issubclass(TelemetryConfigError, TelemetryError)


def test_one_except_config_error_catches_every_package() -> None:
    from orchestrator_api import ApiSettings
    from orchestrator_telemetry import TelemetrySettings
    from orchestrator_worker import WorkerSettings

    for read in (
        lambda: ApiSettings.from_env({"AUTH_DISABLED": "true", "PORT": "http"}),
        lambda: WorkerSettings.from_env({"NUMBER_OF_WORKERS": "five"}),
        lambda: WorkerSettings.from_env({"OPENAI_BASE_URL": "ftp://x"}),
        lambda: TelemetrySettings.from_env({"OTEL_TRACES_SAMPLER": "sometimes"}),
    ):
        with pytest.raises(ConfigError):
            read()


def test_a_reader_raises_the_error_class_it_was_given() -> None:
    class LibraryConfigError(ConfigError):
        pass

    reader = Env({"N": "x"}, error=LibraryConfigError)

    with pytest.raises(LibraryConfigError, match=r"^N: 'x' is not a whole number$"):
        reader.integer("N", 1)


# unset, blank, raw, first


def test_unset_and_blank_give_the_default() -> None:
    reader = env(BLANK="   ")

    assert reader.raw("UNSET") is None
    assert reader.raw("BLANK") is None
    assert reader.text("BLANK", "fallback") == "fallback"
    assert reader.integer("UNSET", None) is None
    assert reader.number("BLANK", 2.5) == 2.5
    assert reader.boolean("BLANK", True) is True
    assert reader.items("BLANK", ()) == ()
    assert reader.mapping("BLANK", str) == {}
    assert reader.secret("BLANK") is None


def test_values_are_stripped() -> None:
    assert env(NAME="  worker-1 \n").text("NAME", "") == "worker-1"


def test_first_names_the_first_variable_set() -> None:
    reader = env(GENERIC="1", SPECIFIC=" ")

    assert reader.first("SPECIFIC", "GENERIC") == "GENERIC"
    assert reader.first("SPECIFIC", "NONE") is None


def test_the_process_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_SETTINGS_PROBE", "42")

    assert Env().integer("ORCHESTRATOR_SETTINGS_PROBE", 0) == 42


# text


def test_text_with_a_pattern_must_match_it_whole() -> None:
    name = re.compile(r"[a-z]+")

    assert env(S="tasks").text("S", "x", pattern=name) == "tasks"
    error = fails(
        lambda: env(S="tasks 2").text("S", "x", pattern=name, expected="may only hold a-z"),
        "S",
    )
    assert str(error) == "S: 'tasks 2' may only hold a-z"


# integer


@pytest.mark.parametrize(("raw", "value"), [("0", 0), ("65535", 65535), ("+7", 7), (" 8 ", 8)])
def test_integer_reads_whole_numbers_within_bounds(raw: str, value: int) -> None:
    assert env(PORT=raw).integer("PORT", 1, low=0, high=65535) == value


@pytest.mark.parametrize(
    ("raw", "low", "high", "message"),
    [
        ("abc", 1, None, "N: 'abc' is not a whole number"),
        ("1.5", 1, None, "N: '1.5' is not a whole number"),
        ("0", 1, None, "N: 0 must be >= 1"),
        ("-1", 0, None, "N: -1 must be zero or more"),
        ("70000", 0, 65535, "N: 70000 is outside 0..65535"),
        ("11", None, 10, "N: 11 must be <= 10"),
    ],
)
def test_integer_errors_name_the_variable(
    raw: str, low: int | None, high: int | None, message: str
) -> None:
    error = fails(lambda: env(N=raw).integer("N", 1, low=low, high=high), "N")
    assert str(error) == message


def test_integer_bound_errors_carry_the_hint() -> None:
    error = fails(lambda: env(N="-1").integer("N", 0, low=0, high=9, hint="0: no limit"), "N")
    assert str(error) == "N: -1 is outside 0..9 (0: no limit)"


# number and seconds


def test_number_reads_floats_within_bounds() -> None:
    assert env(R="0.25").number("R", 1.0, low=0.0, high=1.0) == 0.25
    assert env(R="1e3").number("R", 1.0) == 1000.0
    assert env(R="inf").number("R", 1.0, positive=True, finite=False) == float("inf")


@pytest.mark.parametrize(
    ("raw", "kwargs", "message"),
    [
        ("soon", {}, "R: 'soon' is not a number"),
        ("nan", {"finite": False}, "R: 'nan' is not a finite number"),
        ("inf", {}, "R: 'inf' is not a finite number"),
        ("0", {"positive": True}, "R: '0' must be positive"),
        ("1.5", {"low": 0.0, "high": 1.0}, "R: '1.5' is outside 0..1"),
        ("-0.5", {"low": 0.0}, "R: '-0.5' must be zero or more"),
        ("3", {"high": 2.0}, "R: '3' must be <= 2"),
    ],
)
def test_number_errors_name_the_variable(
    raw: str, kwargs: dict[str, float | bool], message: str
) -> None:
    error = fails(lambda: env(R=raw).number("R", 1.0, **kwargs), "R")
    assert str(error) == message


def test_seconds_are_finite_and_not_negative() -> None:
    assert env(T="0").seconds("T", 1.0) == 0.0
    assert env(T="12.5").seconds("T", 1.0, positive=True) == 12.5
    assert str(fails(lambda: env(T="-1").seconds("T", 1.0), "T")) == "T: '-1' must be zero or more"
    assert str(fails(lambda: env(T="0").seconds("T", 1.0, positive=True), "T")) == (
        "T: '0' must be positive"
    )
    fails(lambda: env(T="inf").seconds("T", 1.0), "T")


# boolean


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        *[("1", True), ("TRUE", True), ("yes", True), ("On", True)],
        *[("0", False), ("false", False), ("NO", False), ("off", False)],
    ],
)
def test_boolean_accepts_the_usual_words(raw: str, value: bool) -> None:
    assert env(B=raw).boolean("B", not value) is value


def test_boolean_rejects_anything_else() -> None:
    assert str(fails(lambda: env(B="maybe").boolean("B", False), "B")) == (
        "B: 'maybe' is not true or false"
    )


def test_boolean_words_can_be_narrowed() -> None:
    strict = {"true": ("true",), "false": ("false",)}

    assert env(B="True").boolean("B", False, **strict) is True
    fails(lambda: env(B="yes").boolean("B", False, **strict), "B")


# choice


def test_choice_folds_case_and_returns_the_choice() -> None:
    levels = ("DEBUG", "INFO")

    assert env(L="debug").choice("L", "INFO", levels, case="upper") == "DEBUG"
    assert env(F="JSON").choice("F", "plain", ("plain", "json")) == "json"
    assert str(fails(lambda: env(L="LOUD").choice("L", "INFO", levels, case="upper"), "L")) == (
        "L: 'LOUD' is not one of DEBUG, INFO"
    )


def test_choice_with_case_kept_is_exact() -> None:
    fails(lambda: env(C="Gzip").choice("C", "none", ("none", "gzip"), case="keep"), "C")


# items


def test_items_split_on_commas_and_skip_blanks() -> None:
    assert env(L=" a, b ,,c ").items("L", ()) == ("a", "b", "c")
    assert env(L="OTLP,None").items("L", (), choices=("otlp", "none"), case="lower") == (
        "otlp",
        "none",
    )


def test_items_outside_the_choices_are_named() -> None:
    error = fails(lambda: env(L="otlp,jaeger").items("L", (), choices=("otlp", "none")), "L")
    assert str(error) == "L: 'jaeger': expected otlp or none"


# url


def test_url_is_returned_as_given() -> None:
    assert env(U="http://otel:4318/x?y=1").url("U", None) == "http://otel:4318/x?y=1"


@pytest.mark.parametrize(
    ("raw", "kwargs", "problem"),
    [
        ("otel:4318", {}, "must be an http:// or https:// URL with a host"),
        ("ftp://h/sekrit", {}, "must be an http:// or https:// URL with a host"),
        ("http:///sekrit", {}, "must be an http:// or https:// URL with a host"),
        ("http://h:99999/sekrit", {}, "is not a valid URL"),
        ("http://u:sekrit@h/", {"credentials": False}, "must not hold credentials"),
        ("http://h/?key=sekrit", {"query": False}, "must not have a query or a fragment"),
        ("http://h/#sekrit", {"query": False}, "must not have a query or a fragment"),
    ],
)
def test_url_errors_never_echo_the_value(raw: str, kwargs: dict[str, bool], problem: str) -> None:
    error = fails(lambda: env(U=raw).url("U", None, **kwargs), "U")
    assert problem in error.problem
    assert "sekrit" not in str(error)
    assert raw not in str(error)


def test_url_schemes_can_be_chosen() -> None:
    assert env(U="rediss://h:6380").url("U", None, schemes=("redis", "rediss")) == "rediss://h:6380"
    error = fails(lambda: env(U="http://h").url("U", None, schemes=("redis",)), "U")
    assert error.problem == "must be an redis:// URL with a host"


# secret


def test_a_secret_never_shows_itself() -> None:
    secret = env(KEY=" sk-very-secret ").secret("KEY")

    assert secret == Secret("sk-very-secret")
    assert secret is not None
    assert secret.reveal() == "sk-very-secret"
    for shown in (repr(secret), str(secret), f"{secret}", repr({"key": secret})):
        assert "sk-very-secret" not in shown
    assert hash(secret) == hash(Secret("sk-very-secret"))
    assert secret != "sk-very-secret"


@pytest.mark.parametrize("inside", ["\r", "\n", "\r\n", "\x00", "\x1b", "\x7f", "\x85", "\t"])
def test_a_secret_with_a_control_character_is_refused_without_showing_it(inside: str) -> None:
    error = fails(lambda: env(KEY=f"sk-part-one{inside}sk-part-two").secret("KEY"), "KEY")

    assert "control character" in error.problem
    assert "sk-part" not in str(error)
    assert "\n" not in str(error)


def test_a_secret_may_keep_its_control_characters_when_asked() -> None:
    secret = env(KEY="a\x01b").secret("KEY", printable=False)
    assert secret is not None
    assert secret.reveal() == "a\x01b"


# mapping


def test_mapping_reads_key_value_pairs() -> None:
    reader = env(M=" openai=50, gemini = 20 ,, ")

    assert reader.mapping("M", int) == {"openai": 50, "gemini": 20}


def test_mapping_values_keep_their_own_separators() -> None:
    reader = env(M="*=50/s,acme=200/s,fast=openai/a|gemini/b,x=a=b")

    assert reader.mapping("M", str) == {
        "*": "50/s",
        "acme": "200/s",
        "fast": "openai/a|gemini/b",
        "x": "a=b",
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("openai", "M: 'openai' is not provider=limit"),
        ("=5", "M: '=5' is not provider=limit"),
        ("open ai=5", "M: 'open ai=5' is not provider=limit"),
        ("openai=five", "M: openai: invalid literal for int() with base 10: 'five'"),
        ("openai=1,openai=2", "M: openai is listed twice"),
    ],
)
def test_mapping_errors_name_the_variable_and_the_entry(raw: str, message: str) -> None:
    key = re.compile(r"[a-z*]+")
    error = fails(lambda: env(M=raw).mapping("M", int, key=key, entry="provider=limit"), "M")
    assert str(error) == message


def test_mapping_may_let_the_last_repeat_win() -> None:
    assert env(M="a=1,a=2").mapping("M", str, unique=False) == {"a": "2"}


def test_mapping_percent_decodes_when_asked() -> None:
    assert env(M="team=a%20b,k%3Dx=1").mapping("M", str, percent_encoded=True) == {
        "team": "a b",
        "k=x": "1",
    }


def test_a_secret_mapping_never_echoes_an_entry() -> None:
    def reject(value: str) -> str:
        raise ValueError(f"bad value {value!r}")

    shape = fails(lambda: env(H="a=1,sekrit-token").mapping("H", str, secret=True), "H")
    assert str(shape) == "H: entry 2 is not key=value"
    value = fails(lambda: env(H="auth=sekrit").mapping("H", reject, secret=True), "H")
    assert str(value) == "H: auth: malformed value"


def test_a_mapping_value_parser_may_raise_config_error_itself() -> None:
    def own(value: str) -> str:
        raise ConfigError("OTHER", "its own words")

    error = fails(lambda: env(M="a=1").mapping("M", own), "OTHER")
    assert error.problem == "its own words"


# parsed


def test_parsed_hands_the_variable_and_value_to_the_parser() -> None:
    seen: list[tuple[str, str]] = []

    def parse(variable: str, raw: str) -> int:
        seen.append((variable, raw))
        return len(raw)

    assert env(P=" abc ").parsed("P", parse, 0) == 3
    assert env().parsed("P", parse, -1) == -1
    assert seen == [("P", "abc")]


def test_parsed_names_the_variable_for_a_value_error() -> None:
    def parse(_: str, raw: str) -> int:
        raise ValueError(f"{raw!r} is not a rate such as 50/s")

    assert str(fails(lambda: env(P="lots").parsed("P", parse, 0), "P")) == (
        "P: 'lots' is not a rate such as 50/s"
    )


def test_parsed_keeps_a_config_error_as_raised() -> None:
    def parse(variable: str, raw: str) -> int:
        raise ConfigError(variable, f"alias {raw!r} is defined twice")

    assert str(fails(lambda: env(P="x").parsed("P", parse, 0), "P")) == (
        "P: alias 'x' is defined twice"
    )
