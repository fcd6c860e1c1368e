"""Client construction (`shared.core.aws`): one model loader per process, everything else read anew."""

from __future__ import annotations

import asyncio

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
