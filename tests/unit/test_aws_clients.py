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


def test_clients_take_credentials_from_the_usual_chain_and_region_and_endpoint_from_the_settings(monkeypatch):
    # GIVEN credentials in the environment and no process session yet
    monkeypatch.setattr(aws, "_PROCESS_SESSION", None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-chain")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    # WHEN clients are made for two settings
    first = aws.dynamodb(SETTINGS)
    other = aws.streams(load_settings(endpoint_url="http://localhost:2", region="ap-south-1"))
    # THEN both use the chain's credentials (not the local dummy pair) and their own region and endpoint
    assert first._request_signer._credentials.access_key == "from-the-chain"
    assert other._request_signer._credentials.access_key == "from-the-chain"
    assert (first.meta.region_name, first.meta.endpoint_url) == ("eu-west-1", "http://localhost:1")
    assert (other.meta.region_name, other.meta.endpoint_url) == ("ap-south-1", "http://localhost:2")


def test_synchronous_clients_share_one_session_set_up_once(monkeypatch):
    # GIVEN no process session yet, and a count of botocore sessions set up
    import botocore.session

    monkeypatch.setattr(aws, "_PROCESS_SESSION", None)
    made = []
    original = botocore.session.get_session
    monkeypatch.setattr(botocore.session, "get_session", lambda *a: made.append(1) or original(*a))
    # WHEN several clients are made from several threads at once
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        clients = list(pool.map(lambda _: (aws.dynamodb(SETTINGS), aws.streams(SETTINGS)), range(8)))
    # THEN one session was set up for all of them, and every client works on its own
    assert len(made) == 1 and len(clients) == 8


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
