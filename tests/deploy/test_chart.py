"""The Helm chart: rendered by Helm's engine, values checked by values.schema.json, manifests checked
against the Kubernetes OpenAPI schemas (strict) and the Prometheus Operator's CRD models."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import CHART, DASHBOARD, ROOT, RULES, helm_template

K8S_VERSIONS = ("1.27.0", "1.37.0")  # the chart's kubeVersion floor and the newest schemas shipped

EVERYTHING_ON = {
    "agentToken": {"existingSecret": "factpatch-agent"},
    "shards": {"replicas": 3, "agent": {"tls": {"secretName": "agent-tls", "clientSecretName": "agent-client"}},
               "vllmArgs": ["--max-model-len", "4096", "--tensor-parallel-size", 2],
               "resources": {"limits": {"nvidia.com/gpu": 2}}, "extraEnv": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "controlPlane": {
        "tokens": [{"principal": "release-bot", "role": "operator", "token_sha256": "a" * 64},
                   {"principal": "grafana", "role": "viewer", "token": "not-a-real-token"}],
        "monitors": {"max_monitors": 5000, "stale_values": {"enabled": True, "scope": "subject"},
                     "monitors": [{"name": "competitor", "kind": "literal", "pattern": "Acme Corp"}]},
        "probes": {"regression": [{"prompt": "Oslo is a city in", "expect": "Norway"}]},
        "baseCheck": True, "extraShards": {"edge-0": "http://10.0.0.5:8000"},
        "tls": {"secretName": "factpatch-tls", "clientCASecret": "factpatch-client-ca"},
        "persistence": {"enabled": True, "existingClaim": "factpatch-state"},
        "drainTimeout": 12.5,
    },
    "metrics": {"serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}},
                "prometheusRule": {"labels": {"release": "kube-prometheus-stack"}}},
    "grafana": {"dashboard": {"folder": "LLM"}},
    "gateway": {"replicas": 3, "token": {"existingSecret": "factpatch-gateway"}, "clientTlsSecret": "gateway-client"},
}
MINIMAL = {"metrics": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
           "grafana": {"dashboard": {"enabled": False}}, "controlPlane": {"persistence": {"enabled": False}},
           "shards": {"podDisruptionBudget": {"enabled": False}}}


def manifests(values: dict | None = None) -> list[dict]:
    rendered = helm_template.render(CHART, values, name="fp", namespace="llm")
    return [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _unknown_keys(given, kept, path="") -> list[str]:
    """Keys in `given` that the model dropped: fields the CRD does not define."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "/"]
        return [p for k, v in given.items()
                for p in ([f"{path}/{k}"] if k not in kept else _unknown_keys(v, kept[k], f"{path}/{k}"))]
    if isinstance(given, list):
        return [p for i, (g, k) in enumerate(zip(given, kept)) for p in _unknown_keys(g, k, f"{path}/{i}")]
    return []


def validate_crd(doc: dict) -> None:
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, doc["kind"]).model_validate(doc)
    dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    unknown = _unknown_keys(doc, dumped)
    assert not unknown, f"{doc['kind']}: fields the CRD does not define: {unknown}"


def validate_all(docs: list[dict]) -> None:
    import kubernetes_validate

    for d in docs:
        if d["apiVersion"] == "monitoring.coreos.com/v1":
            validate_crd(d)
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{d['kind']} {d['metadata']['name']} against Kubernetes {v}: {e}")


def test_default_values_pass_the_values_schema():
    import helm_python as helm
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    # Helm's validator (what install/upgrade run) and an independent draft-07 one.
    with helm.Chart.load(str(CHART)) as c:
        assert c.schema == schema
        c.validate_schema({})
        c.validate_schema(EVERYTHING_ON)
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(defaults)
    jsonschema.Draft7Validator(schema).validate(helm_template.merge(defaults, EVERYTHING_ON))


@pytest.mark.parametrize("bad, where", [
    ({"shards": {"replicas": -1}}, "/shards/replicas"),
    ({"controlPlane": {"tokens": [{"role": "admin", "token": "x"}]}}, "/controlPlane/tokens/0/role"),
    ({"shards": {"env": {"FACTPATCH_DRAIN_POLICY": "wait"}}}, "FACTPATCH_DRAIN_POLICY"),
    ({"controlPlane": {"extraShards": {"s9": "10.0.0.9:8000"}}}, "/controlPlane/extraShards/s9"),
    ({"shardz": {}}, "shardz"),
    ({"controlPlane": {"drainTimeout": -1}}, "/controlPlane/drainTimeout"),
])
def test_values_schema_refuses_bad_values(bad, where):
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=where):
        helm_template.render(CHART, bad)


@pytest.mark.parametrize("values", [None, EVERYTHING_ON, MINIMAL], ids=["defaults", "everything-on", "minimal"])
def test_rendered_manifests_validate(values):
    docs = manifests(values)
    assert by_kind(docs, "StatefulSet") and len(by_kind(docs, "Deployment")) == 2 and len(by_kind(docs, "Service")) == 3
    validate_all(docs)


def test_validation_catches_a_broken_manifest():
    import kubernetes_validate

    docs = manifests()
    sts = by_kind(docs, "StatefulSet")[0]
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/health"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[0], strict=True)
    sm = by_kind(docs, "ServiceMonitor")[0]
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(AssertionError, match="intervall"):
        validate_crd(sm)


def test_shards_run_the_plugin_with_token_and_health_probes():
    docs = manifests({"shards": {"replicas": 2, "vllmArgs": ["--max-model-len", "2048"]}})
    sts = by_kind(docs, "StatefulSet")[0]
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["factpatch", "shard"]
    args = c["args"]
    assert args[:2] == ["--model", "/models/base"]
    assert args[args.index("--agent-token-file") + 1] == "/etc/factpatch/agent/token"
    assert args[args.index("--") + 1:] == ["--max-model-len", "2048"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    secret = {v["name"]: v for v in pod["volumes"]}["agent-token"]["secret"]["secretName"]
    assert secret == "fp-factpatch-agent-token"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/models", "/etc/factpatch/agent"}


def test_control_plane_registers_every_shard_and_opens_the_gateway():
    docs = manifests({"shards": {"replicas": 3}, "controlPlane": {"monitors": {"monitors": []}},
                      "gateway": {"enabled": False}})
    dep = by_kind(docs, "Deployment")[0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert c["command"] == ["factpatch", "serve"]
    shards = [args[i + 1] for i, a in enumerate(args) if a == "--shard"]
    host = "fp-factpatch-shard-{}.fp-factpatch-shard.llm.svc"
    assert shards == [f"fp-factpatch-shard-{i}=http://{host.format(i)}:8000,http://{host.format(i)}:8001" for i in range(3)]
    assert args[args.index("--gateway-listen") + 1] == "0.0.0.0:8080"
    assert args[args.index("--listen") + 1] == "0.0.0.0:50051"
    assert args[args.index("--metrics-listen") + 1] == "0.0.0.0:9091"  # /metrics apart from the gateway's users
    assert args[args.index("--client-tokens-file") + 1] == "/etc/factpatch/tokens/tokens.yaml"
    assert args[args.index("--agent-token-file") + 1] == "/etc/factpatch/agent/token"  # the shards' flag too
    svc = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "fp-factpatch")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 50051, "http": 8080, "metrics": 9091}
    monitor = next(d for d in by_kind(docs, "ServiceMonitor") if d["metadata"]["name"] == "fp-factpatch")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert args[args.index("--monitors") + 1] == "/etc/factpatch/monitors/monitors.yaml"
    assert dep["spec"]["strategy"]["type"] == "Recreate" and dep["spec"]["replicas"] == 1
    assert c["readinessProbe"]["grpc"]["port"] == 50051
    assert len(by_kind(docs, "Deployment")) == 1 and "fp-factpatch-gateway" not in {
        d["metadata"]["name"] for d in docs}


def test_the_gateway_is_its_own_deployment_fed_by_the_control_plane():
    import hashlib

    docs = manifests({"shards": {"replicas": 2}})
    deps = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    cp_args = deps["fp-factpatch-control-plane"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert cp_args[cp_args.index("--gateway-listen") + 1] == "off"
    gw = deps["fp-factpatch-gateway"]
    assert gw["spec"]["replicas"] == 2 and gw["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = gw["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c["args"]
    assert c["command"] == ["factpatch", "gateway"]
    assert args[args.index("--control-plane") + 1] == "fp-factpatch:50051"
    assert args[args.index("--listen") + 1] == "0.0.0.0:8080" and args[args.index("--metrics-listen") + 1] == "0.0.0.0:9092"
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]} == {"FACTPATCH_GATEWAY_ID": "metadata.name"}
    # ready on routing state, which it keeps while the control plane is away; alive while it listens
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["livenessProbe"]["tcpSocket"] == {"port": "http"}
    # its token: a Secret of its own, and its hash among the control plane's client tokens as role gateway
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert args[args.index("--token-file") + 1] == mounts["gateway-token"] + "/token"
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    token = base64.b64decode(secrets["fp-factpatch-gateway-token"]["data"]["token"]).decode()
    assert len(token) == 48
    tokens = yaml.safe_load(secrets["fp-factpatch-client-tokens"]["stringData"]["tokens.yaml"])
    assert {"principal": "gateway", "role": "gateway", "token_sha256": hashlib.sha256(token.encode()).hexdigest()} in tokens
    # clients call the gateway's Service; the control plane's keeps gRPC and metrics
    svcs = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
    assert {p["name"]: p["port"] for p in svcs["fp-factpatch-gateway"]["spec"]["ports"]} == {"http": 8080, "metrics": 9092}
    assert {p["name"] for p in svcs["fp-factpatch"]["spec"]["ports"]} == {"grpc", "metrics"}
    pdb = next(d for d in by_kind(docs, "PodDisruptionBudget") if d["metadata"]["name"] == "fp-factpatch-gateway")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    monitor = next(d for d in by_kind(docs, "ServiceMonitor") if d["metadata"]["name"] == "fp-factpatch-gateway")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]

    # TLS to the control plane: its CA only, and a client certificate under mTLS; an existing token Secret
    docs = manifests(EVERYTHING_ON)
    gw = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "fp-factpatch-gateway")
    pod = gw["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--tls-ca") + 1] == "/etc/factpatch/control-plane-tls/ca.crt"
    assert args[args.index("--tls-cert") + 1] == "/etc/factpatch/client-tls/tls.crt"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["control-plane-tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert vols["gateway-token"]["secret"]["secretName"] == "factpatch-gateway"
    assert "fp-factpatch-gateway-token" not in {d["metadata"]["name"] for d in by_kind(docs, "Secret")}


def test_the_agent_port_is_its_own_and_only_the_control_plane_may_open_it():
    docs = manifests({"shards": {"replicas": 2}})
    c = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert args[args.index("--agent-port") + 1] == "8001" and args[args.index("--port") + 1] == "8000"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "agent": 8001}
    assert "--agent-tls-cert" not in args  # plain HTTP unless a certificate is given
    headless = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "fp-factpatch-shard")
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {"http": 8000, "agent": 8001}
    (policy,) = by_kind(docs, "NetworkPolicy")
    shard_labels = by_kind(docs, "StatefulSet")[0]["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == shard_labels
    agent_rule, http_rule = policy["spec"]["ingress"]
    assert agent_rule["ports"] == [{"port": "agent", "protocol": "TCP"}]
    (peer,) = agent_rule["from"]
    cp_labels = by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= cp_labels.items()  # the control plane's pods, no one else
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "control-plane"
    assert http_rule == {"ports": [{"port": "http", "protocol": "TCP"}]}  # model traffic and scrapes stay open
    assert not by_kind(manifests({"shards": {"agent": {"networkPolicy": {"enabled": False}}}}), "NetworkPolicy")


def test_agent_mutual_tls_gives_each_side_only_what_it_needs():
    docs = manifests({"shards": {"replicas": 1, "agent": {"tls": {"secretName": "agent-tls", "clientSecretName": "agent-client"}}}})
    shard_pod = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]
    sargs = shard_pod["containers"][0]["args"]
    assert sargs[sargs.index("--agent-tls-cert") + 1] == "/etc/factpatch/agent-tls/tls.crt"
    assert sargs[sargs.index("--agent-client-ca") + 1] == "/etc/factpatch/agent-client-ca/ca.crt"
    svols = {v["name"]: v["secret"] for v in shard_pod["volumes"] if "secret" in v}
    assert svols["agent-client-ca"] == {"secretName": "agent-client", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    cp_pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    cargs = cp_pod["containers"][0]["args"]
    (shard,) = [cargs[i + 1] for i, a in enumerate(cargs) if a == "--shard"]
    assert shard.endswith(",https://fp-factpatch-shard-0.fp-factpatch-shard.llm.svc:8001")
    assert cargs[cargs.index("--agent-ca") + 1] == "/etc/factpatch/agent-tls/ca.crt"
    assert cargs[cargs.index("--agent-client-key") + 1] == "/etc/factpatch/agent-client/tls.key"
    cvols = {v["name"]: v["secret"] for v in cp_pod["volumes"] if "secret" in v}
    assert cvols["agent-tls-ca"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # not the shards' key


def test_the_drain_budget_is_passed_only_when_set():
    def args(values):
        return by_kind(manifests(values), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]

    assert "--drain-timeout" not in args(None)  # default: each shard's own setting
    for budget in (0, 12.5):  # zero is a budget too: cut off at once
        a = args({"controlPlane": {"drainTimeout": budget}})
        assert float(a[a.index("--drain-timeout") + 1]) == budget


def test_control_plane_flags_exist_in_the_cli():
    """Every flag the chart passes to `factpatch serve` / `factpatch shard` is one the command knows."""
    docs = manifests(EVERYTHING_ON)
    workloads = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")}
    for name, sub in (("fp-factpatch-control-plane", "serve"), ("fp-factpatch-shard", "shard"),
                      ("fp-factpatch-gateway", "gateway")):
        c = workloads[name]["spec"]["template"]["spec"]["containers"][0]
        args = c["args"][: c["args"].index("--")] if "--" in c["args"] else c["args"]
        help_text = subprocess.run([str(Path(sys.executable).parent / "factpatch"), sub, "--help"], capture_output=True,
                                   text=True, env={**os.environ, "COLUMNS": "300", "TERM": "dumb"}, cwd=ROOT).stdout
        for flag in (a for a in args if a.startswith("--")):
            assert flag in help_text, f"`factpatch {sub}` has no {flag}"


def test_prometheus_rule_and_dashboard_are_the_plain_files():
    docs = manifests()
    rule = by_kind(docs, "PrometheusRule")[0]
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    dash = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")][0]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["factpatch.json"]) == json.loads(DASHBOARD.read_text())


def test_scraped_series_carry_release_and_model_and_runbooks_can_move():
    """The rules group by namespace, release and model: every ServiceMonitor (control plane, gateway,
    shards) adds the last two (the operator adds namespace). An internal docs mirror replaces every
    runbook_url's base."""
    docs = manifests({"model": {"name": "llama-3-8b"}})
    monitors = by_kind(docs, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"fp-factpatch", "fp-factpatch-gateway", "fp-factpatch-shard"}
    for sm in monitors:
        for ep in sm["spec"]["endpoints"]:
            assert {r["targetLabel"]: r["replacement"] for r in ep["relabelings"]} == {"release": "fp", "model": "llama-3-8b"}
    mirror = "https://wiki.example.internal/factpatch/runbook"
    rule = by_kind(manifests({"metrics": {"prometheusRule": {"runbookBaseUrl": mirror}}}), "PrometheusRule")[0]
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts and all(a["annotations"]["runbook_url"] == f"{mirror}#{a['alert'].lower()}" for a in alerts)


def test_analysis_can_ask_prometheus():
    def args(values=None):
        cp = next(d for d in by_kind(manifests(values), "Deployment") if "control-plane" in d["metadata"]["name"])
        return cp["spec"]["template"]["spec"]["containers"][0]["args"]

    assert "--prometheus-url" not in args()
    got = args({"controlPlane": {"prometheusUrl": "http://prometheus-operated.monitoring:9090"}})
    assert got[got.index("--prometheus-url") + 1] == "http://prometheus-operated.monitoring:9090"


def test_prometheus_rule_passes_promtool(promtool, tmp_path):
    rule = by_kind(manifests(), "PrometheusRule")[0]
    f = tmp_path / "rule.yml"
    f.write_text(yaml.safe_dump(rule["spec"]))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_helm_lint_is_clean():
    import helm_python as helm

    report = helm.lint(str(CHART), strict=True)
    # Helm's severities: 1 info, 2 warning, 3 error; strict lint fails on warnings too.
    errors = [m for m in report["messages"] if m["severity"] >= 2]
    assert not errors, errors


def test_helm_template_script_prints_a_stream(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "helm-template"), "--set-json", '{"shards": {"replicas": 1}}'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout) if d]
    assert "StatefulSet" in kinds and "PrometheusRule" in kinds
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "helm-template"), "--set-json", '{"shards": {"replicas": -1}}'],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "/shards/replicas" in bad.stderr


def test_probes_are_off_by_default_and_on_with_a_file_the_control_plane_reads():
    from factpatch.server.probes.config import parse

    def cp(values):
        docs = manifests(values)
        return docs, by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]

    docs, pod = cp(None)
    assert "--probes" not in pod["containers"][0]["args"] and not [d for d in by_kind(docs, "ConfigMap")
                                                                    if d["metadata"]["name"].endswith("-probes")]
    probes = {"schedule": {"interval_seconds": 300, "sample_size": 32},
              "thresholds": {"min_probe_efficacy": 0.9, "max_regression_drift": 0.05},
              "regression": [{"prompt": "Oslo is a city in", "expect": "Norway"}]}
    docs, pod = cp({"controlPlane": {"probes": probes}})
    args = pod["containers"][0]["args"]
    assert args[args.index("--probes") + 1] == "/etc/factpatch/probes/probes.yaml"
    mount = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}["probes"]
    assert mount["mountPath"] == "/etc/factpatch/probes" and mount["readOnly"]
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "fp-factpatch-probes")
    assert {v["name"]: v for v in pod["volumes"]}["probes"]["configMap"]["name"] == cm["metadata"]["name"]
    cfg = parse(yaml.safe_load(cm["data"]["probes.yaml"]))  # what `factpatch serve --probes` would load
    assert cfg.schedule.interval_seconds == 300 and cfg.regression[0].expect == "Norway"
