"""The one settings object.

Precedence: explicit arguments > ``DYNASHIFT_*`` environment variables >
``dynashift.toml`` (in the working directory, or the file named by
``DYNASHIFT_CONFIG``) > defaults. It is validated once and frozen; a bad value
fails with a `ConfigError` that names the setting.

The DynamoDB endpoint follows the standard AWS conventions:
``DYNASHIFT_ENDPOINT_URL`` if set, else ``AWS_ENDPOINT_URL_DYNAMODB``, else
``AWS_ENDPOINT_URL``, else none (the real regional endpoint). Region: the
setting, else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``.
Credentials come from the usual botocore chain.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shared.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE_ENV = "DYNASHIFT_CONFIG"


def _config_file() -> Path:
    return Path(os.environ.get(CONFIG_FILE_ENV, "dynashift.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DYNASHIFT_",
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    # --- what is migrated -------------------------------------------------
    migration: str = Field("sc", description="registered migration definition")
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

    # --- backups (shared/backup.py) -------------------------------------------------
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
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        message = first["msg"].removeprefix("Value error, ")
        source = f" (env DYNASHIFT_{name.upper()})" if f"DYNASHIFT_{name.upper()}" in os.environ else ""
        raise ConfigError(f"invalid setting {name}{source}: {message}") from None
    except (OSError, ValueError) as exc:  # unreadable or malformed dynashift.toml
        raise ConfigError(f"cannot read {_config_file()}: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (Lambda handlers and the CLI default)."""
    return load_settings()
