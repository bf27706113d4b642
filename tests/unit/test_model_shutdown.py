"""Scale-in and rollouts do not cut streams: a stopping model replica leaves the Services, drains
its requests while still serving, and only then gets SIGTERM; the HPA removes one replica at a
time. Numbers come from the stack (gateway.requestTimeoutSeconds, idleSeconds)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.config import StackConfig, load_stack_file
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.serving import (
    DRAIN_SCRIPT,
    ENDPOINT_REMOVAL_SECONDS,
    HPA_MAX_PERIOD_SECONDS,
    HPA_MAX_STABILIZATION_SECONDS,
    SHUTDOWN_MARGIN_SECONDS,
    VLLM_BUSY_GAUGES,
)
from tests.k8s_schemas import kubernetes_version, validate_builtin, validate_scaled_object

ROOT = Path(__file__).resolve().parents[2]
STAGING = ROOT / "stacks" / "Pulumi.staging.yaml"


def variant(tmp_path: Path, *, request_timeout: int, idle: int, own_image: bool) -> StackConfig:
    data = yaml.safe_load(STAGING.read_text())
    inference = data["config"]["sovereign-inference:inference"]
    inference.setdefault("gateway", {})["requestTimeoutSeconds"] = request_timeout
    model = inference["models"][0]
    model["idleSeconds"] = idle
    if own_image:
        model.update(
            image=inference["image"].replace("vllm/vllm-openai", "teams/sglang"),
            args=["python3", "-m", "sglang.launch_server", "--port", "8000"],
        )
    stack = tmp_path / "Pulumi.variant.yaml"
    stack.write_text(yaml.safe_dump(data))
    return load_stack_file(stack)


def first_model(config: StackConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    plan = inference_plan(InferenceStackSpec.from_stack(config))
    return plan.models[0].deployment, plan.models[0].scaled_object


def server_of(deployment: dict[str, Any]) -> dict[str, Any]:
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(server, dict)
    return server


@pytest.mark.parametrize("request_timeout", [600, 3600])
def test_grace_outlasts_endpoint_removal_the_request_timeout_and_the_exit(
    tmp_path: Path, request_timeout: int
) -> None:
    config = variant(tmp_path, request_timeout=request_timeout, idle=300, own_image=False)
    deployment, _ = first_model(config)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= request_timeout + ENDPOINT_REMOVAL_SECONDS + SHUTDOWN_MARGIN_SECONDS
    # the drain gives up before the kubelet would kill the replica, leaving the exit its margin
    command = server_of(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["python3", "-c", DRAIN_SCRIPT]
    _port, removal, deadline, _poll, *gauges = command[3:]
    assert int(removal) == ENDPOINT_REMOVAL_SECONDS
    assert int(deadline) >= request_timeout
    assert int(deadline) + SHUTDOWN_MARGIN_SECONDS <= grace
    assert tuple(gauges) == VLLM_BUSY_GAUGES
    validate_builtin(deployment, kubernetes_version(config.k3s.version))


def test_the_drained_gauges_are_the_pinned_vllms_scheduler_gauges() -> None:
    loggers = (ROOT / "tests" / "data" / "vllm-0.11.0" / "metrics-loggers.py.txt").read_text()
    for gauge in VLLM_BUSY_GAUGES:
        assert f'name="{gauge}",' in loggers


def test_a_bring_your_own_server_waits_with_the_native_sleep_action(tmp_path: Path) -> None:
    config = variant(tmp_path, request_timeout=600, idle=300, own_image=True)
    deployment, _ = first_model(config)
    version = kubernetes_version(config.k3s.version)
    lifecycle = server_of(deployment)["lifecycle"]
    assert lifecycle == {"preStop": {"sleep": {"seconds": ENDPOINT_REMOVAL_SECONDS}}}
    validate_builtin(deployment, version)
    # the pinned release's schema knows the action: a misspelt field in it is refused
    server_of(deployment)["lifecycle"] = {"preStop": {"sleep": {"second": 10}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(deployment, version)


@pytest.mark.parametrize(
    ("request_timeout", "idle", "period", "window"),
    [(600, 300, 640, 300), (3600, 86400, HPA_MAX_PERIOD_SECONDS, HPA_MAX_STABILIZATION_SECONDS)],
    ids=["from config", "capped at the HPA maxima"],
)
def test_the_hpa_removes_one_replica_per_grace_after_idle_seconds(
    tmp_path: Path, request_timeout: int, idle: int, period: int, window: int
) -> None:
    config = variant(tmp_path, request_timeout=request_timeout, idle=idle, own_image=False)
    _, scaled = first_model(config)
    validate_scaled_object(scaled)
    scale_down = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"][
        "scaleDown"
    ]
    assert scale_down["stabilizationWindowSeconds"] == window
    assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": period}]
    assert scale_down["selectPolicy"] == "Min"


# --- the drain, run for real against a server on loopback ---------------------------------------


class Metrics:
    """vLLM's /metrics as the drain sees it: busy for ``busy_polls`` answers, then idle."""

    def __init__(self, busy_polls: int) -> None:
        self.busy_polls = busy_polls
        self.polls = 0

    def body(self) -> bytes:
        self.polls += 1
        running = 1.0 if self.polls <= self.busy_polls else 0.0
        labels = '{engine="0",model_name="mistral-small"}'
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {running}\n"
            f"vllm:num_requests_waiting{labels} 0.0\n"
            f"vllm:kv_cache_usage_perc{labels} 0.5\n"
        ).encode()


@pytest.fixture
def metrics_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, Metrics]]:
    metrics = Metrics(request.param)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.body()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], metrics
    server.shutdown()
    server.server_close()


def run_drain(port: int, deadline: int) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", DRAIN_SCRIPT, str(port), "0", str(deadline), "1", *VLLM_BUSY_GAUGES],
        check=True,
        timeout=deadline + 30,
    )
    return time.monotonic() - started


@pytest.mark.parametrize("metrics_server", [2], indirect=True)
def test_the_drain_returns_once_the_replica_has_no_requests(
    metrics_server: tuple[int, Metrics],
) -> None:
    port, metrics = metrics_server
    run_drain(port, deadline=60)
    assert metrics.polls == 3  # two busy answers, then the idle one ends the wait


@pytest.mark.parametrize("metrics_server", [10**6], indirect=True)
def test_the_drain_gives_up_at_its_deadline(metrics_server: tuple[int, Metrics]) -> None:
    port, metrics = metrics_server
    assert run_drain(port, deadline=2) >= 2
    assert metrics.polls >= 2


def test_the_drain_returns_when_the_server_is_gone() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as unused:
        port = unused.server_address[1]
    # nothing listens there any more: the wait ends at once instead of running to the deadline
    assert run_drain(port, deadline=60) < 30


def test_pulumi_waits_for_a_rollout_as_long_as_a_replica_takes_to_stop_and_start() -> None:
    config = load_stack_file(
        Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.prod-fra.yaml"
    )
    spec = InferenceStackSpec.from_stack(config)
    for deployment in (m.deployment for m in inference_plan(spec).models):
        pod = deployment["spec"]["template"]["spec"]
        (server,) = pod["containers"]
        probe = server["startupProbe"]
        # maxSurge 0: the old replica's whole grace, then the new one's whole startup budget
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
        needed = (
            pod["terminationGracePeriodSeconds"]
            + probe["periodSeconds"] * probe["failureThreshold"]
        )
        waited = int(deployment["metadata"]["annotations"]["pulumi.com/timeoutSeconds"])
        # pulumi-kubernetes' default wait for a Deployment is 10 minutes: far too short here
        assert waited > needed > 600
