"""AWS clients and the one place where botocore errors are translated.

Clients are created lazily (never at import time) from the settings: region
and endpoint as `shared.core.settings` resolves them, credentials from the usual
botocore chain. Against a local endpoint with no credentials configured, a
dummy pair is used, because DynamoDB Local accepts any.

Every DynamoDB client counts the capacity units it consumes
(`shared.core.capacity`).

Synchronous clients come from one botocore session per process (as boto3's
default session), asynchronous ones from a session each (an aiobotocore
session belongs to an event loop); region and endpoint come from the
settings for every client. All sessions share one model loader (`_MODELS`):
a session of its own reads and parses the service's JSON models again,
40-100 ms a client, which the cutover's freeze and every short command
paid. DynamoDB and Streams clients are botocore's own; boto3 adds nothing
to them (its customizations are for S3 and for resources).

`translate()` maps a botocore exception to the dynashift hierarchy, keeping
the cause: throttling, 5xx and network faults become `TransientError` (the
only reason to retry; an endpoint nobody answers at is its subclass
`EndpointUnreachable`, exit 2 in the CLI), everything else `StoreError` with
a readable message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import platform
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlparse

import botocore
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from shared.core import capacity
from shared.core.errors import ConfigError, EndpointUnreachable, StoreError, TransientError
from shared.core.settings import Settings

TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "InternalServerError",
        "ServiceUnavailable",
        "InternalFailure",
        "TransactionInProgressException",
        "TransactionConflictException",
        "ExpiredIteratorException",
    }
)

# nosec B105: a dummy pair, used only against a local endpoint when no credentials are configured.
_DUMMY_CREDENTIALS = {"aws_access_key_id": "dynashiftlocal", "aws_secret_access_key": "dynashiftlocal"}  # nosec B105


# botocore rebuilds its default User-Agent (some 40 sanitised parts) twice per request: about
# 0.05 ms, 5-10% of a conditional write's client CPU. A fixed one (Config.user_agent, documented)
# costs nothing and names the tool, the SDK and the interpreter for AWS support.
USER_AGENT = f"dynashift Botocore/{botocore.__version__} Python/{platform.python_version()}"


def client_kwargs(
    settings: Settings, *, max_attempts: int = 3, pool: int = 50, retry_mode: str = "standard"
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "region_name": settings.effective_region,
        "config": Config(
            retries={"mode": retry_mode, "max_attempts": max_attempts},
            max_pool_connections=pool,
            connect_timeout=5,
            read_timeout=20,
            parameter_validation=False,  # DynamoDB validates anyway; this saves ~30% client CPU
            user_agent=USER_AGENT,
        ),
    }
    endpoint = settings.effective_endpoint
    if endpoint:
        kwargs["endpoint_url"] = endpoint
        if settings.is_local and _no_credentials():
            kwargs.update(_DUMMY_CREDENTIALS)
    return kwargs


# One per process: it reads no file until a model is asked for, then keeps each it parsed.
_MODELS = botocore.loaders.create_loader()
_PROCESS_SESSION: Any = None
_PROCESS_SESSION_LOCK = threading.Lock()


def _session(session: Any) -> Any:
    session.register_component("data_loader", _MODELS)
    return session


def _process_session() -> Any:
    """The process's botocore session for synchronous clients, as boto3's default session is:
    credentials resolved once by the usual chain (refreshable ones refresh themselves). A
    session costs about 10 ms to set up (1,600 event handlers), which every client and every
    local credentials check paid. botocore sessions are not thread-safe: callers hold the lock."""
    global _PROCESS_SESSION
    if _PROCESS_SESSION is None:
        _PROCESS_SESSION = _session(botocore.session.get_session())
    return _PROCESS_SESSION


def _no_credentials() -> bool:
    with _PROCESS_SESSION_LOCK:
        return _process_session().get_credentials() is None


def dynamodb(settings: Settings, **kw: Any) -> Any:
    kwargs = client_kwargs(settings, **kw)
    with _PROCESS_SESSION_LOCK:
        client = _process_session().create_client("dynamodb", **kwargs)
    return capacity.attach(client, local=settings.is_local, describer=local_engine_client)


def local_engine_client(endpoint_url: str, region: str) -> Any:
    """A plain synchronous DynamoDB client of a local engine (its dummy credentials, no capacity
    hook), from the process's session: what the capacity ledger describes tables with there."""
    with _PROCESS_SESSION_LOCK:
        return _process_session().create_client("dynamodb", endpoint_url=endpoint_url, region_name=region,
                                                **_DUMMY_CREDENTIALS)


def streams(settings: Settings, **kw: Any) -> Any:
    kwargs = client_kwargs(settings, **kw)
    with _PROCESS_SESSION_LOCK:
        return _process_session().create_client("dynamodbstreams", **kwargs)


@contextlib.asynccontextmanager
async def aio_dynamodb(settings: Settings, **kw: Any) -> AsyncIterator[Any]:
    # A session per client here: an aiobotocore session's credential fetchers belong to the
    # event loop that first used them, and the stream engines run a loop per thread.
    from aiobotocore.session import get_session

    async with _session(get_session()).create_client("dynamodb", **client_kwargs(settings, **kw)) as client:
        yield capacity.attach(client, local=settings.is_local, describer=local_engine_client)


BATCH_GET_KEYS = 100  # BatchGetItem's limit per request


async def batch_get_items(client: Any, table: str, keys: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """Every item of `table` a strongly consistent BatchGetItem finds for `keys` (wire format, raw),
    100 keys a request; unprocessed keys are asked again after a pause that doubles from 50 ms to
    2 s, as DynamoDB advises. A failure is translated as doing `what`."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(keys), BATCH_GET_KEYS):
        request: dict[str, Any] = {table: {"Keys": keys[start:start + BATCH_GET_KEYS], "ConsistentRead": True}}
        delay = 0.05
        while request:
            try:
                response = await client.batch_get_item(RequestItems=request)
            except Exception as exc:
                raise translate(exc, what) from exc
            found.extend(response.get("Responses", {}).get(table, []))
            request = response.get("UnprocessedKeys") or {}
            if request:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
    return found


def query_items(client: Any, what: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item a Query returns, page after page; a failure is translated as doing `what`."""
    while True:
        try:
            page = client.query(**kwargs)
        except Exception as exc:
            raise translate(exc, what) from exc
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in TRANSIENT_CODES or status >= 500
    return isinstance(
        exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError, OSError)
    ) or type(exc).__name__ in {"ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "TimeoutError"}


# aiohttp's names for "nobody answers there" (matched by name: aiohttp is not imported here).
_UNREACHABLE = frozenset({"ClientConnectorError", "ClientConnectorDNSError", "ConnectionTimeoutError"})


def translate(exc: BaseException, what: str) -> Exception:
    """A dynashift error for a botocore/aiohttp failure while doing `what`."""
    if isinstance(exc, (TransientError, StoreError)):
        return exc
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        endpoint = exc.kwargs.get("endpoint_url", "")
        err: Exception = EndpointUnreachable(f"{what}: cannot reach endpoint {endpoint}")
    elif type(exc).__name__ in _UNREACHABLE or isinstance(exc, ConnectionRefusedError):
        err = EndpointUnreachable(f"{what}: cannot reach endpoint ({type(exc).__name__}: {exc})")
    elif is_transient(exc):
        err = TransientError(f"{what}: {error_code(exc) or type(exc).__name__}: {exc}")
    elif isinstance(exc, NoCredentialsError):
        err = StoreError(f"{what}: no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID)")
    elif error_code(exc) == "ResourceNotFoundException":
        err = StoreError(f"{what}: table not found ({exc.response['Error'].get('Message', '')})")
    elif isinstance(exc, ClientError):
        err = StoreError(f"{what}: {error_code(exc)}: {exc.response['Error'].get('Message', '')}")
    elif isinstance(exc, BotoCoreError):
        err = StoreError(f"{what}: {exc}")
    else:
        return exc  # type: ignore[return-value]
    err.__cause__ = exc
    return err


# ------------------------------------------------------------------ raw Scan pages
def _raw_scan_pages(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    """botocore's ``before-parse`` hook for Scan: decode the JSON body in C, skip the model walk.

    botocore rebuilds every AttributeValue by walking the service model, which costs more CPU than
    everything else the verifier does per item. A successful Scan body already *is* the wire
    format (DynamoDB JSON; binary as base64 text, which `from_dynamodb_json` decodes), so it is
    handed over as it is through `customized_response_dict`, the hook's documented way to add to
    the parsed response, and the parser is given an empty body. Errors are left to botocore.
    """
    if response_dict.get("status_code") != 200:
        return
    body = json.loads(response_dict["body"])
    # ConsumedCapacity too: shared.core.capacity reads it from the parsed answer.
    customized_response_dict.update({k: body[k] for k in ("Items", "Count", "ConsumedCapacity") if k in body})
    if "LastEvaluatedKey" in body:  # sent back as ExclusiveStartKey, so binary key values as bytes again
        customized_response_dict["LastEvaluatedKey"] = {
            k: {"B": base64.b64decode(v["B"])} if "B" in v else v for k, v in body["LastEvaluatedKey"].items()
        }
    customized_response_dict["RawItems"] = True
    response_dict["body"] = b"{}"


def raw_scan_pages(client: Any) -> None:
    """Let this client's Scan calls return DynamoDB JSON unparsed (see `_raw_scan_pages`); decode the
    items with `shared.core.codec.from_dynamodb_json`. Registering twice is harmless."""
    client.meta.events.register("before-parse.dynamodb.Scan", _raw_scan_pages, unique_id="dynashift-raw-scan")


def s3_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Client kwargs for S3: `client_kwargs` minus its DynamoDB endpoint, plus the S3 one.

    The endpoint follows the AWS convention for S3: AWS_ENDPOINT_URL_S3, else
    AWS_ENDPOINT_URL, else the real regional endpoint. A custom endpoint (moto,
    MinIO, LocalStack) gets path-style addressing, which they all understand.
    """
    kwargs = client_kwargs(settings)
    for name in ("endpoint_url", "aws_access_key_id", "aws_secret_access_key"):
        kwargs.pop(name, None)
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(var)
        if not value:
            continue
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{var}: {value!r} is not an http(s) URL")
        kwargs["endpoint_url"] = value
        kwargs["config"] = kwargs["config"].merge(Config(s3={"addressing_style": "path"}))
        local = parsed.hostname in ("127.0.0.1", "localhost", "::1")
        if local and botocore.session.get_session().get_credentials() is None:
            kwargs.update(aws_access_key_id="dynashiftlocal", aws_secret_access_key="dynashiftlocal")  # nosec B106  (dummy pair for a local endpoint only)
        break
    return kwargs
