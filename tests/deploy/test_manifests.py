"""The deployment files are valid: compose against the Compose Specification, Kubernetes
manifests against the API schemas (strict, offline), and every engine config against the
engine's own config model."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from featurelm.engine.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.33.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml")
                   if p.name not in ("kustomization.yaml", "featurelm.yaml"))


def compose_spec() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    spec: dict[str, Any] = json.loads(vendored.read_text(encoding="utf-8"))
    return spec


def compose_errors(document: dict[str, Any]) -> list[str]:
    spec = compose_spec()
    validator = jsonschema.validators.validator_for(spec)(spec)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def k8s_errors(documents: list[dict[str, Any]]) -> list[str]:
    errors = []
    for doc in documents:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    return errors


def test_compose_file_follows_the_compose_specification() -> None:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose_errors(document) == []
    assert document["x-engine"]["deploy"]["replicas"] == 2
    services = document["services"]
    assert {"proxy", "redis", "postgres", "vllm", "engine-gpu", "engine-cpu"} <= set(services)
    assert "--enable-prefix-caching" in services["vllm"]["command"]
    for name, service in services.items():
        assert "healthcheck" in service or "healthcheck" in document["x-engine"], name


def test_a_broken_compose_file_is_caught() -> None:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broken = copy.deepcopy(document)
    broken["services"]["redis"]["healthcheck"]["interval"] = ["5s"]
    broken["services"]["proxy"]["depends_on"] = "engine"
    assert len(compose_errors(broken)) >= 2


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_validate_strictly(manifest: Path) -> None:
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert documents
    assert k8s_errors(documents) == []


def test_a_broken_kubernetes_manifest_is_caught() -> None:
    engine = next(yaml.safe_load_all((K8S / "engine.yaml").read_text()))
    engine["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    assert k8s_errors([engine])


def test_engine_deployment_drains_before_it_stops() -> None:
    deployment, *_ = yaml.safe_load_all((K8S / "engine.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "preStop" in container["lifecycle"]
    config = load_config(K8S / "featurelm.yaml")
    # preStop + drain + in-flight grace must fit in the pod's grace period.
    budget = (container["lifecycle"]["preStop"]["sleep"]["seconds"] + config.http.drain_s
              + config.http.shutdown_grace_s)
    assert budget < pod["terminationGracePeriodSeconds"]
    secret_refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
                   if "valueFrom" in e]
    assert secret_refs and set(secret_refs) == {"featurelm-secrets"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_build_validates_with_features_as_configmaps() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
        capture_output=True, text=True, check=True, timeout=60).stdout
    documents = [d for d in yaml.safe_load_all(built) if d]
    assert k8s_errors(documents) == []
    features = next(d for d in documents if d["kind"] == "ConfigMap"
                    and d["metadata"]["name"].startswith("featurelm-features"))
    shipped = {p.name for p in (DEPLOY.parent / "features").glob("*.yaml")}
    assert set(features["data"]) == shipped


@pytest.mark.parametrize("config", [DEPLOY / "featurelm.vllm.yaml", DEPLOY / "featurelm.cpu.yaml",
                                    K8S / "featurelm.yaml"], ids=lambda p: p.name)
def test_deployment_configs_are_valid_engine_configs(config: Path) -> None:
    loaded = load_config(config)
    assert loaded.auth == "required"
    assert loaded.cache.startswith("redis://") and loaded.store.startswith("postgresql://")
