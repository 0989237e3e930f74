"""The ``spark.pyfunc.*`` settings: one definition, read the same way everywhere."""

from __future__ import annotations

import pytest

from spark_pyfunc import _config
from spark_pyfunc._host import _parse_args
from spark_pyfunc.cli import build_parser
from spark_pyfunc.errors import InvalidArgumentError, SparkPyfuncError


@pytest.mark.parametrize("setting", list(_config.SETTINGS.values()), ids=list(_config.SETTINGS))
def test_an_unset_or_blank_setting_is_its_default(setting: _config.Setting) -> None:
    assert setting.key.startswith("spark.pyfunc.")
    assert setting.read(None) == setting.default
    assert setting.read("  ") == setting.default


@pytest.mark.parametrize(
    ("setting", "text", "expected"),
    [
        (_config.AUTO_THRESHOLD, "1024", 1024),
        (_config.IDLE_TIMEOUT, "2.5", 2.5),
        (_config.START_TIMEOUT, " 30 ", 30.0),
        (_config.HOST_MODE, "thread", "thread"),
        (_config.HOST_LOG_DIR, "/tmp/logs", "/tmp/logs"),
        (_config.HOST_PROCESSES, "3", 3),
    ],
)
def test_a_setting_is_parsed(setting: _config.Setting, text: str, expected: object) -> None:
    assert setting.read(text) == expected


@pytest.mark.parametrize(
    ("setting", "text", "expected"),
    [
        (_config.AUTO_THRESHOLD, "64MiB", "an integer"),
        (_config.IDLE_TIMEOUT, "ten", "a number of seconds"),
        (_config.HOST_MODE, "spawn", "one of ['auto', 'prefork', 'thread', 'fork']"),
        (_config.HOST_PROCESSES, "0", "a positive integer"),
        (_config.HOST_PROCESSES, "two", "a positive integer"),
    ],
)
def test_a_bad_value_names_the_key_and_the_value(
    setting: _config.Setting, text: str, expected: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        setting.read(text)
    message = str(caught.value)
    assert setting.key in message and expected in message and repr(text) in message
    # Callers that catch ValueError (a bad number) or the package's base both see it.
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, SparkPyfuncError)


def test_the_host_and_the_cli_offer_the_choices_defined_once() -> None:
    assert _parse_args(["--model-dir", "m", "--socket", "s", "--log", "l"]).mode == (
        _config.DEFAULT_MODE
    )
    for mode in _config.MODES:
        assert _parse_args(["--model-dir", "m", "--socket", "s", "--log", "l", "--mode", mode])
    with pytest.raises(SystemExit):
        _parse_args(["--model-dir", "m", "--socket", "s", "--log", "l", "--mode", "spawn"])
    score = build_parser()._subparsers._group_actions[0].choices["score"]
    (scope,) = [a for a in score._actions if a.dest == "scope"]
    assert tuple(scope.choices) == _config.SCOPES and scope.default == _config.DEFAULT_SCOPE
