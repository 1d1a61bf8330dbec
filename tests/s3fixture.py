"""The session's real S3 server (SeaweedFS, bench/s3server.py) and the client environment that points at it.

conftest.py imports the fixtures, so every test module can ask for `s3` and `s3_env` (one server per session);
a test module imports only the plain names (`BUCKET`) from here.
"""
from __future__ import annotations

import io
import os
from contextlib import redirect_stdout

import pyarrow.fs as pafs
import pytest

from bench.s3server import LocalS3
from prep.__main__ import main as prep_main

BUCKET = "vidkit"


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """One `weed server -s3` for the session, with bucket BUCKET; stopped for certain at the end (a failing test
    included: the finalizer runs whatever happened)."""
    server = LocalS3(str(tmp_path_factory.mktemp("weed")))
    server.start()
    try:
        pafs.S3FileSystem(endpoint_override=server.endpoint, access_key=server.env["AWS_ACCESS_KEY_ID"],
                          secret_key=server.env["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_env(s3, monkeypatch, tmp_path):
    """The standard AWS variables for the server, a fresh cache dir, and few retries (a stopped server answers in
    seconds, not minutes)."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("VIDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VIDKIT_CACHE_LIMIT", raising=False)
    monkeypatch.setenv("VIDKIT_S3_ATTEMPTS", "3")
    return s3


def prepped_on_server(s3, prefix: str, synthetic_args: list[str]) -> str:
    """s3://BUCKET/PREFIX holding a `prep synthetic` store (prepped in this process, staged in a cache folder of
    the server's named for the prefix), for module-scoped fixtures that cannot use monkeypatch."""
    url = f"s3://{BUCKET}/{prefix}"
    with pytest.MonkeyPatch.context() as mp_:
        for k, v in {**s3.env, "VIDKIT_CACHE_DIR": os.path.join(s3.root, f"{prefix}-prep")}.items():
            mp_.setenv(k, v)
        with redirect_stdout(io.StringIO()):
            assert prep_main(["synthetic", "--out", url, *synthetic_args]) == 0
    return url

