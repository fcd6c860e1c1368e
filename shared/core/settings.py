"""The one settings object.

Precedence: explicit arguments > ``DYNASHIFT_*`` environment variables >
``dynashift.toml`` (in the working directory, or the file named by
``DYNASHIFT_CONFIG``) > defaults. It is validated once and frozen; a bad value
fails with a `ConfigError` that names the setting and where its value came
from (the ``DYNASHIFT_*`` variable, or the file).

`load_settings` also refuses, each with one line naming it:

- an unknown ``DYNASHIFT_*`` variable (a typo would otherwise silently fall
  back to the default, e.g. the real ``sc-main``); the closest known name is
  suggested. Known: one per setting, `DYNASHIFT_CONFIG`, and `NOT_SETTINGS`
  (variables the test suite reads itself);
- a ``DYNASHIFT_CONFIG`` that names a missing file (a missing default
  ``./dynashift.toml`` is fine: no file, no settings from it);
- a `table_names` key that is not a source table of the migration, and a
  target (or control) table that is also a source table's physical name or
  each other: the migration would write into its own source.

The last check needs the migration definition; it is imported inside
`load_settings`, so this module (the bottom layer) imports without it.

The DynamoDB endpoint follows the standard AWS conventions:
``DYNASHIFT_ENDPOINT_URL`` if set, else ``AWS_ENDPOINT_URL_DYNAMODB``, else
``AWS_ENDPOINT_URL``, else none (the real regional endpoint). Region: the
setting, else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``.
Credentials come from the usual botocore chain.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from shared.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # shared/core/settings.py -> the project
CONFIG_FILE_ENV = "DYNASHIFT_CONFIG"
ENV_PREFIX = "DYNASHIFT_"
# DYNASHIFT_* variables that are deliberately not settings (read by the race
# property tests themselves); any other unknown one is refused as a typo.
NOT_SETTINGS = frozenset({CONFIG_FILE_ENV, "DYNASHIFT_RACE_EXAMPLES", "DYNASHIFT_RACE_STEPS", "DYNASHIFT_RACE_RANDOM"})


def _config_file() -> Path:
    return Path(os.environ.get(CONFIG_FILE_ENV, "dynashift.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    # --- what is migrated -------------------------------------------------
    migration: str = Field("sc", description='the migration: "sc", or a plug-in named "package.module:DEFINITION"')
    table_names: dict[str, str] = Field(
        default_factory=dict,
        description="physical name per logical source table, e.g. {\"sc-accounts\": \"prod-accounts\"}",
    )
    target_table: str = Field("sc-main", description="the new single table")
    control_table: str = Field("dynashift-control", description="dynashift's own state")

    # --- where ----------------------------------------------------------------
    region: str | None = Field(None, description="AWS region (default: AWS_REGION, else us-east-1)")
    endpoint_url: str | None = Field(
        None, description="DynamoDB endpoint (default: AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL)"
    )

    # --- the embedded local engine ---------------------------------------------
    local_port: int = Field(8000, ge=1, le=65535, description="DynamoDB Local port")
    cache_dir: Path = Field(PROJECT_ROOT / ".cache" / "dynashift", description="engine download and pid files")

    # --- race-safety protocol --------------------------------------------------
    stale_write_horizon_s: float = Field(
        10.0, gt=0, description="a stale writer (backfill, repair) must write within this long after its read"
    )
    consistency_margin_s: float = Field(
        3.0, ge=0, description="bound on eventually consistent read staleness plus clock skew"
    )

    stale_writer_refresh_s: float = Field(
        2.0, gt=0, le=60, description="the mirror re-reads the stale-writer registry at least this often"
    )

    # --- backfill -------------------------------------------------------------------
    backfill_lease_s: float = Field(
        30.0, gt=0, description="lease of a backfill unit; a dead worker's units resume this long after it stopped"
    )
    backfill_deadline_margin_s: float = Field(
        45.0,
        gt=0,
        le=600,
        description=(
            "a backfill Lambda takes no new page once less than this is left of its time limit: one page "
            "(scan, write within stale_write_horizon_s, throttling back-off) plus checkpoint and release must fit"
        ),
    )

    # --- mirror ---------------------------------------------------------------------
    mirror_batch_size: int = Field(100, ge=1, le=10000, description="records per handler call")
    mirror_batching_window_s: float = Field(0.0, ge=0, le=300, description="like MaximumBatchingWindowInSeconds")
    mirror_concurrency: int = Field(32, ge=1, le=512, description="concurrent writes per batch")
    mirror_function: str | None = Field(
        None, description="the forward mirror's Lambda function (stack-output/MirrorFunctionName): its event source "
                          "mappings tell the backfill and status that the mirror covers the legacy tables"
    )
    reverse_mirror_function: str | None = Field(
        None, description="the reverse mirror's Lambda function (stack-output/ReverseMirrorFunctionName), for status"
    )
    mirror_wait_s: float = Field(
        120.0, ge=0, le=3600, description="a backfill waits this long for the mirror to cover a table before refusing"
    )

    # --- verify ---------------------------------------------------------------------
    verify_settle_s: float = Field(
        30.0, ge=0, le=3600,
        description="verify re-checks a difference after this long (well above the mirror lag) before reporting it",
    )
    verify_recheck_limit: int = Field(
        100_000, ge=0, description="at most this many differences are re-checked (and diffed) per verify run"
    )

    # --- cutover --------------------------------------------------------------------
    mode_cache_age_s: float = Field(5.0, gt=0, le=300, description="max age of a cached mode flag")
    cutover_timeout_s: float = Field(
        60.0, gt=0, le=3600,
        description="hard limit on a switch's freeze (cache wait + drain); exceeded, it returns to where it started",
    )
    cutover_inflight_grace_s: float = Field(
        0.5, ge=0, le=60,
        description="after the mode cache age, also wait this long for legacy writes already in flight",
    )
    cutover_max_lag_s: float = Field(
        5.0, gt=0, le=3600, description="the cutover gate wants the mirror to catch up with its streams within this"
    )
    verify_max_age_s: float = Field(
        3600.0, gt=0, description="the cutover gate wants a clean `dynashift verify` result at most this old"
    )

    # --- backups (shared/ops/backup.py) -------------------------------------------------
    backup_bucket: str | None = Field(
        None, description="S3 bucket that receives the PITR exports of `backup create` (required for exports)"
    )
    backup_prefix: str = Field(
        "dynashift-backups", description="S3 key prefix of the exports; `backup prune` deletes only below it"
    )
    backup_retention_days: int = Field(
        7, ge=1, le=3650, description="`backup prune` removes backups and exports older than this many days"
    )
    backup_max_age_s: float = Field(
        86400.0, gt=0, description="the cutover gate wants a completed backup of every legacy table this recent"
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        try:
            parsed.port  # noqa: B018  (raises on a malformed port)
        except ValueError as exc:
            raise ValueError(f"{value!r} has a malformed port") from exc
        return value

    @field_validator("backup_bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not _BUCKET_NAME.fullmatch(value) or ".." in value:
            raise ValueError(f"{value!r} is not a valid S3 bucket name (3-63 of a-z 0-9 . -, starting and ending "
                             "with a letter or digit)")
        return value

    @field_validator("backup_prefix")
    @classmethod
    def _backup_prefix(cls, value: str) -> str:
        prefix = value.strip("/")
        if not prefix or len(prefix) > 512 or ".." in prefix.split("/") or "//" in prefix:
            raise ValueError(f"{value!r} is not a usable S3 prefix (non-empty, at most 512 characters, no empty or "
                             "'..' parts)")
        return prefix

    @field_validator("target_table", "control_table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        return _check_table_name(value)

    @field_validator("table_names")
    @classmethod
    def _table_names(cls, value: dict[str, str]) -> dict[str, str]:
        for physical in value.values():
            _check_table_name(physical)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file())
        return (init_settings, env_settings, toml)

    # --- derived values -------------------------------------------------------------
    @property
    def effective_region(self) -> str:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    @property
    def effective_endpoint(self) -> str | None:
        if self.endpoint_url:
            return self.endpoint_url
        for var in ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"):
            value = os.environ.get(var)
            if value:
                try:
                    return type(self)._endpoint_is_url(value)
                except ValueError as exc:
                    raise ConfigError(f"{var}: {exc}") from None
        return None

    @property
    def is_local(self) -> bool:
        endpoint = self.effective_endpoint
        return bool(endpoint) and urlparse(endpoint).hostname in ("127.0.0.1", "localhost", "::1")

    def physical_name(self, logical: str) -> str:
        return self.table_names.get(logical, logical)

    def local_endpoint(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.local_port}"


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TABLE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def _check_table_name(value: str) -> str:
    if not 3 <= len(value) <= 255 or not set(value) <= _TABLE_NAME_CHARS:
        raise ValueError(f"{value!r} is not a valid DynamoDB table name (3-255 of a-z A-Z 0-9 _ - .)")
    return value


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings; a bad value raises ConfigError naming it."""
    given = {k: v for k, v in overrides.items() if v is not None}
    _check_env_names()
    config = _config_file()
    in_file = _read_config_keys(config)
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"][:1]) or "settings"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"unknown setting {name}{_origin(name, given, in_file, config)}") from None
        raise ConfigError(f"invalid setting {name}{_origin(name, given, in_file, config)}: {message}") from None
    except SettingsError as exc:  # a DYNASHIFT_* value pydantic-settings could not even parse (bad JSON)
        match = re.search(r'field "([^"]+)"', str(exc))
        name = match.group(1) if match else "settings"
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"invalid setting {name}{_origin(name, given, in_file, config)}: cannot parse the "
                          f"value{cause}") from None
    except (OSError, ValueError) as exc:  # unreadable dynashift.toml
        raise ConfigError(f"cannot read {config}: {exc}") from None
    _check_tables(settings, given, in_file, config)
    return settings


def _origin(name: str, given: dict[str, Any], in_file: set[str], config: Path) -> str:
    """Where the value of setting `name` came from (argument > env > file), for the message."""
    if name in given:
        return ""
    env = f"{ENV_PREFIX}{name.upper()}"
    if any(var.upper() == env for var in os.environ):
        return f" (env {env})"
    if name in in_file:
        return f" (in {config})"
    return ""


def _check_env_names() -> None:
    known = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields} | NOT_SETTINGS
    for var in sorted(os.environ):
        if var.upper().startswith(ENV_PREFIX) and var.upper() not in known:
            close = difflib.get_close_matches(var.upper(), sorted(known - NOT_SETTINGS | {CONFIG_FILE_ENV}), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown environment variable {var}{hint}: not a dynashift setting")


def _read_config_keys(config: Path) -> set[str]:
    """The keys of the config file (empty when there is none); a named file must exist."""
    if CONFIG_FILE_ENV in os.environ and not config.is_file():
        raise ConfigError(f"{CONFIG_FILE_ENV}: {config} does not exist (unset it to use ./dynashift.toml, if any)")
    if not config.is_file():
        return set()
    try:
        with config.open("rb") as handle:
            return set(tomllib.load(handle))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {config}: {exc}") from None


def _check_tables(settings: Settings, given: dict[str, Any], in_file: set[str], config: Path) -> None:
    """Table names against the migration: known sources, and no table used twice."""
    from shared.core.definition import get_definition  # settings is the bottom layer: the definitions import it

    sources = [s.name for s in get_definition(settings.migration).sources]
    unknown = sorted(set(settings.table_names) - set(sources))
    if unknown:
        close = difflib.get_close_matches(unknown[0], sources, n=1)
        hint = f", did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"invalid setting table_names{_origin('table_names', given, in_file, config)}: unknown source table "
            f"{unknown[0]!r} (migration {settings.migration} has: {', '.join(sources)}{hint})"
        )
    owners: dict[str, str] = {}
    for logical in sources:
        physical = settings.physical_name(logical)
        if physical in owners:
            raise ConfigError(f"invalid setting table_names: {owners[physical]} and {logical} are both {physical!r}")
        owners[physical] = f"source table {logical}"
    for name in ("target_table", "control_table"):
        value = getattr(settings, name)
        if value in owners:
            raise ConfigError(
                f"invalid setting {name}{_origin(name, given, in_file, config)}: {value!r} is also the "
                f"{owners[value]}; the migration would write into it"
            )
        owners[value] = name


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (Lambda handlers and the CLI default)."""
    return load_settings()
