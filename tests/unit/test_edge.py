"""The edge in front of the gateway: K3s's packaged Traefik, read from the chart K3s ships.

No K3s runs here, so the flags the plan gives Traefik are held against the packaged chart's own
template and values at the version each K3s line installs (tests/data/traefik-chart-*/).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import load_stack_file
from components.config.catalog import K3S_PACKAGED_TRAEFIK, PackagedTraefik
from components.plan.kubernetes.gateway import (
    TRAEFIK_ENTRYPOINTS_ANNOTATION,
    TRAEFIK_TIMEOUTS,
    TRAEFIK_TLS_ANNOTATION,
    edge_timeout_seconds,
    gateway_ingress,
    gateway_url,
    traefik_arguments,
    traefik_config,
)
from components.plan.kubernetes.spec import InferenceStackSpec
from tests.unit.test_config import NS, ROOT, problems_for, stack_data, write_stack

DATA = ROOT / "tests" / "data"
LINES = sorted(K3S_PACKAGED_TRAEFIK.items())
# The chart that first templates ports.<name>.transport: the spelling of the timeout flags.
TRANSPORT_CHART = DATA / "traefik-chart-28.0.0"

# chart 27's pass-through of additionalArguments, inside the container's args
ADDITIONAL_ARGUMENTS_BLOCK = re.compile(
    r"\{\{- with \.Values\.additionalArguments \}\}\s*"
    r"\{\{- range \. \}\}\s*"
    r"(?P<item>- \{\{ \. \| quote \}\})\s*"
    r"\{\{- end \}\}\s*"
    r"\{\{- end \}\}"
)
CONTAINER_KEY = re.compile(r"^ {8}[A-Za-z]+:", re.MULTILINE)


def chart_dir(line: PackagedTraefik) -> Path:
    return DATA / f"traefik-chart-{line.upstream_chart_version}"


def template(line: PackagedTraefik) -> str:
    return (chart_dir(line) / "_podtemplate.tpl").read_text()


def chart_values(line: PackagedTraefik) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((chart_dir(line) / "values.yaml").read_text())
    return values


def spec_on(
    minor: str, line: PackagedTraefik, tmp_path: Path, **gateway: Any
) -> InferenceStackSpec:
    """The prod stack's inference on a K3s release of ``minor``, through the config boundary."""
    data = copy.deepcopy(stack_data("prod-fra"))
    data["config"][NS + "k3s"]["version"] = f"v{minor}.{line.first_patch}+k3s1"
    section = data["config"][NS + "inference"]["gateway"]
    for key, value in gateway.items():
        if value is None:
            section.pop(key, None)
        else:
            section[key] = value
    return InferenceStackSpec.from_stack(load_stack_file(write_stack(tmp_path, data)))


def emitted_args(line: PackagedTraefik, values: dict[str, Any]) -> list[str]:
    """What chart ``line``'s template puts into the Traefik container's args for
    ``values["additionalArguments"]``: its block, applied item by item."""
    text = template(line)
    block = ADDITIONAL_ARGUMENTS_BLOCK.search(text)
    assert block, "the packaged template no longer passes additionalArguments through"
    args_key = text.rfind("\n        args:\n", 0, block.start())
    assert args_key != -1
    # nothing at the container's own indentation between args: and the block: it is in args
    assert not CONTAINER_KEY.search(text, args_key + len("\n        args:\n"), block.start())
    rendered = []
    for argument in values["additionalArguments"]:
        # sprig's quote is Go's %q: plain double quotes for printable ASCII without " or \
        assert argument.isascii()
        assert argument.isprintable()
        assert '"' not in argument
        assert "\\" not in argument
        rendered.append(block["item"].replace("{{ . | quote }}", f'"{argument}"'))
    parsed: list[str] = yaml.safe_load("\n".join(rendered))
    return parsed


@pytest.mark.parametrize(("minor", "line"), LINES, ids=[m for m, _ in LINES])
def test_each_k3s_line_has_its_packaged_chart_committed(minor: str, line: PackagedTraefik) -> None:
    chart = yaml.safe_load((chart_dir(line) / "Chart.yaml").read_text())
    assert chart["version"] == line.chart_version
    assert chart["appVersion"].startswith(f"v{line.traefik_major}.")
    source = (chart_dir(line) / "SOURCE.md").read_text()
    assert line.chart_version in source
    assert f"v{minor}" in source
    assert "Apache-2.0" in source


@pytest.mark.parametrize(("minor", "line"), LINES, ids=[m for m, _ in LINES])
def test_traefik_timeout_flags_pass_through_the_packaged_chart(
    minor: str, line: PackagedTraefik, tmp_path: Path
) -> None:
    spec = spec_on(minor, line, tmp_path)
    values = yaml.safe_load(traefik_config(spec)["spec"]["valuesContent"])
    defaults = chart_values(line)
    assert set(values) <= set(defaults), "a value the packaged chart does not define"
    assert isinstance(defaults["additionalArguments"], list)
    assert emitted_args(line, values) == traefik_arguments(spec)
    held = edge_timeout_seconds(spec)
    assert held > (
        spec.inference.gateway.cold_start_timeout_seconds
        + spec.inference.gateway.request_timeout_seconds
    )
    for entry_point in (line.web_entry_point, line.websecure_entry_point):
        for timeout in TRAEFIK_TIMEOUTS:
            flag = f"--entryPoints.{entry_point}.transport.respondingTimeouts.{timeout}"
            assert f"{flag}={held}s" in traefik_arguments(spec)


@pytest.mark.parametrize(("minor", "line"), LINES, ids=[m for m, _ in LINES])
def test_packaged_chart_ignores_ports_transport_values(minor: str, line: PackagedTraefik) -> None:
    """Why the timeouts are flags: the chart K3s packages never reads the values the plan used
    to set (ports.<name>.transport.respondingTimeouts), while the chart that does (28) reads
    them under exactly that name."""
    if line.traefik_major == 2 and int(line.upstream_chart_version.split(".")[0]) < 28:
        assert "respondingTimeouts" not in template(line)
        assert ".transport" not in template(line)
    transport_template = (TRANSPORT_CHART / "_podtemplate.tpl").read_text()
    assert "{{- with .respondingTimeouts }}" in transport_template


def test_timeout_flags_are_spelled_as_the_chart_itself_emits_them() -> None:
    transport_template = (TRANSPORT_CHART / "_podtemplate.tpl").read_text()
    upstream = re.findall(
        r'"--entryPoints\.\{\{ \$entrypoint \}\}\.transport\.respondingTimeouts\.(\w+)=\{\{ \.\1 \}\}"',
        transport_template,
    )
    assert sorted(upstream) == sorted(TRAEFIK_TIMEOUTS)


@pytest.mark.parametrize(("minor", "line"), LINES, ids=[m for m, _ in LINES])
def test_entry_points_used_are_the_packaged_charts_ports(
    minor: str, line: PackagedTraefik, tmp_path: Path
) -> None:
    text = template(line)
    # one Traefik entry point per key of .Values.ports, named by the key
    assert re.search(
        r"\{\{- range \$name, \$config := \.Values\.ports \}\}\s*\{\{- if \$config \}\}\s*"
        r'- "--entrypoints\.\{\{\$name\}\}\.address=',
        text,
    )
    ports = chart_values(line)["ports"]
    assert ports[line.web_entry_point]["exposedPort"] == 80
    assert ports[line.websecure_entry_point]["exposedPort"] == line.websecure_exposed_port
    assert ports[line.websecure_entry_point]["tls"]["enabled"] is True
    used = {flag.split(".")[1] for flag in traefik_arguments(spec_on(minor, line, tmp_path))} | {
        gateway_ingress(spec_on(minor, line, tmp_path))["metadata"]["annotations"][
            TRAEFIK_ENTRYPOINTS_ANNOTATION
        ]
    }
    assert used <= set(ports)


@pytest.mark.parametrize(("minor", "line"), LINES, ids=[m for m, _ in LINES])
def test_web_redirects_to_https_as_the_charts_own_redirect_does(
    minor: str, line: PackagedTraefik, tmp_path: Path
) -> None:
    spec = spec_on(minor, line, tmp_path)
    redirects = [a for a in traefik_arguments(spec) if ".http.redirections." in a]
    # the chart's ports.web.redirectTo renders these for the same Traefik; it spells the prefix
    # "--entrypoints." here and "--entryPoints." for the timeouts (chart 28): Traefik reads both
    chart_lines = re.findall(
        r'- "(--entrypoints\.\{\{ \$entrypoint \}\}\.http\.redirections\.entryPoint\.[^"]+)"',
        template(line),
    )
    exposed = line.websecure_exposed_port
    expected = [
        c.replace("{{ $entrypoint }}", line.web_entry_point).replace(
            "{{ $toPort.exposedPort }}", str(exposed)
        )
        for c in chart_lines
        if "priority" not in c
    ]
    assert [r.lower() for r in redirects] == [e.lower() for e in expected]
    assert f"entryPoint.to=:{exposed}" in redirects[0]


def test_gateway_is_served_on_websecure_only_with_tls(tmp_path: Path) -> None:
    minor, line = LINES[0]
    spec = spec_on(minor, line, tmp_path)
    ingress = gateway_ingress(spec)
    assert ingress["metadata"]["annotations"] == {
        TRAEFIK_ENTRYPOINTS_ANNOTATION: line.websecure_entry_point,
        TRAEFIK_TLS_ANNOTATION: "true",
    }
    assert ingress["spec"]["tls"][0]["secretName"] == spec.inference.gateway.tls_secret
    assert gateway_url(spec).startswith("https://")


def test_plain_http_on_purpose_serves_web_without_redirect(tmp_path: Path) -> None:
    minor, line = LINES[0]
    spec = spec_on(minor, line, tmp_path, tlsSecret=None, plainHttp=True)
    ingress = gateway_ingress(spec)
    assert ingress["metadata"]["annotations"] == {
        TRAEFIK_ENTRYPOINTS_ANNOTATION: line.web_entry_point
    }
    assert "tls" not in ingress["spec"]
    assert not [a for a in traefik_arguments(spec) if ".http.redirections." in a]
    assert gateway_url(spec).startswith("http://")


def test_gateway_without_tls_secret_is_refused_unless_plain_http(tmp_path: Path) -> None:
    def unset(c: dict[str, Any]) -> None:
        c[NS + "inference"]["gateway"].pop("tlsSecret")

    problems = problems_for(tmp_path, unset)
    assert "inference.gateway.tlsSecret" in problems
    assert "plainHttp" in problems["inference.gateway.tlsSecret"]


def test_plain_http_and_a_tls_secret_together_are_refused(tmp_path: Path) -> None:
    problems = problems_for(
        tmp_path, lambda c: c[NS + "inference"]["gateway"].update(plainHttp=True)
    )
    assert "expected one of the two" in problems["inference.gateway.plainHttp"]


@pytest.mark.parametrize("version", ["v1.33.1+k3s1", "v1.30.9+k3s1", "v1.31.1+k3s1"])
def test_k3s_release_without_a_known_traefik_chart_is_refused(tmp_path: Path, version: str) -> None:
    problems = problems_for(tmp_path, lambda c: c[NS + "k3s"].update(version=version))
    assert "Traefik chart" in problems["k3s.version"]
    assert "v1.31.2" in problems["k3s.version"]


def test_a_k3s_release_the_toolkit_does_not_install_is_not_held_to_the_table(
    tmp_path: Path,
) -> None:
    # k3s.install false: no K3s of the toolkit's, so no packaged Traefik to pass flags through
    data = copy.deepcopy(stack_data("staging"))
    data["config"][NS + "k3s"].update(version="v1.33.1+k3s1", install=False)
    config = load_stack_file(write_stack(tmp_path, data))
    assert config.k3s.version == "v1.33.1+k3s1"
    assert traefik_arguments(InferenceStackSpec.from_stack(config)) == []


def test_hand_built_k3s_spec_needs_the_k3s_release() -> None:
    stack = load_stack_file(ROOT / "stacks" / "Pulumi.staging.yaml")
    with pytest.raises(ValueError, match=r"k3sVersion: required when k3s is true"):
        InferenceStackSpec(
            environment="team", inference=stack.inference, residency=stack.residency, k3s=True
        )


def test_cluster_not_built_as_k3s_gets_no_traefik_flags() -> None:
    stack = load_stack_file(ROOT / "stacks" / "Pulumi.staging.yaml")
    spec = InferenceStackSpec(
        environment="team", inference=stack.inference, residency=stack.residency
    )
    assert traefik_arguments(spec) == []
