"""A real S3-compatible HTTP server on 127.0.0.1 for tests: moto's ThreadedMotoServer.

Clients (s3fs in the test process and in Dask worker processes) talk to it
over plain HTTP with ``endpoint_url``; nothing is patched. Moto keeps its
state in the process that runs the server (the test process), so every
client, whatever process it lives in, sees the same buckets.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

#: Credentials and region moto accepts; set in the environment of the test
#: process (and so inherited by worker processes it spawns).
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
#: Every variable :func:`aws_test_env` sets.
SET_NAMES = (*ENV, "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "NO_PROXY", "no_proxy")
#: Variables that could point clients elsewhere (a user's profile, a proxy).
UNSET = (
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def aws_test_env():
    """Set :data:`ENV` (and unset :data:`UNSET`) in ``os.environ``; restore afterwards."""
    saved = {
        k: os.environ.get(k)
        for k in (*ENV, *UNSET, "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "NO_PROXY", "no_proxy")
    }
    try:
        for k in UNSET:
            os.environ.pop(k, None)
        os.environ.update(ENV)
        os.environ["AWS_CONFIG_FILE"] = os.devnull  # no ~/.aws profile leaks in
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        for k in ("NO_PROXY", "no_proxy"):
            os.environ[k] = ",".join(filter(None, [os.environ.get(k), HOST, "localhost"]))
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"S3 test server on {HOST}:{port} did not start in {timeout} s") from None
            time.sleep(0.05)


def storage_options(endpoint_url: str) -> dict:
    """s3fs options for the test server: top-level ``endpoint_url`` (s3fs
    passes it to the botocore client), small timeouts and retries."""
    return {
        "endpoint_url": endpoint_url,
        "client_kwargs": {"region_name": ENV["AWS_REGION"]},
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}},
    }


def create_bucket(endpoint_url: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=ENV["AWS_REGION"])
    s3.create_bucket(Bucket=bucket)


@contextlib.contextmanager
def s3_server(buckets=("kaas-test",)):
    """Run a moto S3 server on a free 127.0.0.1 port with ``buckets`` created;
    yields its endpoint URL. Call inside :func:`aws_test_env`."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request
    port = free_port()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    try:
        wait_listening(port)
        endpoint = f"http://{HOST}:{port}"
        for bucket in buckets:
            create_bucket(endpoint, bucket)
        yield endpoint
    finally:
        server.stop()
