"""The scaler's mutual TLS and the admin port's reach, as the plan builds and wires them.

What KEDA does with a TriggerAuthentication is read from its source at v2.16.1 (committed under
``tests/data/keda-2.16.1``): the external scaler's auth parameter names, and the TLS client it
builds from them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from sovereign_gateway.ports import ADMIN_HTTP_PORT
from sovereign_gateway.settings import parse_settings

from components.config import StackConfigError
from components.inference_stack import InferenceStack
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.gateway import (
    ADMIN_TOKEN_DIR,
    GATEWAY_SCALER_TLS,
    KEDA_SCALER_CLIENT_TLS,
    SCALER_CA_ANNOTATION,
    SCALER_CA_PLACEHOLDER,
    SCALER_TLS_DIR,
    gateway_deployment,
    scaler_server_names,
)
from components.plan.kubernetes.security import network_policies
from components.plan.kubernetes.serving import SCALER_TRIGGER_AUTH, scaler_address
from components.plan.kubernetes.spec import GATEWAY_NAMESPACE, MODELS_NAMESPACE
from components.providers.scaler_pki import (
    ScalerPkiProvider,
    ca_fingerprint,
    issue_scaler_certificates,
)
from tests.k8s_schemas import (
    kubernetes_version,
    validate_builtin,
    validate_scaled_object,
    validate_trigger_authentication,
)
from tests.unit.test_inference_objects import stack_variant
from tests.unit.test_inference_stack_mocks import team_spec
from tests.unit.test_program_mocks import (
    HELM_TYPE,
    SCALER_PKI_TYPE,
    ProgramRun,
    run_mocked,
    unwrap_secrets,
)

KEDA = Path(__file__).resolve().parents[1] / "data" / "keda-2.16.1"
KEDA_CHART = Path(__file__).resolve().parents[1] / "data" / "charts" / "keda-2.16.1"
SCRAPER = {"namespace": "monitoring", "podLabels": {"app.kubernetes.io/name": "prometheus"}}


def _with_scraper(scraper: dict[str, Any]) -> Any:
    def edit(config: dict[str, Any]) -> None:
        config["sovereign-inference:inference"]["gateway"]["metricsScraper"] = scraper

    return edit


def test_the_trigger_authentication_names_the_parameters_keda_2_16_reads() -> None:
    source = (KEDA / "external_scaler.go").read_text()
    read = set(re.findall(r'config\.AuthParams\["(\w+)"\]', source))
    plan = inference_plan(team_spec())
    (auth,) = [o for o in plan.objects() if o["kind"] == "TriggerAuthentication"]
    validate_trigger_authentication(auth)
    refs = auth["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in refs} == {"caCert", "tlsClientCert", "tlsClientKey"} <= read
    assert {r["name"] for r in refs} == {KEDA_SCALER_CLIENT_TLS}
    assert auth["metadata"]["namespace"] == MODELS_NAMESPACE
    # KEDA presents a client certificate only when both its certificate and key are given
    tls_source = (KEDA / "tls_config.go").read_text()
    assert 'if clientCert != "" && clientKey != ""' in tls_source
    for model in plan.models:
        validate_scaled_object(model.scaled_object)
        (trigger,) = model.scaled_object["spec"]["triggers"]
        assert trigger["authenticationRef"] == {"name": SCALER_TRIGGER_AUTH}
        assert auth["metadata"]["name"] == SCALER_TRIGGER_AUTH


def test_the_gateway_certificate_names_what_keda_and_the_peers_dial() -> None:
    """KEDA's gRPC client checks the certificate against the host of ``scalerAddress`` (its
    tls.Config sets no ServerName); the replicas check each other under their peer name."""
    issued = issue_scaler_certificates(scaler_server_names())
    cert = x509.load_pem_x509_certificate(issued.serverCert.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    assert urlsplit(f"//{scaler_address()}").hostname in dns
    args = gateway_deployment(team_spec())["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = parse_settings(args)
    assert settings.peer_tls_server_name in dns
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    keda = x509.load_pem_x509_certificate(issued.kedaCert.encode())
    ca = x509.load_pem_x509_certificate(issued.caCert.encode())
    for leaf in (cert, keda):
        leaf.verify_directly_issued_by(ca)
    # every file the flags name is in the mounted Secret
    assert {settings.scaler_tls_cert, settings.scaler_tls_key, settings.scaler_tls_ca} == {
        Path(SCALER_TLS_DIR) / key for key in ("tls.crt", "tls.key", "ca.crt")
    }
    volumes = gateway_deployment(team_spec())["spec"]["template"]["spec"]["volumes"]
    assert {"name": "scaler-tls", "secret": {"secretName": GATEWAY_SCALER_TLS}} in volumes


def test_the_plan_and_a_render_hold_no_key() -> None:
    plan = inference_plan(team_spec())
    secrets = [
        o
        for o in plan.objects()
        if o["metadata"]["name"] in (GATEWAY_SCALER_TLS, KEDA_SCALER_CLIENT_TLS)
    ]
    assert len(secrets) == 2
    for secret in secrets:
        assert secret["type"] == "kubernetes.io/tls"
        assert "data" not in secret
        assert "stringData" not in secret
    assert "PRIVATE KEY" not in json.dumps(plan.objects())


def test_the_stack_issues_the_certificates_once_and_keeps_the_keys_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def body() -> None:
        InferenceStack("team-ml", team_spec(), kubeconfig="apiVersion: v1\nkind: Config\n")

    run = run_mocked(body, {}, [], "team", monkeypatch)
    (pki,) = run.of_type(SCALER_PKI_TYPE)
    assert pki.raw_inputs["serverNames"] == scaler_server_names()
    secrets = {
        r.raw_inputs["metadata"]["name"]: r
        for r in run.registrations
        if r.type == "kubernetes:core/v1:Secret"
        and r.raw_inputs["metadata"]["name"] in (GATEWAY_SCALER_TLS, KEDA_SCALER_CLIENT_TLS)
    }
    assert set(secrets) == {GATEWAY_SCALER_TLS, KEDA_SCALER_CLIENT_TLS}
    for secret in secrets.values():
        assert "stringData" in secret.secret_paths
        data = unwrap_secrets(secret.raw_inputs)["stringData"]
        assert set(data) == {"ca.crt", "tls.crt", "tls.key"}
        assert "PRIVATE KEY" in data["tls.key"]
        assert pki.urn in secret.dependencies
    (auth,) = [r for r in run.registrations if r.raw_inputs.get("kind") == "TriggerAuthentication"]
    assert secrets[KEDA_SCALER_CLIENT_TLS].urn in auth.dependencies
    for scaled in [r for r in run.registrations if r.raw_inputs.get("kind") == "ScaledObject"]:
        assert auth.urn in scaled.dependencies
    (deployment,) = [
        r
        for r in run.registrations
        if r.raw_inputs.get("kind") == "Deployment"
        and r.raw_inputs["metadata"].get("namespace") == GATEWAY_NAMESPACE
    ]
    assert secrets[GATEWAY_SCALER_TLS].urn in deployment.dependencies


def _ca_and_restart_annotations(run: ProgramRun) -> tuple[str, str, str]:
    """The CA the run issued, and the annotation on the gateway's and on KEDA's pod template."""
    (secret,) = [
        r
        for r in run.registrations
        if r.type == "kubernetes:core/v1:Secret"
        and r.raw_inputs["metadata"]["name"] == GATEWAY_SCALER_TLS
    ]
    ca = unwrap_secrets(secret.raw_inputs)["stringData"]["ca.crt"]
    (deployment,) = [
        r
        for r in run.registrations
        if r.raw_inputs.get("kind") == "Deployment"
        and r.raw_inputs["metadata"].get("namespace") == GATEWAY_NAMESPACE
    ]
    template = deployment.raw_inputs["spec"]["template"]["metadata"]
    (keda,) = [r for r in run.of_type(HELM_TYPE) if r.raw_inputs["name"] == "keda"]
    operator_pod = keda.raw_inputs["values"]["podAnnotations"]["keda"]
    return ca, template["annotations"][SCALER_CA_ANNOTATION], operator_pod[SCALER_CA_ANNOTATION]


def test_a_new_scaler_ca_restarts_the_gateway_and_the_keda_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KEDA 2.16 keys its pool of scaler connections by ``scalerAddress`` alone and drops an
    entry only when the connection shuts down (its scaler's ``Close`` does nothing): a running
    operator keeps the TLS settings it first dialled with. The gateway reads its files at start.
    So both pod templates carry the CA's fingerprint, and a new CA rolls both."""
    source = (KEDA / "external_scaler.go").read_text()
    (pool_key,) = re.findall(r"key, err := hashstructure\.Hash\(([^)]*)\)", source)
    assert pool_key == "metadata.scalerAddress, nil"
    shutdown = source.index(
        "<-waitForState(context.TODO(), connGroup.grpcConnection, connectivity.Shutdown)"
    )
    assert source.index("connectionPool.Delete(key)") > shutdown
    assert source.count("connectionPool.Delete(") == 1
    assert re.search(
        r"func \(s \*externalScaler\) Close\(context\.Context\) error \{\s*return nil\s*\}", source
    )
    # the chart puts podAnnotations.keda on the operator's pod template, not on the Deployment
    chart = (KEDA_CHART / "templates" / "manager" / "deployment.yaml").read_text()
    pod_template = chart[chart.index("  template:\n    metadata:") : chart.index("\n    spec:")]
    assert "toYaml .Values.podAnnotations.keda | nindent 8" in pod_template
    # the plan leaves the fingerprint to the wiring: no certificate in a render
    plan = inference_plan(team_spec())
    template = gateway_deployment(team_spec())["spec"]["template"]["metadata"]
    assert template["annotations"] == {SCALER_CA_ANNOTATION: SCALER_CA_PLACEHOLDER}
    assert plan.keda.values["podAnnotations"]["keda"] == template["annotations"]

    def body() -> None:
        InferenceStack("team-ml", team_spec(), kubeconfig="apiVersion: v1\nkind: Config\n")

    # each run issues a new set, as a first deploy or a reissue (``--replace``) does
    first, second = (run_mocked(body, {}, [], "team", monkeypatch) for _ in range(2))
    fingerprints = []
    for run in (first, second):
        ca, gateway_pod, keda_pod = _ca_and_restart_annotations(run)
        assert gateway_pod == keda_pod == ca_fingerprint(ca)
        fingerprints.append(gateway_pod)
    assert fingerprints[0] != fingerprints[1]


def test_the_set_is_identified_by_the_ca_fingerprint() -> None:
    created = ScalerPkiProvider().create({"serverNames": scaler_server_names()})
    assert created.outs is not None
    ca = x509.load_pem_x509_certificate(created.outs["caCert"].encode())
    assert created.id == ca.fingerprint(hashes.SHA256()).hex()
    other = ScalerPkiProvider().create({"serverNames": scaler_server_names()})
    assert other.id != created.id


def test_the_provider_issues_keys_and_replaces_the_set_on_new_names() -> None:
    provider = ScalerPkiProvider()
    created = provider.create({"serverNames": scaler_server_names()})
    assert created.outs is not None
    assert "PRIVATE KEY" in created.outs["serverKey"]
    same = provider.diff("id", created.outs, {"serverNames": scaler_server_names()})
    assert not same.changes
    renamed = provider.diff("id", created.outs, {"serverNames": ["other.example"]})
    assert renamed.changes
    assert renamed.replaces == ["serverNames"]


def test_only_the_configured_scraper_reaches_the_admin_port(tmp_path: Path) -> None:
    config = stack_variant(tmp_path, _with_scraper(SCRAPER))
    version = kubernetes_version(config.k3s.version)
    policies = network_policies(InferenceStackSpec.from_stack(config))
    admitting = [
        p
        for p in policies
        if any(
            port.get("port") == ADMIN_HTTP_PORT
            for rule in p["spec"].get("ingress", [])
            for port in rule.get("ports", [])
        )
    ]
    (policy,) = admitting
    validate_builtin(policy, version)
    assert policy["metadata"]["namespace"] == GATEWAY_NAMESPACE
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert source["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
    }
    assert source["podSelector"] == {"matchLabels": SCRAPER["podLabels"]}
    # without a scraper configured, no policy admits anyone to the admin port
    plain = network_policies(team_spec())
    assert not [
        p
        for p in plain
        for rule in p["spec"].get("ingress", [])
        for port in rule.get("ports", [])
        if port.get("port") == ADMIN_HTTP_PORT
    ]


def test_a_token_secret_is_mounted_and_named_to_the_gateway(tmp_path: Path) -> None:
    config = stack_variant(tmp_path, _with_scraper({**SCRAPER, "tokenSecret": "scrape-token"}))
    deployment = gateway_deployment(InferenceStackSpec.from_stack(config))
    validate_builtin(deployment, kubernetes_version(config.k3s.version))
    pod = deployment["spec"]["template"]["spec"]
    settings = parse_settings(pod["containers"][0]["args"])
    assert settings.admin_token_file == Path(ADMIN_TOKEN_DIR) / "token"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "admin-token"]
    assert volume["secret"]["secretName"] == "scrape-token"
    without = gateway_deployment(team_spec())["spec"]["template"]["spec"]["containers"][0]
    assert parse_settings(without["args"]).admin_token_file is None


def test_a_scraper_without_pod_labels_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(StackConfigError, match=r"metricsScraper\.podLabels"):
        stack_variant(tmp_path, _with_scraper({"namespace": "monitoring", "podLabels": {}}))
