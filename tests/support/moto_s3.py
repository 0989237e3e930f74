"""moto's S3 server on 127.0.0.1 (a real HTTP endpoint that boto3, s3fs and MLflow talk to),
for the tests of model URIs and direct reads."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_env(endpoint: str) -> dict[str, str]:
    """The variables that point boto3, s3fs (botocore) and MLflow at ``endpoint``."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,  # boto3 and s3fs (botocore's setting)
        "MLFLOW_S3_ENDPOINT_URL": endpoint,  # MLflow's own
    }


def point_at(mp: object, endpoint: str) -> None:
    """Point this process's S3 clients (boto3, s3fs) at moto's ``endpoint`` through
    ``mp`` (a pytest MonkeyPatch), with no profile or session token of the machine's."""
    for key, value in s3_env(endpoint).items():
        mp.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        mp.delenv(key, raising=False)


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """Start moto's server (its request log in ``log``), yield its endpoint URL, stop it."""
    port = free_port()
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=60)


def upload_dir(client: object, bucket: str, prefix: str, root: Path) -> None:
    """Put every file below ``root`` into ``bucket`` under ``prefix/``."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


def gets(log: Path, bucket: str, key: str) -> int:
    """How many GETs of ``bucket/key`` the server's request log shows."""
    needle = f'"GET /{bucket}/{key} '
    return sum(1 for line in log.read_text(errors="replace").splitlines() if needle in line)
