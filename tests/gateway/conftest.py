"""Fixtures for gateway tests: real gateway and fake-backend processes on loopback, and clients."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from sovereign_gateway.proto import externalscaler_pb2 as scaler_pb
from sovereign_gateway.proto import externalscaler_pb2_grpc as scaler_grpc

from tests.loopback import accepts_connections, free_port, wait_for_listener, wait_until

REPO = Path(__file__).resolve().parents[2]
GATEWAY_BIN = Path(sys.executable).parent / "sovereign-gateway"
START_TIMEOUT = 15.0


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``url``; (status, parsed JSON body or text)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
            status: int = response.status
    except urllib.error.HTTPError as error:
        body, status = error.read(), error.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


@dataclass
class Backend:
    """A fake vLLM replica process."""

    port: int
    process: subprocess.Popen[bytes]
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        _, body = http_json(self.url + "/fake/stats")
        assert isinstance(body, dict)
        return body

    def set_health(self, *, delay: float = 0.0, failures: int = 0) -> None:
        """Later ``/health`` answers take ``delay`` seconds; the next ``failures`` are 503."""
        request = urllib.request.Request(
            self.url + "/fake/health",
            data=json.dumps({"delay": delay, "failures": failures}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        listening = wait_until(lambda: accepts_connections(self.port, self.host), timeout)
        assert listening, "fake backend did not listen"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@dataclass
class Gateway:
    """A ``sovereign-gateway`` process and its three listeners."""

    process: subprocess.Popen[bytes]
    port: int
    scaler_port: int
    admin_port: int
    routes_file: Path
    records_file: Path
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def scaler_address(self) -> str:
        return f"127.0.0.1:{self.scaler_port}"

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.records_file.read_text().splitlines() if line]

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line]

    def usage(self) -> dict[str, Any]:
        status, body = http_json(self.admin_url + "/usage")
        assert status == 200
        assert isinstance(body, dict)
        return body

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from the admin /metrics (0 when absent)."""
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                sample, _, value = line.rpartition(" ")
                got = sample[len(name) :].strip("{}")
                if ",".join(sorted(got.split(","))) == wanted:
                    return float(value)
        return 0.0

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def _limit_descriptors(limit: int) -> Callable[[], None]:
    def limit_in_child() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return limit_in_child


def scaled_object(model: str) -> scaler_pb.ScaledObjectRef:
    return scaler_pb.ScaledObjectRef(
        name="llm", namespace="sovereign-models", scalerMetadata={"model": model}
    )


def metric_value(address: str, model: str) -> int:
    """GetMetrics over real gRPC, as KEDA's metrics server calls it."""
    with grpc.insecure_channel(address) as channel:
        stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
        request = scaler_pb.GetMetricsRequest(
            scaledObjectRef=scaled_object(model), metricName="gateway-requests"
        )
        response = stub.GetMetrics(request, timeout=5)
        value: int = response.metricValues[0].metricValue
        return value


@dataclass
class Processes:
    """Starts gateways and backends for one test and stops every one of them afterwards."""

    tmp: Path
    started: list[Backend | Gateway] = field(default_factory=list)

    def backend(
        self,
        port: int | None = None,
        *,
        start_delay: float = 0.0,
        reuse_port: bool = False,
        wait: bool = True,
        host: str = "127.0.0.1",
    ) -> Backend:
        port = port or free_port()
        args = [sys.executable, "-m", "tests.gateway.fake_vllm", "--port", str(port)]
        args += ["--host", host]
        args += ["--start-delay", str(start_delay)]
        if reuse_port:
            args.append("--reuse-port")
        process = subprocess.Popen(
            args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        backend = Backend(port, process, host)
        self.started.append(backend)
        if wait and not start_delay:
            backend.wait_listening()
        return backend

    def gateway(
        self,
        routes: dict[str, Any],
        *args: str,
        name: str = "gw",
        ports: tuple[int, int, int] | None = None,
        wait: bool = True,
        descriptor_limit: int | None = None,
    ) -> Gateway:
        """``descriptor_limit``: the process's RLIMIT_NOFILE, soft and hard (``ulimit -n``)."""
        port, scaler_port, admin_port = ports or (free_port(), free_port(), free_port())
        routes_file = self.tmp / f"{name}-routes.json"
        routes_file.write_text(json.dumps(routes))
        records_file = self.tmp / f"{name}-records.jsonl"
        log_file = self.tmp / f"{name}-log.jsonl"
        command = [
            str(GATEWAY_BIN),
            "--routes",
            str(routes_file),
            "--listen",
            f"127.0.0.1:{port}",
            "--scaler-listen",
            f"127.0.0.1:{scaler_port}",
            "--admin-listen",
            f"127.0.0.1:{admin_port}",
            "--records",
            str(records_file),
            *args,
        ]
        limit = None if descriptor_limit is None else _limit_descriptors(descriptor_limit)
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=limit,  # noqa: PLW1509  (one setrlimit call in the child)
            )
        gateway = Gateway(
            process, port, scaler_port, admin_port, routes_file, records_file, log_file
        )
        self.started.append(gateway)
        if wait:
            listening = wait_for_listener(process, admin_port, START_TIMEOUT, interval=0.02)
            assert listening, log_file.read_text()
        return gateway

    def stop_all(self) -> None:
        for item in reversed(self.started):
            if isinstance(item, Backend):
                item.kill()
            else:
                item.stop(timeout=5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    pool = Processes(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    pool = Processes(tmp_path_factory.mktemp("gateway"))
    try:
        yield pool
    finally:
        pool.stop_all()


def route(name: str, upstream: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "upstream": upstream, **extra}
