"""The one settings object: precedence, validation, AWS endpoint conventions."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import load_settings


def test_defaults_name_the_sc_tables():
    # GIVEN no configuration at all / WHEN settings load / THEN the defaults are the users' names
    settings = load_settings()
    assert settings.target_table == "sc-main"
    assert settings.control_table == "dynashift-control"
    assert settings.physical_name("sc-accounts") == "sc-accounts"
    assert settings.effective_endpoint is None


def test_env_beats_toml_and_argument_beats_env(monkeypatch, tmp_path):
    # GIVEN a dynashift.toml, an env var and an explicit argument for the same setting
    config = tmp_path / "dynashift.toml"
    config.write_text('target_table = "from-toml"\ncontrol_table = "control-from-toml"\n')
    monkeypatch.setenv("DYNASHIFT_CONFIG", str(config))
    monkeypatch.setenv("DYNASHIFT_TARGET_TABLE", "from-env")
    # WHEN / THEN the precedence is argument > env > file > default
    assert load_settings().target_table == "from-env"
    assert load_settings().control_table == "control-from-toml"
    assert load_settings(target_table="from-arg").target_table == "from-arg"


def test_standard_aws_endpoint_variables(monkeypatch):
    # GIVEN the generic and the service-specific AWS endpoint variables
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert load_settings().effective_endpoint == "http://127.0.0.1:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://localhost:9001")
    # THEN the DynamoDB-specific one wins, and a local endpoint is recognised
    settings = load_settings()
    assert settings.effective_endpoint == "http://localhost:9001"
    assert settings.is_local


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"endpoint_url": "not-a-url"}, "endpoint_url"),
        ({"endpoint_url": "http://127.0.0.1:99999"}, "endpoint_url"),
        ({"target_table": "bad name!"}, "target_table"),
        ({"table_names": {"sc-accounts": "x"}}, "table_names"),
        ({"local_port": 0}, "local_port"),
        ({"mirror_batch_size": -3}, "mirror_batch_size"),
    ],
)
def test_bad_values_name_the_setting(overrides, named):
    # GIVEN a bad value / WHEN loading / THEN ConfigError names the setting
    with pytest.raises(ConfigError, match=named):
        load_settings(**overrides)


def test_bad_env_endpoint_is_named(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://nowhere")
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL"):
        load_settings().effective_endpoint  # noqa: B018


def test_malformed_toml_is_a_config_error(monkeypatch, tmp_path):
    config = tmp_path / "dynashift.toml"
    config.write_text("target_table = \n")
    monkeypatch.setenv("DYNASHIFT_CONFIG", str(config))
    with pytest.raises(ConfigError, match="dynashift.toml"):
        load_settings()


def test_settings_are_frozen():
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.target_table = "other"  # type: ignore[misc]
