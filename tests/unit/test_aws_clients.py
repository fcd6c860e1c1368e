"""Client construction (`shared.core.aws`): one model loader per process, everything else read anew."""

from __future__ import annotations

import asyncio
import io

import botocore.loaders

from shared.core import aws
from shared.core.settings import load_settings

SETTINGS = load_settings(endpoint_url="http://localhost:1", region="eu-west-1")


def _count_model_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    original = botocore.loaders.JSONFileLoader.load_file

    def load_file(self, file_path):
        reads.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", load_file)
    return reads


def test_a_second_client_reads_no_model_file_again(monkeypatch):
    # GIVEN one client of each kind made already (the models parsed once)
    aws.dynamodb(SETTINGS), aws.streams(SETTINGS)
    reads = _count_model_reads(monkeypatch)

    async def aio() -> None:
        async with aws.aio_dynamodb(SETTINGS):
            pass

    # WHEN more are made, sync and async / THEN no service model is read or parsed again
    aws.dynamodb(SETTINGS), aws.streams(SETTINGS)
    asyncio.run(aio())
    assert reads == []


def test_each_client_still_reads_credentials_and_region_anew(monkeypatch):
    # GIVEN a client made with one pair of credentials
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    first = aws.dynamodb(SETTINGS)
    # WHEN the usual chain changes (a rotated key) / THEN the next client uses the new pair
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second")
    second = aws.dynamodb(SETTINGS)
    assert first._request_signer._credentials.access_key == "first"
    assert second._request_signer._credentials.access_key == "second"
    assert second.meta.region_name == "eu-west-1" and second.meta.endpoint_url == "http://localhost:1"


class RawBody(io.BytesIO):
    def stream(self, **_):
        yield self.getvalue()


def test_requests_carry_the_fixed_user_agent_naming_dynashift():
    # GIVEN a client, and a stand-in for the network that keeps what would be sent
    from botocore.awsrequest import AWSResponse

    client = aws.dynamodb(SETTINGS)
    sent = []

    def answer(request, **_):
        sent.append(request.headers["User-Agent"])
        return AWSResponse(request.url, 200, {}, RawBody(b'{"TableNames": []}'))

    client.meta.events.register("before-send.dynamodb.*", answer)
    # WHEN two requests go out / THEN both carry the one fixed string, built once, not per request
    # (powertools, once imported, appends its feature tag to every client's User-Agent)
    client.list_tables()
    client.list_tables()
    agents = [s.decode() if isinstance(s, bytes) else s for s in sent]
    assert len(agents) == 2 and all(a.startswith(aws.USER_AGENT) for a in agents)
    assert "ua/2.1" not in agents[0] and "cfg/retry-mode" not in agents[0]  # botocore's default, rebuilt per request
    assert aws.USER_AGENT.startswith("dynashift Botocore/")
