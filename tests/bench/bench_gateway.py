"""Benchmark: the latency the gateway adds, beside vllm-router and LiteLLM's proxy.

    .venv/bin/python tests/bench/bench_gateway.py [--duration 4] [--tools gateway,vllm-router,litellm]

Two fake backends answer at once (one model each). In the same run, on the same machine, each tool
routes by model to the same two backends, and a load generator in its own process sends chat
completions alternating between the two models:

- open loop at a moderate rate (latency measured from each request's scheduled start, so a stall
  is counted, not hidden), against each tool and against the backends directly;
- rising open-loop rates until p99 passes 50 ms: the highest rate that stays under;
- closed loop at saturation (64 requests outstanding): throughput and latency.

"Added" latency is a tool's percentile minus the direct percentile at the same load. vllm-router
and LiteLLM are installed into a throwaway virtual environment under /tmp (``--venv``), only if they
install; what happened is reported. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.loopback import free_port  # noqa: E402

GATEWAY_BIN = Path(sys.executable).parent / "sovereign-gateway"
MODELS = ("bench/model-a", "bench/model-b")
RATES = (100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000)
MODERATE_RATE = 100
P99_BOUND = 0.050


def wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- load generator (runs in its own process) -------------------------------------------------


HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
# the load alternates between the two models
BODIES = [
    json.dumps({"model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    for m in MODELS
]


async def _post(session: Any, url: str, index: int, errors: dict[str, int]) -> bool:
    """Send request number ``index``; True when it was answered 200, else the error is counted."""
    import aiohttp

    try:
        async with session.post(url, data=BODIES[index % 2], headers=HEADERS) as response:
            await response.read()
            if response.status != 200:
                errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                return False
    except (aiohttp.ClientError, OSError) as error:
        errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
        return False
    return True


async def _open_loop(url: str, rate: float, duration: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    total = int(rate * duration)
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic() + 0.2

        async def one(index: int) -> None:
            scheduled = start + index / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if await _post(session, url, index, errors):
                latencies.append(time.monotonic() - scheduled)

        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.monotonic() - start
    return _summary(latencies, errors, total / max(elapsed, 1e-9), total)


async def _closed_loop(url: str, concurrency: int, duration: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.monotonic() + duration

        async def worker(offset: int) -> None:
            index = offset
            while time.monotonic() < end:
                sent = time.monotonic()
                answered = await _post(session, url, index, errors)
                index += 1
                if answered:
                    latencies.append(time.monotonic() - sent)

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    return _summary(latencies, errors, len(latencies) / elapsed, len(latencies))


def _summary(
    latencies: list[float], errors: dict[str, int], rate: float, sent: int
) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return (
            ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
            if ordered
            else float("nan")
        )

    return {
        "rate": round(rate, 1),
        "ok": len(ordered),
        "sent": sent,
        "errors": errors,
        "p50_ms": round(pct(0.50), 3),
        "p99_ms": round(pct(0.99), 3),
    }


def loadgen_main(args: argparse.Namespace) -> None:
    if args.concurrency:
        result = asyncio.run(_closed_loop(args.loadgen, args.concurrency, args.duration))
    else:
        result = asyncio.run(_open_loop(args.loadgen, args.rate, args.duration))
    print(json.dumps(result))


def run_load(url: str, duration: float, rate: float = 0, concurrency: int = 0) -> dict[str, Any]:
    command = [sys.executable, __file__, "--loadgen", url, "--duration", str(duration)]
    command += ["--rate", str(rate), "--concurrency", str(concurrency)]
    output = subprocess.run(
        command, capture_output=True, text=True, timeout=duration * 10 + 60, check=True
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


# ---- the tools under test ---------------------------------------------------------------------


class Tool:
    def __init__(self, name: str, url: str, process: subprocess.Popen[bytes] | None) -> None:
        self.name, self.url, self.process = name, url, process

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_backends(workdir: Path) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    processes, urls = [], []
    for model in MODELS:
        port = free_port()
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.gateway.fake_vllm",
                    "--port",
                    str(port),
                    "--model",
                    model,
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        assert wait_http(url + "/health", 20), f"backend {url} did not start"
    return processes, urls


def start_gateway(
    workdir: Path, backends: list[str], name: str = "gateway", source: Path | None = None
) -> Tool:
    """The gateway of this checkout, or (``source``) the ``images/gateway`` package of another
    checkout, e.g. an earlier commit's, run with this environment's dependencies."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source / "images" / "gateway")
    routes = workdir / "routes.json"
    routes.write_text(
        json.dumps(
            {"models": [{"name": m, "upstream": u} for m, u in zip(MODELS, backends, strict=True)]}
        )
    )
    port, admin = free_port(), free_port()
    process = subprocess.Popen(
        [
            str(GATEWAY_BIN),
            "--routes",
            str(routes),
            "--listen",
            f"127.0.0.1:{port}",
            "--scaler-listen",
            f"127.0.0.1:{free_port()}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--records",
            os.devnull,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert wait_http(f"http://127.0.0.1:{admin}/readyz", 20), f"{name} did not start"
    return Tool(name, f"http://127.0.0.1:{port}/v1/chat/completions", process)


def ensure_venv(venv: Path, package: str, log: Callable[[str], None]) -> bool:
    pip = venv / "bin" / "pip"
    if not pip.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run(
        [str(pip), "install", "-q", package],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        log(f"{package}: did not install: {result.stderr.strip().splitlines()[-1:]}")
        return False
    return True


def start_vllm_router(venv: Path, backends: list[str], log: Callable[[str], None]) -> Tool | None:
    """vllm-router in its multi-model (IGW) mode: one worker registered per model."""
    if not ensure_venv(venv, "vllm-router", log):
        return None
    binary = venv / "bin" / "vllm-router"
    if not binary.exists():
        log("vllm-router: installed, but no vllm-router command")
        return None
    port = free_port()
    command = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--enable-igw"]
    command += ["--prometheus-port", str(free_port()), "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_http(f"http://127.0.0.1:{port}/health", 30):
        log(f"vllm-router: did not answer /health (command: {' '.join(command[1:])})")
        process.kill()
        return None
    for model, url in zip(MODELS, backends, strict=True):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/workers",
            data=json.dumps({"url": url, "model_id": model}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                log(f"vllm-router: adding worker {url} for {model} answered {response.status}")
    return Tool("vllm-router", f"http://127.0.0.1:{port}/v1/chat/completions", process)


def routes_by_model(url: str, backends: list[str]) -> bool:
    """Each model's request reaches that model's backend (the fake answers with its pid)."""
    for model, backend in zip(MODELS, backends, strict=True):
        with urllib.request.urlopen(backend + "/fake/stats", timeout=5) as response:
            pid = json.loads(response.read())["pid"]
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        request = urllib.request.Request(
            url,
            data=body.encode(),
            headers=HEADERS,
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        if answer.get("pid") != pid:
            return False
    return True


def start_litellm(
    venv: Path, workdir: Path, backends: list[str], log: Callable[[str], None]
) -> Tool | None:
    if not ensure_venv(venv, "litellm[proxy]", log):
        return None
    config = workdir / "litellm.yaml"
    lines = ["model_list:"]
    for model, url in zip(MODELS, backends, strict=True):
        lines += [
            f"  - model_name: {model}",
            "    litellm_params:",
            f"      model: openai/{model}",
            f"      api_base: {url}/v1",
            "      api_key: sk-fake",
        ]
    lines += ["litellm_settings:", "  telemetry: false", "  drop_params: true"]
    lines += ["general_settings:", "  master_key: sk-bench"]
    config.write_text("\n".join(lines) + "\n")
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": "sk-bench",
    }
    process = subprocess.Popen(
        [
            str(venv / "bin" / "litellm"),
            "--config",
            str(config),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "litellm.log").open("wb"),
        env=env,
    )
    if not wait_http(f"http://127.0.0.1:{port}/health/liveliness", 120):
        log(
            "litellm: proxy did not start; see its log: "
            + (workdir / "litellm.log").read_text()[-300:]
        )
        process.kill()
        return None
    return Tool("litellm", f"http://127.0.0.1:{port}/v1/chat/completions", process)


def max_rate(url: str, duration: float) -> tuple[float, list[dict[str, Any]]]:
    best, steps = 0.0, []
    for rate in RATES:
        result = run_load(url, duration, rate=rate)
        steps.append(result)
        if result["errors"] or result["p99_ms"] >= P99_BOUND * 1000:
            break
        best = rate
    return best, steps


def print_ratios(results: dict[str, Any]) -> None:
    """This gateway against its anchors measured in the same run."""
    if "gateway" in results and "gateway-baseline" in results:
        now, then = results["gateway"], results["gateway-baseline"]
        ratios = {
            "saturation throughput": now["saturation"]["rate"]
            / max(then["saturation"]["rate"], 1e-9),
            "saturation p50": now["saturation"]["p50_ms"] / max(then["saturation"]["p50_ms"], 1e-9),
            "moderate p50": now["moderate"]["p50_ms"] / max(then["moderate"]["p50_ms"], 1e-9),
            "CPU per request": now["saturation"]["cpu_ms_per_request"]
            / max(then["saturation"]["cpu_ms_per_request"], 1e-9),
        }
        for what, ratio in ratios.items():
            print(f"gateway / baseline {what}: {ratio:.2f}")
    if "gateway" in results and "vllm-router" in results:
        ratio = results["gateway"]["saturation"]["rate"] / max(
            results["vllm-router"]["saturation"]["rate"], 1e-9
        )
        print(f"gateway / vllm-router saturation throughput: {ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--tools", default="gateway,vllm-router,litellm")
    parser.add_argument("--venv", default="/tmp/bench-venv")
    parser.add_argument(
        "--baseline-gateway",
        type=Path,
        metavar="CHECKOUT",
        help="also measure the gateway of another checkout (git worktree add DIR REV), as the "
        "anchor this one is compared with in the same run",
    )
    parser.add_argument("--loadgen", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(args)
        return 0

    notes: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    backends, urls = start_backends(workdir)
    tools: list[Tool] = []
    try:
        wanted = args.tools.split(",")
        if "gateway" in wanted:
            tools.append(start_gateway(workdir, urls))
        if args.baseline_gateway is not None:
            tools.append(start_gateway(workdir, urls, "gateway-baseline", args.baseline_gateway))
        if "vllm-router" in wanted and (
            tool := start_vllm_router(Path(args.venv), urls, notes.append)
        ):
            tools.append(tool)
        if "litellm" in wanted and (
            tool := start_litellm(Path(args.venv), workdir, urls, notes.append)
        ):
            tools.append(tool)
        # the backend directly (a fake answers any model name): the baseline for "added"
        direct = f"{urls[0]}/v1/chat/completions"
        results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}}
        for tool in tools:
            if not routes_by_model(tool.url, urls):
                notes.append(f"{tool.name}: requests did not reach their model's backend")
        targets = [("direct", direct, backends[0].pid)]
        targets += [(tool.name, tool.url, tool.process.pid) for tool in tools if tool.process]
        for name, url, pid in targets:
            warm = run_load(url, 1.0, rate=50)  # connections and caches warm
            moderate = run_load(url, args.duration, rate=MODERATE_RATE)
            cpu_before = process_cpu_seconds(pid)
            saturated = run_load(url, args.duration, concurrency=64)
            # CPU per request of the tool's process (the backend's, for "direct"): steadier than
            # latency on a shared machine
            saturated["cpu_ms_per_request"] = round(
                (process_cpu_seconds(pid) - cpu_before) * 1000 / max(saturated["ok"], 1), 3
            )
            best, steps = max_rate(url, args.duration)
            results[name] = {
                "warmup_errors": warm["errors"],
                "moderate": moderate,
                "saturation": saturated,
                "max_rate_p99_under_50ms": best,
                "rate_steps": steps,
            }
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        base = results["direct"]
        for tool in tools:
            row = results[tool.name]
            row["added_ms"] = {
                load: {
                    "p50": round(row[load]["p50_ms"] - base[load]["p50_ms"], 3),
                    "p99": round(row[load]["p99_ms"] - base[load]["p99_ms"], 3),
                }
                for load in ("moderate", "saturation")
            }
        results["notes"] = notes
        print(json.dumps(results, indent=2))
        print_ratios(results)
    finally:
        for tool in tools:
            tool.stop()
        for process in backends:
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
