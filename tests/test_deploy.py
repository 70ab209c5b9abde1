"""deploy/: the Kubernetes manifests and the systemd unit agree with lbproxy and with each other."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lbproxy.config.loader import load_config_text
from lbproxy.config.model import Config
from tests.conftest import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "lbproxy.service"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def configmap_config() -> Config:
    data = one("ConfigMap")["data"]
    (key,) = data
    return load_config_text(data[key], f"deploy/kubernetes/configmap.yaml:{key}")


def container() -> dict[str, Any]:
    (c,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def test_configmap_config_passes_lbproxys_validator() -> None:
    config = configmap_config()
    assert config.admin is not None and config.admin.bind.port == 9901
    cpu = container()["resources"]["limits"]["cpu"]
    assert config.workers == int(cpu), "one worker per CPU of the pod's limit"
    assert any(pool.dns_backends for pool in config.pools.values())


def test_probes_and_ports_match_the_config() -> None:
    config = configmap_config()
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        port = c[probe]["httpGet"]["port"]
        assert ports.get(port, port) == config.admin.bind.port  # type: ignore[union-attr]
    assert ports["http"] == config.listeners[0].bind.port
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    (key,) = one("ConfigMap")["data"]
    assert c["args"] == ["run", "-c", f"{mount['mountPath']}/{key}"]


def test_grace_period_outlasts_the_drain() -> None:
    config = configmap_config()
    spec = one("Deployment")["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    waited = float(pre_stop[1]) + config.shutdown_delay + config.drain_timeout
    assert spec["terminationGracePeriodSeconds"] > waited, "the kubelet must not SIGKILL a draining pod"
    assert config.shutdown_delay > 0, "keep accepting while the Service stops sending here"


def test_services_select_the_pods_and_the_headless_one_is_discovered() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one("Service", "lbproxy")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container()["ports"]}
    assert "admin" not in {p["targetPort"] for p in service["spec"]["ports"]}
    headless = one("Service", "web-backends")
    assert headless["spec"]["clusterIP"] == "None"
    name = f"{headless['metadata']['name']}.{headless['metadata'].get('namespace', 'default')}.svc.cluster.local"
    entries = [e for pool in configmap_config().pools.values() for e in pool.dns_backends]
    assert any(e.name == name and e.port == headless["spec"]["ports"][0]["port"] for e in entries)
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def test_systemd_unit() -> None:
    lines = [l.strip() for l in UNIT.read_text().splitlines() if l.strip() and not l.startswith("#")]
    settings: dict[str, list[str]] = {}
    for line in lines:
        if "=" in line and not line.startswith("["):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert re.fullmatch(r"\S*lbproxy check -c (\S+)", settings["ExecReload"][0])
    assert re.fullmatch(r"\S*lbproxy run -c \S+", settings["ExecStart"][0])
    assert settings["KillMode"] == ["mixed"], "SIGTERM to the supervisor only; it stops its workers"
    assert int(settings["TimeoutStopSec"][0]) > Config(pools={}, listeners=()).drain_timeout
    assert "[Install]" in lines and settings["WantedBy"] == ["multi-user.target"]


def test_deploy_files_exist() -> None:
    assert {p.name for p in KUBE.glob("*.yaml")} >= {"deployment.yaml", "service.yaml", "configmap.yaml", "backends-headless.yaml"}
    assert Path(UNIT).is_file()
