"""An S3-compatible endpoint on loopback for the DVC-remote tests: moto's server mode in a thread of this process.

``ThreadedMotoServer`` speaks the S3 REST API over real HTTP on 127.0.0.1 (a free port); clients in other
processes (``dvc push`` / ``dvc pull`` started by ``sdm``) reach it through ``endpointurl`` exactly as they
would reach MinIO or AWS. Moto accepts any credentials; the fixture sets dummy ones and points the AWS config
files at nothing, so no user profile is read.

Fixtures: ``s3_server`` (one per session, stopped at its end) and ``s3_env`` (per test: the AWS variables set
for this process and the subprocesses it starts, the endpoint URL and a fresh bucket).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _servers import free_port

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Endpoint:
    server: object  # moto.server.ThreadedMotoServer
    url: str
    bucket: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=AWS_ENV["AWS_DEFAULT_REGION"],
                            aws_access_key_id="testing", aws_secret_access_key="testing")


class MotoServer:
    """moto's S3 server on a fixed free port: start() / stop() may be called again (a restart keeps the port;
    moto's state is in memory, so a restart starts with no buckets)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        if self._server is None:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="session")
def s3_server(session_home: Path) -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """The running endpoint, dummy AWS credentials in the environment, and a new bucket for this test."""
    s3_server.start()
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    endpoint = S3Endpoint(s3_server, s3_server.url, f"sdm-{uuid.uuid4().hex[:12]}")
    endpoint.client().create_bucket(Bucket=endpoint.bucket)
    return endpoint
