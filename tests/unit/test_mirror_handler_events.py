"""Parsing a Lambda DynamoDB stream event, as the mirror handler receives it.

The fixture is an `sc-accounts` event in Lambda's JSON shape: an INSERT, a
MODIFY that changes `teamIds`, an INSERT with binary attributes (base64 text
in JSON), a MODIFY whose NewImage carries an empty map as ``{}`` (DynamoDB
Local's quirk) and a TTL REMOVE.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from boto3.dynamodb.types import Binary

from shared.core.codec import from_stream_image, to_native
from shared.core.definition import get_definition
from shared.streams.mirror import Chain, table_from_arn

EVENT_FILE = Path(__file__).parent.parent / "fixtures" / "stream_event_accounts.json"
ACCOUNTS = "sc-accounts"


@pytest.fixture(scope="module")
def records() -> dict[str, dict[str, Any]]:
    """The fixture's records by account id and event name, e.g. ``"acc-1001 MODIFY"``."""
    event = json.loads(EVENT_FILE.read_text())
    return {f"{r['dynamodb']['Keys']['accountId']['S']} {r['eventName']}": r for r in event["Records"]}


def chain(*records: dict[str, Any]) -> Chain:
    keys = from_stream_image(records[0]["dynamodb"]["Keys"])
    return Chain(get_definition("sc").source(ACCOUNTS).ref(keys), list(records))


def test_every_record_keys_parse_to_the_account_id(records: dict[str, dict[str, Any]]) -> None:
    # GIVEN every record of the event
    # WHEN its Keys are parsed
    keys = [from_stream_image(r["dynamodb"]["Keys"]) for r in records.values()]
    # THEN each is the native key of one account, in stream order
    assert keys == [{"accountId": a} for a in ("acc-1001", "acc-1001", "acc-1002", "acc-1003", "acc-1004")]


def test_an_insert_becomes_a_native_item(records: dict[str, dict[str, Any]]) -> None:
    # GIVEN an INSERT
    # WHEN its chain's images are read
    old, new = chain(records["acc-1001 INSERT"]).images()
    # THEN there is no old image and the new one is a native item: Decimal, set, dict, bool
    assert old is None
    assert new == {
        "accountId": "acc-1001",
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "plan": "pro",
        "status": "active",
        "createdAt": Decimal(1609459200),
        "teamIds": {"team-1", "team-2"},
        "settings": {"theme": "dark", "emailNotifications": True},
    }


def test_a_team_ids_change_shows_in_old_and_new_images(records: dict[str, dict[str, Any]]) -> None:
    # GIVEN the MODIFY that moves acc-1001 from team-1 to team-3
    # WHEN its chain's images are read
    old, new = chain(records["acc-1001 MODIFY"]).images()
    # THEN both images are there, with their string sets
    assert old is not None and new is not None
    assert old["teamIds"] == {"team-1", "team-2"}
    assert new["teamIds"] == {"team-2", "team-3"}
    assert new["updatedAt"] == "2024-06-01T12:00:01Z"


def test_a_chain_of_two_records_has_first_old_image_then_each_new_image(records: dict[str, dict[str, Any]]) -> None:
    # GIVEN the INSERT and the MODIFY of one item, in stream order
    # WHEN the chain's images are read
    images = chain(records["acc-1001 INSERT"], records["acc-1001 MODIFY"]).images()
    # THEN they are [no old image, the inserted item, the modified item]
    assert [None if i is None else sorted(i.get("teamIds", ())) for i in images] == [
        None,
        ["team-1", "team-2"],
        ["team-2", "team-3"],
    ]


def test_binary_values_in_base64_become_bytes(records: dict[str, dict[str, Any]]) -> None:
    # GIVEN an INSERT whose binary attributes Lambda rendered as base64 text
    # WHEN its images are read
    _, new = chain(records["acc-1002 INSERT"]).images()
    # THEN B, BS and a B nested in a map are bytes again
    assert new is not None
    assert isinstance(new["avatarThumb"], Binary)
    assert new["avatarThumb"].value == b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    assert new["apiKeyHashes"] == {Binary(b"\x00\x01\x02"), Binary(b"\xfe\xff")}
    assert new["settings"] == {"signature": Binary(b"-- grace")}


def test_an_empty_map_rendered_as_braces_is_an_empty_dict(records: dict[str, dict[str, Any]]) -> None:
    # GIVEN a MODIFY whose NewImage has `settings` (and a list element) as {}
    record = records["acc-1003 MODIFY"]
    assert record["dynamodb"]["NewImage"]["settings"] == {}
    # WHEN its images are read
    old, new = chain(record).images()
    # THEN the empty map is an empty dict, as GetItem/Scan would give it
    assert old is not None and new is not None
    assert new["settings"] == {}
    assert new["tags"] == ["beta", {}]
    assert old["settings"] == {"theme": "light"}
    scanned = {**record["dynamodb"]["NewImage"], "settings": {"M": {}}, "tags": {"L": [{"S": "beta"}, {"M": {}}]}}
    assert new == to_native(scanned)


def test_a_ttl_remove_has_only_an_old_image(records: dict[str, dict[str, Any]]) -> None:
    # GIVEN a REMOVE made by TTL
    record = records["acc-1004 REMOVE"]
    assert record["userIdentity"]["principalId"] == "dynamodb.amazonaws.com"
    # WHEN its images are read
    old, new = chain(record).images()
    # THEN the old item is there and the new image is absent
    assert old == {
        "accountId": "acc-1004",
        "email": "old@example.com",
        "status": "deleted",
        "createdAt": Decimal(1500000000),
        "expiresAt": Decimal(1717243000),
    }
    assert new is None


def test_the_parsed_images_transform_cleanly(records: dict[str, dict[str, Any]]) -> None:
    # GIVEN the new images of the event (binary, {} and sets included)
    definition = get_definition("sc")
    images = [chain(r).images()[-1] for r in records.values()]
    # WHEN the sc transform runs on them
    targets = [definition.transform(ACCOUNTS, image) for image in images if image is not None]
    # THEN each becomes one account profile (plus its memberships), none quarantined
    assert [t[0]["PK"] for t in targets] == [
        "ACCOUNT#acc-1001",
        "ACCOUNT#acc-1001",
        "ACCOUNT#acc-1002",
        "ACCOUNT#acc-1003",
    ]
    assert targets[3][0]["preferences"] == {}


def test_table_from_arn_reads_the_table_name(records: dict[str, dict[str, Any]]) -> None:
    # GIVEN the event's stream ARN, and ARNs of tables with dots and dashes in their names
    arn = next(iter(records.values()))["eventSourceARN"]
    # WHEN the table is read from them
    # THEN it is the name between "table/" and "/stream"
    assert table_from_arn(arn) == "sc-accounts"
    assert table_from_arn("arn:aws:dynamodb:eu-west-1:1:table/prod.sc-accounts_v2/stream/2024-01-01T00:00:00.000") == (
        "prod.sc-accounts_v2"
    )


@pytest.mark.parametrize("arn", ["", "arn:aws:kinesis:us-east-1:1:stream/sc-accounts", "sc-accounts"])
def test_table_from_arn_refuses_what_is_not_a_dynamodb_arn(arn: str) -> None:
    # GIVEN something that is not a DynamoDB stream ARN
    # WHEN the table is read from it
    # THEN a ValueError quotes it
    with pytest.raises(ValueError, match="not a DynamoDB stream ARN"):
        table_from_arn(arn)
