"""Pydantic models of the sc migration: the two legacy items and the three
target entities, plus the one place where validation failures become
`QuarantineError`s.

Design:

- The legacy models (`Account`, `Repository`) *are* the types table of the
  spec (`schema-changes.md`): one field per documented attribute, named
  exactly like the attribute, strict (a Decimal is never a str, a bool never
  a number), with the documented default when the attribute is missing.
  Undocumented attributes are allowed and collected in `model_extra`; they
  become the target `legacy` map.
- Validators normalise while they validate (email trimmed and lower-cased,
  plan lower-cased, timestamps parsed to aware UTC datetimes with whole
  seconds, topics sorted and distinct), so the transform only *builds*.
- A failed rule raises a `PydanticCustomError` whose type is the quarantine
  reason; `parse` turns the first error of a `ValidationError` into the
  matching `shared.core.errors` subclass through one dict. No pydantic error ever
  leaves this module.
- The target models (`AccountProfile`, `Membership`, `RepositoryItem`) carry
  the exact target attribute names. Key and GSI attributes are computed from
  the ids, so a target item's keys cannot disagree with its ids. Timestamps
  are datetimes inside and ISO-8601 `Z` strings once dumped.

Explicit NULLs: a documented attribute holding NULL is a type mismatch
(WrongType), not a missing attribute; the spec's table gives each attribute
one type and NULL is not it. Two exceptions follow the spec's own list of
reasons: a NULL email is an invalid (missing) email, and a NULL timestamp is
an invalid timestamp, like every other non-number, non-string value.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Annotated, Any, Literal, TypeVar

from boto3.dynamodb.types import Binary
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    computed_field,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.core.errors import (
    InvalidTimestamp,
    MissingAttribute,
    QuarantineError,
    WrongType,
)

PLANS = ("free", "pro", "team", "enterprise")
STATUSES = ("active", "suspended", "deleted")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Years 1..9999 span about +-2.5e11 seconds around the epoch; anything well
# beyond is rejected before `int()` could be asked to build a huge integer.
_MAX_EPOCH_MAGNITUDE = Decimal(10) ** 12

_PREVIEW_CHARS = 60


# The sc migration's own quarantine reasons (the engine's are in shared.core.errors).
class InvalidEmail(QuarantineError):
    reason = "invalid_email"


class InvalidPlan(QuarantineError):
    reason = "invalid_plan"


class InvalidStatus(QuarantineError):
    reason = "invalid_status"


# --------------------------------------------------------------------------
# Describing values to a person
# --------------------------------------------------------------------------


def dynamodb_type(value: Any) -> str:
    """The DynamoDB type letter(s) of a native value, for messages."""
    if isinstance(value, bool):
        return "BOOL"
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "S"
    if isinstance(value, int | float | Decimal):
        return "N"
    if isinstance(value, bytes | bytearray | Binary):
        return "B"
    if isinstance(value, set | frozenset):
        members = {dynamodb_type(v) for v in value}
        return members.pop() + "S" if len(members) == 1 else "set"
    if isinstance(value, list | tuple):
        return "L"
    if isinstance(value, dict):
        return "M"
    return type(value).__name__


def preview(value: Any) -> str:
    """`repr` of a value, cut short so a message stays one readable line."""
    text = repr(value)
    if len(text) > _PREVIEW_CHARS:
        text = text[: _PREVIEW_CHARS - 1] + "…"
    return text


def describe(value: Any) -> str:
    if value is None:
        return "NULL"
    return f"{dynamodb_type(value)} {preview(value)}"


def _fail(reason: str, message: str) -> PydanticCustomError:
    # The message goes through the context so braces in user data are never
    # taken for template fields.
    return PydanticCustomError(reason, "{message}", {"message": message})


# --------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------


class TimestampError(ValueError):
    """A value that is neither epoch seconds nor a usable ISO-8601 string."""


def to_utc(value: Any) -> datetime:
    """Epoch seconds (N) or an ISO-8601 string (S) → aware UTC, whole seconds.

    Fractions are dropped towards the past (floor), the same for an epoch
    value (-1.5 → -2) as for an ISO string (…:58.5 → …:58). A string is
    never read as epoch seconds: "1700000000" is a string, not an N.
    """
    if isinstance(value, bool):
        # bool is an int subclass in Python, but BOOL is not N in DynamoDB.
        raise TimestampError(f"expected N or an ISO-8601 S, got {describe(value)}")
    if isinstance(value, int | float | Decimal):
        return _from_epoch(value)
    if isinstance(value, str):
        return _from_iso(value)
    if isinstance(value, datetime):
        # Target models are built from already-parsed datetimes.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).replace(microsecond=0)
    raise TimestampError(f"expected N or an ISO-8601 S, got {describe(value)}")


def _from_epoch(value: int | float | Decimal) -> datetime:
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if not number.is_finite() or abs(number) > _MAX_EPOCH_MAGNITUDE:
        raise TimestampError(f"epoch seconds {preview(value)} are out of range")
    seconds = int(number.to_integral_value(rounding=ROUND_FLOOR))
    try:
        return EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        raise TimestampError(f"epoch seconds {preview(value)} are out of range") from None


def _from_iso(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TimestampError(f"{preview(text)} is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC).replace(microsecond=0)
    except OverflowError:
        raise TimestampError(f"{preview(text)} is out of range once converted to UTC") from None


def format_utc(moment: datetime) -> str:
    """ISO-8601 UTC with `Z` and second precision (years always 4 digits)."""
    m = moment.astimezone(UTC)
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}"
        f"T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"
    )


def to_epoch(moment: datetime) -> Decimal:
    delta = moment.astimezone(UTC).replace(microsecond=0) - EPOCH
    return Decimal(delta.days * 86400 + delta.seconds)


def _timestamp(value: Any, info: ValidationInfo) -> datetime:
    if value is None and info.field_name == "createdAt":
        # A missing createdAt arrives here as the None default
        # (validate_default); an explicit NULL reads the same, and holds no
        # time either.
        raise _fail("invalid_timestamp", "createdAt is missing (it is required)")
    try:
        return to_utc(value)
    except TimestampError as exc:
        raise _fail("invalid_timestamp", f"{info.field_name}: {exc}") from None


Timestamp = Annotated[
    datetime,
    PlainValidator(_timestamp),
    PlainSerializer(format_utc, return_type=str),
]
# The validator sees an explicit NULL (and rejects it); only a missing
# attribute gets the None default.
OptionalTimestamp = Annotated[datetime | None, PlainValidator(_timestamp)]


# --------------------------------------------------------------------------
# Other field types
# --------------------------------------------------------------------------


def _reject_null(value: Any, info: ValidationInfo) -> Any:
    # Runs only when the attribute is present: a missing optional attribute
    # takes the default without reaching this validator.
    if value is None:
        raise _fail("wrong_type", f"{info.field_name} must be {_expected(info)}, got NULL")
    return value


NotNull = BeforeValidator(_reject_null)


def _required_id(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        raise _fail("wrong_type", f"{info.field_name} must be S, got {describe(value)}")
    if value == "":
        raise _fail("missing_attribute", f"{info.field_name} is empty (it is required)")
    return value


RequiredId = Annotated[str, PlainValidator(_required_id)]


def _email(value: Any, info: ValidationInfo) -> str:
    # NULL counts as missing: the spec files every email problem under
    # invalid_email.
    if value is None:
        raise _fail("invalid_email", "email is missing (it is required)")
    if not isinstance(value, str):
        raise _fail("wrong_type", f"email must be S, got {describe(value)}")
    email = value.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain:
        raise _fail(
            "invalid_email",
            f"email {preview(value)} must hold exactly one '@' with text on both sides",
        )
    return email


Email = Annotated[str, PlainValidator(_email)]


def _plan(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        raise _fail("wrong_type", f"plan must be S, got {describe(value)}")
    plan = value.lower()
    if plan not in PLANS:
        raise _fail(
            "invalid_plan",
            f"plan {preview(value)} is not one of {', '.join(PLANS)} (in any letter case)",
        )
    return plan


Plan = Annotated[str, PlainValidator(_plan)]


def _status(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        raise _fail("wrong_type", f"status must be S, got {describe(value)}")
    # Case-sensitive on purpose: the spec lower-cases the plan only.
    if value not in STATUSES:
        raise _fail(
            "invalid_status",
            f"status {preview(value)} is not one of {', '.join(STATUSES)} (letter case matters)",
        )
    return value


Status = Annotated[str, PlainValidator(_status)]


def _string_set(value: Any, info: ValidationInfo) -> frozenset[str]:
    if not isinstance(value, set | frozenset) or not all(isinstance(v, str) for v in value):
        raise _fail("wrong_type", f"{info.field_name} must be SS, got {describe(value)}")
    return frozenset(value)


OptionalStringSet = Annotated[frozenset[str] | None, PlainValidator(_string_set)]


def _topics(value: Any, info: ValidationInfo) -> list[str]:
    ok = isinstance(value, set | frozenset | list | tuple) and all(
        isinstance(v, str) for v in value
    )
    if not ok:
        raise _fail(
            "wrong_type", f"{info.field_name} must be SS or L of S, got {describe(value)}"
        )
    return sorted(set(value))


Topics = Annotated[list[str], PlainValidator(_topics)]


def _number(value: Any, info: ValidationInfo) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise _fail("wrong_type", f"{info.field_name} must be N, got {describe(value)}")
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if not number.is_finite():
        raise _fail("wrong_type", f"{info.field_name} must be a finite N, got {preview(value)}")
    return number


Number = Annotated[Decimal, PlainValidator(_number)]


# --------------------------------------------------------------------------
# Legacy models
# --------------------------------------------------------------------------

_LEGACY_CONFIG = ConfigDict(extra="allow", strict=True, frozen=True)


class Settings(BaseModel):
    """`settings` (M) of an account; keys other than these two are kept."""

    model_config = _LEGACY_CONFIG

    theme: Annotated[str | None, NotNull] = Field(None, description="S")
    emailNotifications: Annotated[bool | None, NotNull] = Field(None, description="BOOL")

    @model_validator(mode="after")
    def _no_ambiguous_key(self) -> Settings:
        # The transform renames emailNotifications to email_notifications and
        # keeps other keys unchanged: a settings key already called
        # email_notifications would collide with it (or come back under the
        # wrong name), so the item cannot travel without losing data.
        if "email_notifications" in (self.model_extra or {}):
            raise _fail(
                "invalid_item",
                "settings holds a key 'email_notifications', which the target "
                "reserves for settings.emailNotifications; rename or remove it",
            )
        return self


class Account(BaseModel):
    """A `sc-accounts` item; `model_extra` holds the undocumented attributes."""

    model_config = _LEGACY_CONFIG

    accountId: RequiredId = Field(description="S")
    email: Email = Field(None, validate_default=True, description="S")
    name: Annotated[str | None, NotNull] = Field(None, description="S")
    plan: Plan = Field("free", description="S")
    status: Status = Field("active", description="S")
    createdAt: Timestamp = Field(None, validate_default=True, description="N or S")
    updatedAt: OptionalTimestamp = Field(None, description="N or S")
    teamIds: OptionalStringSet = Field(None, description="SS")
    settings: Annotated[Settings | None, NotNull] = Field(None, description="M")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        return self.email.partition("@")[0]

    @property
    def updated(self) -> datetime:
        return self.createdAt if self.updatedAt is None else self.updatedAt


class Repository(BaseModel):
    """A `sc-repositories` item; `model_extra` holds the undocumented attributes."""

    model_config = _LEGACY_CONFIG

    repoId: RequiredId = Field(description="S")
    accountId: RequiredId = Field(description="S")
    name: RequiredId = Field(description="S")
    # Any string is carried as written: the spec lists `public`/`private` as
    # the values in use but names no quarantine reason for others.
    visibility: Annotated[str | None, NotNull] = Field(None, description="S")
    isPrivate: Annotated[bool | None, NotNull] = Field(None, description="BOOL")
    defaultBranch: str = Field("main", description="S")
    createdAt: Timestamp = Field(None, validate_default=True, description="N or S")
    updatedAt: OptionalTimestamp = Field(None, description="N or S")
    topics: Topics = Field(default_factory=list, description="SS or L of S")
    sizeKb: Number = Field(Decimal(0), description="N")
    archived: bool = Field(False, description="BOOL")

    @property
    def effective_visibility(self) -> str:
        if self.visibility is not None:
            return self.visibility
        return "private" if self.isPrivate else "public"

    @property
    def updated(self) -> datetime:
        return self.createdAt if self.updatedAt is None else self.updatedAt


# --------------------------------------------------------------------------
# Target models
# --------------------------------------------------------------------------

# Target items read back (after cutover) may carry attributes a newer
# application added; they have no legacy home, so they are ignored.
_TARGET_CONFIG = ConfigDict(extra="ignore", strict=True, frozen=True)


def _dump(model: BaseModel, optional: Iterable[str] = ()) -> dict[str, Any]:
    # Optional map attributes are absent, never NULL, in the target table.
    item = model.model_dump()
    for name in optional:
        if item.get(name) is None:
            item.pop(name, None)
    return item


class AccountProfile(BaseModel):
    model_config = _TARGET_CONFIG

    entity: Literal["account"] = "account"
    account_id: RequiredId = Field(description="S")
    email: str = Field(description="S")
    display_name: str = Field(description="S")
    plan: str = Field(description="S")
    status: str = Field(description="S")
    created_at: Timestamp = Field(description="S (ISO-8601)")
    updated_at: Timestamp = Field(description="S (ISO-8601)")
    preferences: dict[str, Any] | None = Field(None, description="M")
    legacy: dict[str, Any] | None = Field(None, description="M")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def PK(self) -> str:
        return f"ACCOUNT#{self.account_id}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def SK(self) -> str:
        return "PROFILE"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def GSI1PK(self) -> str:
        return f"EMAIL#{self.email}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def GSI1SK(self) -> str:
        return f"ACCOUNT#{self.account_id}"

    def to_item(self) -> dict[str, Any]:
        return _dump(self, ("preferences", "legacy"))


class Membership(BaseModel):
    model_config = _TARGET_CONFIG

    entity: Literal["membership"] = "membership"
    team_id: str = Field(description="S")
    account_id: RequiredId = Field(description="S")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def PK(self) -> str:
        return f"TEAM#{self.team_id}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def SK(self) -> str:
        return f"MEMBER#{self.account_id}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def GSI1PK(self) -> str:
        return f"ACCOUNT#{self.account_id}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def GSI1SK(self) -> str:
        return f"TEAM#{self.team_id}"

    def to_item(self) -> dict[str, Any]:
        return _dump(self)


class RepositoryItem(BaseModel):
    model_config = _TARGET_CONFIG

    entity: Literal["repository"] = "repository"
    repo_id: RequiredId = Field(description="S")
    account_id: RequiredId = Field(description="S")
    name: RequiredId = Field(description="S")
    visibility: str = Field(description="S")
    default_branch: str = Field(description="S")
    created_at: Timestamp = Field(description="S (ISO-8601)")
    updated_at: Timestamp = Field(description="S (ISO-8601)")
    topics: Topics = Field(description="L of S")
    size_bytes: Number = Field(description="N")
    archived: bool = Field(description="BOOL")
    legacy: dict[str, Any] | None = Field(None, description="M")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def PK(self) -> str:
        return f"ACCOUNT#{self.account_id}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def SK(self) -> str:
        return f"REPO#{self.name.lower()}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def GSI1PK(self) -> str:
        return f"REPO#{self.repo_id}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def GSI1SK(self) -> str:
        return f"REPO#{self.repo_id}"

    def to_item(self) -> dict[str, Any]:
        return _dump(self, ("legacy",))


# --------------------------------------------------------------------------
# Validation failures → quarantine reasons
# --------------------------------------------------------------------------

_REASONS: dict[str, type[QuarantineError]] = {
    "missing": MissingAttribute,
    "missing_attribute": MissingAttribute,
    "invalid_email": InvalidEmail,
    "invalid_plan": InvalidPlan,
    "invalid_status": InvalidStatus,
    "invalid_timestamp": InvalidTimestamp,
    "invalid_item": QuarantineError,
}
_CUSTOM = set(_REASONS) - {"missing"} | {"wrong_type"}

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], item: dict[str, Any]) -> M:
    """Validate `item` as `model`, or raise the QuarantineError of its first problem.

    Several problems are all named in the message (the first decides the
    reason), so one round of fixes can clear them all.
    """
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first_attr = _attribute(errors[0]["loc"])
        reason = _REASONS.get(errors[0]["type"], WrongType)
        messages = [_message(model, error) for error in errors]
        message = messages[0]
        if len(messages) > 1:
            message += " (also: " + "; ".join(messages[1:]) + ")"
        raise reason(message, attribute=first_attr or None) from None


def _attribute(loc: tuple[int | str, ...]) -> str:
    # A dotted path of attribute names; positions inside sets and lists are
    # dropped because set order means nothing to the person reading.
    return ".".join(part for part in loc if isinstance(part, str))


def _message(model: type[BaseModel], error: Any) -> str:
    attr = _attribute(error["loc"])
    if error["type"] in _CUSTOM:
        message = str(error["msg"])
        # Validators only know their own field's name; inside a map, say
        # where that field sits ("settings.theme", not "theme").
        leaf = attr.rpartition(".")[2]
        if attr != leaf and message.startswith(leaf):
            message = attr + message[len(leaf) :]
        return message
    if error["type"] == "missing":
        return f"{attr} is missing (it is required)"
    expected = _description(model, error["loc"]) or "another type"
    return f"{attr} must be {expected}, got {describe(error['input'])}"


def _description(model: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The documented type of the attribute at `loc`, walking nested models."""
    current: type[BaseModel] | None = model
    description = None
    for part in loc:
        if not isinstance(part, str) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            break
        description = field.description
        current = _nested_model(field.annotation)
    return description


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", (annotation,))
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _expected(info: ValidationInfo) -> str:
    for model in (Account, Repository, Settings):
        field = model.model_fields.get(info.field_name or "")
        if field is not None and field.description:
            return field.description
    return "a value"


__all__ = [
    "PLANS",
    "STATUSES",
    "Account",
    "AccountProfile",
    "Membership",
    "Repository",
    "RepositoryItem",
    "Settings",
    "TimestampError",
    "describe",
    "format_utc",
    "parse",
    "to_epoch",
    "to_utc",
]
