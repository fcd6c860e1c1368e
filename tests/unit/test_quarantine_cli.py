"""`quarantine list|retry`: known reasons only, and no personal data unless asked; the switch JSON shapes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.cli.cutover import failed_switch_as_dict
from shared.cli.main import main
from shared.cli.verify import known_reasons, quarantine_row
from shared.core.definition import SourceRef
from shared.core.settings import load_settings
from shared.cutover.protocol import CutoverError, GateCheck, SwitchAborted
from shared.store.control import ControlStore, QuarantineEntry, encode_image
from shared.store.mode import Mode, ModeState

EMAIL = "alice@example.com"


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_the_known_reasons_are_the_engines_and_the_definitions():
    reasons = known_reasons(load_settings())
    assert {"invalid_email", "key_collision", "item_too_large", "transform_failed", "wrong_type",
            "missing_attribute", "invalid_item"} <= set(reasons)
    assert reasons == sorted(reasons)


@pytest.mark.parametrize("command", ["list", "retry"])
def test_an_unknown_reason_is_refused_before_any_read_naming_the_allowed(command, capsys, monkeypatch):
    # GIVEN no DynamoDB at all (any client built would fail the test)
    def no_client(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a client was built")

    monkeypatch.setattr("shared.core.aws.dynamodb", no_client)
    monkeypatch.setattr("shared.core.aws.aio_dynamodb", no_client)
    # WHEN a reason nobody raises is asked for
    code = main(["quarantine", command, "--reason", "invalid_emial"])
    # THEN exit 2 and one line naming the option and the allowed reasons
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert code == 2 and captured.out == ""
    assert "--reason" in line and "invalid_emial" in line and "'invalid_email'" in line and "key_collision" in line


class FakeClient:
    """An aiobotocore-like client holding one quarantine entry; it applies ProjectionExpression."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.requests: list[dict[str, Any]] = []

    async def query(self, **kwargs: Any) -> dict[str, Any]:
        self.requests.append(kwargs)
        if kwargs["ExpressionAttributeValues"][":pk"]["S"] != self.raw["PK"]["S"]:
            return {"Items": []}
        item = self.raw
        if "ProjectionExpression" in kwargs:
            names = kwargs["ExpressionAttributeNames"]
            wanted = {names.get(p.strip(), p.strip()) for p in kwargs["ProjectionExpression"].split(",")}
            item = {k: v for k, v in item.items() if k in wanted}
        return {"Items": [item]}


def stored_entry() -> dict[str, Any]:
    from shared.store.control import quarantine_pk

    ref = SourceRef("sc-accounts", ("a1",))
    return {
        "PK": {"S": quarantine_pk(ref)}, "SK": {"S": ref.as_text()},
        "source_table": {"S": "sc-accounts"}, "source_key": {"L": [{"S": "a1"}]},
        "reason": {"S": "key_collision"}, "message": {"S": "the email is taken by account a2"},
        "image": {"B": encode_image({"accountId": "a1", "email": EMAIL})},
        "detected_at": {"N": "1767323045.5"},
        "held_keys": {"SS": [f"EMAIL#{EMAIL}\x1fACCOUNT"]},
        "collision_key": {"S": f"EMAIL#{EMAIL}\x1fACCOUNT"},
        "write_token": {"S": "t1"},
    }


def test_the_default_listing_does_not_even_read_the_image():
    # GIVEN an entry whose image, held keys and collision key hold an email
    client = FakeClient(stored_entry())
    # WHEN listed without images
    (entry,) = asyncio.run(ControlStore(client, "control").quarantine_list(with_images=False))
    # THEN every query projected the image and the target keys away, and the entry has none
    assert client.requests and all("ProjectionExpression" in r for r in client.requests)
    for request in client.requests:
        projected = {request["ExpressionAttributeNames"][p.strip()] for p in request["ProjectionExpression"].split(",")}
        assert projected == {"source_table", "source_key", "reason", "message", "detected_at"}
    assert entry.image is None and not entry.held_keys and entry.collision_key is None
    assert entry.reason == "key_collision" and entry.ref == SourceRef("sc-accounts", ("a1",))
    # AND the full read still gets everything
    (full,) = asyncio.run(ControlStore(FakeClient(stored_entry()), "control").quarantine_list())
    assert full.image == {"accountId": "a1", "email": EMAIL} and full.collision_key


def test_a_row_shows_images_and_target_keys_only_on_request():
    entry = QuarantineEntry(ref=SourceRef("sc-accounts", ("a1",)), reason="key_collision", message="taken",
                            image={"accountId": "a1", "email": EMAIL}, held_keys={(f"EMAIL#{EMAIL}", "ACCOUNT")},
                            detected_at=1.5, collision_key=(f"EMAIL#{EMAIL}", "ACCOUNT"))
    plain = quarantine_row(entry, with_images=False)
    assert set(plain) == {"table", "key", "reason", "message", "detected_at"}
    assert EMAIL not in repr(plain)
    full = quarantine_row(entry, with_images=True)
    assert full["image"]["email"] == EMAIL and full["collision_key"] == [f"EMAIL#{EMAIL}", "ACCOUNT"]


class Recorded:
    def __init__(self, first: ModeState | None, last: ModeState | None) -> None:
        self.first_read, self.last_written = first, last


def test_a_refused_switch_reports_the_gate_and_an_aborted_one_the_stored_reason():
    gate = [GateCheck("verify", False, "no verify result yet"), GateCheck("quarantine", True, "empty")]
    refused = failed_switch_as_dict("cutover", CutoverError("cutover refused by the gate: verify: no verify"),
                                    Recorded(ModeState(Mode.OLD), None), gate)  # type: ignore[arg-type]
    assert refused["outcome"] == "refused" and refused["from_mode"] == refused["to_mode"] == "old"
    assert refused["reason"].startswith("cutover refused by the gate")
    assert refused["gate"][0] == {"name": "verify", "ok": False, "detail": "no verify result yet"}
    back = ModeState(Mode.OLD, version=3, extra={"reason": "timeout: the forward mirror did not drain",
                                                 "freeze_window_s": 2.5})
    aborted = failed_switch_as_dict("cutover", SwitchAborted("cutover aborted ..."),
                                    Recorded(ModeState(Mode.OLD), back), [])  # type: ignore[arg-type]
    assert aborted["outcome"] == "aborted" and aborted["to_mode"] == "old"
    assert aborted["reason"] == "timeout: the forward mirror did not drain" and aborted["freeze_window_s"] == 2.5
