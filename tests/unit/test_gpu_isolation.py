"""A container on a GPU node sees only the GPUs it was allocated.

Three upstream artifacts at the pinned versions decide it, each committed under tests/data: K3s's
containerd template (a default runtime only from ``default-runtime``), the NVIDIA container
toolkit (which devices an unprivileged container gets), and the device plugin chart (how it hands
a pod its GPUs). The tests hold the host steps and the chart values to them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from components.config import StackConfig, load_stack_file
from components.plan.host_steps import (
    CONTAINER_TOOLKIT_SETTINGS,
    k3s_config,
    render_host_steps,
)
from components.plan.kubernetes import InferenceStackSpec
from components.plan.kubernetes.charts import DEVICE_LIST_STRATEGY, device_plugin_chart

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
K3S_TEMPLATE = DATA / "k3s-v1.31.6" / "containerd-config-v3-runtimes.toml.tmpl"
TOOLKIT = DATA / "nvidia-container-toolkit-1.17.8"
DEVICE_PLUGIN = DATA / "nvidia-device-plugin-0.17.1"
STACKS = ("lab", "staging", "prod-fra")


def stack(name: str) -> StackConfig:
    return load_stack_file(ROOT / "stacks" / f"Pulumi.{name}.yaml")


def gpu_stack() -> StackConfig:
    config = stack("prod-fra")
    assert any(h.gpu.count for h in config.hosts), "prod-fra is the stack with GPU hosts"
    return config


# --- K3s: no default runtime -----------------------------------------------------------------


def test_k3s_template_sets_a_default_runtime_only_from_the_default_runtime_setting() -> None:
    lines = K3S_TEMPLATE.read_text().splitlines()
    found = [i for i, line in enumerate(lines) if "default_runtime_name" in line]
    assert len(found) == 1, "K3s's template names a default runtime in one place"
    opener = next(line for line in reversed(lines[: found[0]]) if line.lstrip().startswith("{{"))
    assert re.fullmatch(r"\{\{-? *(with|if) +\.NodeConfig\.DefaultRuntime *-?\}\}", opener.strip())


@pytest.mark.parametrize("name", STACKS)
def test_no_k3s_node_has_a_default_nvidia_runtime(name: str) -> None:
    config = stack(name)
    for host in config.hosts:
        settings = k3s_config(config, host)
        assert "default-runtime" not in settings, f"{host.name} ({host.gpu.count} GPUs)"
    if name == "prod-fra":
        assert all(h.gpu.count for h in config.hosts)  # the case that used to set it


# --- the container toolkit: devices only from the plugin's mounts ---------------------------------


def toolkit_keys_and_defaults() -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """config.toml's top-level keys (key -> (Go field, Go type)) and GetDefault's values by field."""
    source = (TOOLKIT / "config.go").read_text()
    struct = source.split("type Config struct {")[1].split("\n}")[0]
    keys = {
        tag: (go_field, go_type)
        for go_field, go_type, tag in re.findall(
            r'^\s*(\w+)\s+(\w+)\s+`toml:"([^",]+)', struct, re.M
        )
    }
    defaults_block = source.split("d := Config{")[1].split("\n\t}")[0]
    defaults = dict(re.findall(r"^\t\t(\w+):\s+(true|false),", defaults_block, re.M))
    return keys, defaults


def test_toolkit_settings_are_options_of_the_pinned_toolkit_changed_from_their_defaults() -> None:
    keys, defaults = toolkit_keys_and_defaults()
    assert CONTAINER_TOOLKIT_SETTINGS == {
        "accept-nvidia-visible-devices-envvar-when-unprivileged": "false",
        "accept-nvidia-visible-devices-as-volume-mounts": "true",
    }
    for key, value in CONTAINER_TOOLKIT_SETTINGS.items():
        assert key in keys, f"{key} is not a config.toml option of toolkit 1.17.8"
        go_field, go_type = keys[key]
        assert go_type == "bool"
        # a bool GetDefault leaves out is false
        assert defaults.get(go_field, "false") != value, f"{key} would stay at its default"


def test_toolkit_trusts_the_visible_devices_variable_only_from_privileged_containers() -> None:
    hook = (TOOLKIT / "container_config.go").read_text()
    get_devices = hook.split("func (hookConfig *hookConfig) getDevices(")[1].split("\n}\n")[0]
    # the mounted list is read first, the variable only when privileged or allowed by the setting
    assert get_devices.index("AcceptDeviceListAsVolumeMounts") < get_devices.index(
        "getDevicesFromEnvvar"
    )
    assert "if privileged || hookConfig.AcceptEnvvarUnprivileged {" in get_devices
    assert 'capSysAdmin = "CAP_SYS_ADMIN"' in (TOOLKIT / "privileged.go").read_text()


def toolkit_step_arguments(commands: tuple[str, ...], call: str) -> list[str]:
    """Run ``call`` with the toolkit step's own functions, each of ``commands`` replaced by a
    stand-in that prints its arguments one per line: what the step would pass them."""
    config = gpu_stack()
    (step,) = render_host_steps(config, config.hosts[0], only=("30-cuda-container-toolkit",))
    definitions = step.script.split('case "$SOVEREIGN_MODE" in')[0]
    stand_ins = "\n".join(f'{name}() {{ printf "%s\\n" "$@"; }}' for name in commands)
    result = subprocess.run(
        ["bash", "-c", f"{definitions}\n{stand_ins}\n{call}\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def test_toolkit_step_writes_the_settings_through_the_pinned_nvidia_ctk() -> None:
    # nvidia-ctk cannot run here: a stand-in records the arguments the step's own code passes
    arguments = toolkit_step_arguments(("nvidia-ctk",), "wanted_toolkit_config")
    settings = [f"{k}={v}" for k, v in CONTAINER_TOOLKIT_SETTINGS.items()]
    assert arguments == [
        "config",
        "--config-file=/etc/nvidia-container-runtime/config.toml",
        *(word for setting in settings for word in ("--set", setting)),
    ]
    ctk = (TOOLKIT / "nvidia-ctk-config.go").read_text()
    assert 'Name:        "config-file"' in ctk
    assert 'Name: "set"' in ctk
    # without --in-place or --output the new config goes to stdout, for the step to compare
    options = (TOOLKIT / "nvidia-ctk-config-options.go").read_text()
    assert "return nullCloser{os.Stdout}, nil" in options
    config = gpu_stack()
    (step,) = render_host_steps(config, config.hosts[0], only=("30-cuda-container-toolkit",))
    assert 'ensure_file "$TOOLKIT_CONFIG" 644 "$toolkit_config"' in step.script


def test_toolkit_upgrades_keep_the_edited_runtime_config_without_a_prompt() -> None:
    # apt-get cannot install here: a stand-in records the options the step passes it
    arguments = toolkit_step_arguments(("apt-get", "apt-mark"), "install_pinned pkg=1.0")
    # the step edits config.toml after installing: dpkg must keep it, never ask (no terminal)
    assert "Dpkg::Options::=--force-confold" in arguments
    assert "Dpkg::Options::=--force-confdef" in arguments


# --- the device plugin: the list as volume mounts ----------------------------------------------


def test_device_plugin_hands_gpus_as_volume_mounts_the_hosts_runtime_accepts() -> None:
    values = device_plugin_chart(InferenceStackSpec.from_stack(gpu_stack())).values
    assert values["deviceListStrategy"] == DEVICE_LIST_STRATEGY == "volume-mounts"
    strategies = re.findall(
        r'DeviceListStrategy\w+\s*=\s*"([^"]+)"', (DEVICE_PLUGIN / "consts.go").read_text()
    )
    assert DEVICE_LIST_STRATEGY in strategies
    daemonset = (DEVICE_PLUGIN / "daemonset-device-plugin.yml").read_text()
    assert (
        '{{- if typeIs "string" .Values.deviceListStrategy }}\n'
        "          - name: DEVICE_LIST_STRATEGY\n"
        "            value: {{ .Values.deviceListStrategy }}"
    ) in daemonset
    # the runtime must take a mounted list, or a pod gets no GPU at all
    assert CONTAINER_TOOLKIT_SETTINGS["accept-nvidia-visible-devices-as-volume-mounts"] == "true"


def test_device_plugin_itself_still_sees_every_gpu_under_volume_mounts() -> None:
    # the plugin container asks for all GPUs by NVIDIA_VISIBLE_DEVICES=all; with volume-mounts the
    # chart gives it CAP_SYS_ADMIN, which is what the toolkit calls privileged
    helpers = (DEVICE_PLUGIN / "_helpers.tpl").read_text()
    requires = helpers.split('define "nvidia-device-plugin.requiresCapSysAdmin"')[1].split(
        "{{- end }}"
    )[0]
    assert 'include "nvidia-device-plugin.deviceListStrategyIncludesVolumeMount"' in requires
    includes = helpers.split('define "nvidia-device-plugin.deviceListStrategyIncludesVolumeMount"')[
        1
    ].split("{{- end }}")[0]
    assert 'contains "volume-mounts" .Values.deviceListStrategy' in includes
    context = helpers.split('define "nvidia-device-plugin.securityContext"')[1].split(
        "{{- end -}}\n{{- end -}}"
    )[0]
    assert "requiresCapSysAdmin" in context
    assert "- SYS_ADMIN" in context
    values = device_plugin_chart(InferenceStackSpec.from_stack(gpu_stack())).values
    assert "securityContext" not in values, "a securityContext value would replace SYS_ADMIN"
    assert (
        "NVIDIA_VISIBLE_DEVICES\n            value: all"
        in (DEVICE_PLUGIN / "daemonset-device-plugin.yml").read_text()
    )
