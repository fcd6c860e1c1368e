"""Build DynamoDB condition expressions from boto3's condition objects.

boto3's `ConditionExpressionBuilder` renders `Attr(...)` conditions to an
expression with `#n`/`:v` placeholders; the values still need the wire
format the low-level (and aiobotocore) client speaks. `render()` does both,
so the rest of the code writes conditions the readable way.
"""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.conditions import ConditionBase, ConditionExpressionBuilder

from shared.core.codec import value_to_wire


def render(condition: ConditionBase) -> dict[str, Any]:
    """Keyword arguments for a low-level call: ConditionExpression + placeholders."""
    built = ConditionExpressionBuilder().build_expression(condition, is_key_condition=False)
    kwargs: dict[str, Any] = {"ConditionExpression": built.condition_expression}
    if built.attribute_name_placeholders:
        kwargs["ExpressionAttributeNames"] = dict(built.attribute_name_placeholders)
    if built.attribute_value_placeholders:
        kwargs["ExpressionAttributeValues"] = {
            k: value_to_wire(v) for k, v in built.attribute_value_placeholders.items()
        }
    return kwargs


def image_unchanged(image: dict[str, Any]) -> dict[str, Any]:
    """A condition that holds only while the item still has these exact values.

    Written with placeholders for every name, so attribute names with dots,
    brackets or unicode are safe (boto3's `Attr` would read a dot as a path).
    An attribute added since the read is not detected; every attribute that
    was read is compared, including the key.
    """
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    clauses = []
    for index, (name, value) in enumerate(sorted(image.items())):
        names[f"#u{index}"] = name
        values[f":u{index}"] = value_to_wire(value)
        clauses.append(f"#u{index} = :u{index}")
    return {
        "ConditionExpression": " AND ".join(clauses) or "attribute_exists(PK)",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }
