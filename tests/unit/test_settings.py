"""The one settings object: precedence, validation, AWS endpoint conventions."""

from __future__ import annotations

import pytest

from shared.core.errors import ConfigError
from shared.core.settings import load_settings


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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"target_table": "sc-accounts"}, "target_table.*source table sc-accounts"),
        ({"table_names": {"sc-accounts": "prod-accounts"}, "target_table": "prod-accounts"},
         "target_table.*source table sc-accounts"),
        ({"control_table": "sc-repositories"}, "control_table.*source table sc-repositories"),
        ({"control_table": "sc-main"}, "control_table.*target_table"),
        ({"table_names": {"sc-accounts": "legacy", "sc-repositories": "legacy"}}, "both 'legacy'"),
        ({"table_names": {"sc-acounts": "prod-accounts"}}, "unknown source table 'sc-acounts'.*'sc-accounts'"),
    ],
)
def test_tables_that_would_overwrite_a_source_are_refused(overrides, message):
    # GIVEN table names where the migration would write into its own source (or a typo'd source)
    # WHEN loading / THEN ConfigError names the setting and the clash
    with pytest.raises(ConfigError, match=message):
        load_settings(**overrides)


def test_an_unknown_dynashift_variable_is_refused_with_a_suggestion(monkeypatch):
    # GIVEN a typo in a variable name (it would silently fall back to the real sc-main)
    monkeypatch.setenv("DYNASHIFT_TARGET_TABEL", "staging-main")
    # WHEN / THEN the variable is named, with the right one
    with pytest.raises(ConfigError, match=r"DYNASHIFT_TARGET_TABEL \(did you mean DYNASHIFT_TARGET_TABLE\?\)"):
        load_settings()


def test_known_non_setting_variables_are_allowed(monkeypatch):
    # GIVEN the variables the race property tests read themselves
    from shared.core.settings import NOT_SETTINGS

    for var in NOT_SETTINGS - {"DYNASHIFT_CONFIG"}:
        monkeypatch.setenv(var, "1")
    # WHEN / THEN settings load
    assert load_settings().target_table == "sc-main"


def test_every_dynashift_variable_the_repo_sets_is_a_setting_or_allowed():
    # GIVEN every DYNASHIFT_* name written in the repository's code, template, docs and tests
    import re

    from shared.core.settings import NOT_SETTINGS, PROJECT_ROOT, Settings

    known = {f"DYNASHIFT_{f.upper()}" for f in Settings.model_fields} | NOT_SETTINGS
    roots = ["shared", "backfill", "handlers", "tests", "bench", "docs"]
    files = [p for r in roots for p in (PROJECT_ROOT / r).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".toml")]
    files += [PROJECT_ROOT / n for n in ("template.yaml", "Makefile", "README.md", "samconfig.toml")]
    found = {m for p in files if p.is_file() for m in re.findall(r"DYNASHIFT_[A-Z0-9_]*[A-Z0-9]", p.read_text())}
    # WHEN compared with what load_settings accepts / THEN nothing the repo uses would be refused
    assert found - known == {"DYNASHIFT_TARGET_TABEL"}  # the typo of the test above


def test_a_named_config_file_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNASHIFT_CONFIG", str(tmp_path / "typo.toml"))
    with pytest.raises(ConfigError, match="DYNASHIFT_CONFIG.*typo.toml does not exist"):
        load_settings()


def test_a_missing_default_config_file_is_fine(monkeypatch, tmp_path):
    monkeypatch.delenv("DYNASHIFT_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert load_settings().target_table == "sc-main"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("DYNASHIFT_TABLE_NAMES", "{not json", r"^invalid setting table_names \(env DYNASHIFT_TABLE_NAMES\): "),
        ("DYNASHIFT_MODE_CACHE_AGE_S", "soon", r"^invalid setting mode_cache_age_s \(env DYNASHIFT_MODE_CACHE_AGE_S\)"),
    ],
)
def test_a_malformed_env_value_names_the_variable_not_the_file(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings()
    assert "toml" not in str(caught.value)


def test_a_bad_value_in_the_file_names_the_file(monkeypatch, tmp_path):
    config = tmp_path / "dynashift.toml"
    config.write_text('mode_cache_age_s = "soon"\n')
    monkeypatch.setenv("DYNASHIFT_CONFIG", str(config))
    with pytest.raises(ConfigError, match=rf"mode_cache_age_s \(in {config}\)"):
        load_settings()


def test_settings_module_imports_without_the_definitions():
    # GIVEN a fresh interpreter / WHEN shared.core.settings is imported / THEN no migration definition is loaded
    import subprocess
    import sys

    code = "import sys, shared.core.settings; print(sorted(m for m in sys.modules if m.startswith('shared.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "shared.core.definition" not in out and "shared.sc" not in out
