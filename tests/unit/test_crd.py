"""crds/application.yaml: the schema is structural, accepts real Argo CD Applications, rejects malformed ones.

No API server here: a small checker of the schema keywords the CRD uses (type, required, properties,
items, minLength, x-kubernetes-int-or-string, x-kubernetes-preserve-unknown-fields), which rejects
unknown fields the way `kubectl apply` does with its default strict field validation.
The end-to-end tests apply the CRD to a real API server.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.model import API_GROUP, API_VERSION, FINALIZER

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "application.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def errors(value: Any, schema: dict, path: str = "") -> list[str]:
    """Every violation of `schema` by `value`, as `path: problem` strings (empty when valid)."""
    where = path or "<root>"
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return [] if ok else [f"{where}: must be an integer or a string"]
    expected = schema.get("type")
    if expected:
        ok = isinstance(value, _TYPES[expected]) and not (expected in ("integer", "number") and isinstance(value, bool))
        if not ok:
            return [f"{where}: must be of type {expected}, not {type(value).__name__}"]
    found: list[str] = []
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        found.append(f"{where}: must be at least {schema['minLength']} characters")
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                found.append(f"{path}.{name}: required")
        for name, item in value.items():
            if name in properties:
                found += errors(item, properties[name], f"{path}.{name}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and path != ".metadata":
                found.append(f"{path}.{name}: unknown field")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += errors(item, schema["items"], f"{path}[{index}]")
    return found


# An Argo CD Application as its docs write one, with only the apiVersion changed.
ARGOCD_APP = f"""
apiVersion: {API_GROUP}/{API_VERSION}
kind: Application
metadata:
  name: guestbook
  namespace: argocd
  finalizers:
    - {FINALIZER}
  labels:
    team: web
spec:
  project: default
  source:
    repoURL: https://github.com/argoproj/argocd-example-apps.git
    targetRevision: HEAD
    path: kustomize-guestbook
    kustomize:
      namePrefix: prod-
      commonLabels:
        env: prod
      images:
        - gcr.io/heptio-images/ks-guestbook-demo:0.2
      patches:
        - target:
            kind: Deployment
          patch: |-
            - op: replace
              path: /spec/replicas
              value: 2
    directory:
      recurse: true
      jsonnet: {{}}
  destination:
    server: https://kubernetes.default.svc
    namespace: guestbook
  info:
    - name: Docs
      value: https://example.com/guestbook
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
      allowEmpty: false
    syncOptions:
      - Validate=false
      - CreateNamespace=true
      - PrunePropagationPolicy=foreground
      - PruneLast=true
      - RespectIgnoreDifferences=true
    managedNamespaceMetadata:
      labels:
        owner: web
    retry:
      limit: 5
      backoff:
        duration: 5s
        factor: 2
        maxDuration: 3m
  ignoreDifferences:
    - group: apps
      kind: Deployment
      jsonPointers:
        - /spec/replicas
    - kind: ConfigMap
      name: feature-flags
      jqPathExpressions:
        - .data["flags.json"]
      managedFieldsManagers:
        - kube-controller-manager
  revisionHistoryLimit: 10
operation:
  initiatedBy:
    username: admin
  sync:
    revision: 8f2e1c3
    prune: true
    syncStrategy:
      hook: {{}}
"""


def app() -> dict:
    return yaml.safe_load(ARGOCD_APP)


def test_identity_and_printer_columns() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["metadata"]["name"] == f"applications.{API_GROUP}"
    assert CRD["spec"]["group"] == API_GROUP and CRD["spec"]["scope"] == "Namespaced"
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == ("Application", "applications", "application")
    assert names["shortNames"] == ["app", "apps"]
    assert [(v["name"], v["served"], v["storage"]) for v in CRD["spec"]["versions"]] == [(API_VERSION, True, True)]
    assert VERSION["subresources"] == {"status": {}}
    columns = {c["name"].upper(): (c["jsonPath"], c.get("priority", 0)) for c in VERSION["additionalPrinterColumns"]}
    assert columns == {
        "SYNC": (".status.sync.status", 0),
        "HEALTH": (".status.health.status", 0),
        "REVISION": (".status.sync.shortRevision", 0),
        "AGE": (".metadata.creationTimestamp", 0),
        "REPO": (".spec.source.repoURL", 1),
        "PATH": (".spec.source.path", 1),
        "URL": (".status.summary.primaryURL", 1),
        "MESSAGE": (".status.message", 1),
    }


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_schema_is_structural() -> None:
    """What the API server demands of a v1 CRD schema, short of running one."""
    for path, node in _walk(SCHEMA):
        if path == ".metadata":
            assert set(node) == {"type"}, "metadata may not be constrained beyond its type"
        assert node.get("type") in _TYPES or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        if node.get("type") == "array":
            assert "items" in node, f"{path}: array without items"
        for name in node.get("required") or ():
            assert name in (node.get("properties") or {}), f"{path}: required {name} is not a property"
        assert not ({"anyOf", "oneOf", "allOf", "not", "$ref", "additionalProperties"} & set(node)), path


def test_printer_columns_point_at_declared_fields() -> None:
    for column in VERSION["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue  # ObjectMeta is not part of a CRD schema
        node = SCHEMA
        for part in column["jsonPath"].strip(".").split("."):
            node = (node.get("properties") or {}).get(part)
            assert node is not None, f"{column['name']}: {column['jsonPath']} is not in the schema"


def test_argocd_application_is_accepted() -> None:
    assert errors(app(), SCHEMA) == []


def test_example_application_is_accepted() -> None:
    example = yaml.safe_load((ROOT / "examples" / "krampoline" / "application.yaml").read_text())
    assert errors(example, SCHEMA) == []
    assert example["metadata"]["finalizers"] == [FINALIZER]


def test_status_as_the_controller_writes_it_is_accepted() -> None:
    obj = app()
    obj["status"] = {
        "sync": {"status": "Synced", "revision": "a1b2c3d4e5f60718293a4b5c6d7e8f9011223344", "shortRevision": "a1b2c3d",
                 "comparedTo": {"source": {"repoURL": "x"}}},
        "health": {"status": "Healthy", "message": ""},
        "summary": {"images": ["nginx:1.27.3-alpine"], "externalURLs": ["http://krampoline.local"],
                    "primaryURL": "http://krampoline.local"},
        "conditions": [{"type": "SyncError", "message": "boom", "lastTransitionTime": "2025-01-14T09:00:00Z"}],
        "resources": [{"group": "apps", "kind": "Deployment", "name": "web", "status": "Synced"}],
        "operationState": {"phase": "Succeeded", "syncResult": {"revision": "a1b2c3d"}},
        "history": [{"id": 1, "revision": "a1b2c3d", "deployedAt": "2025-01-14T09:00:00Z"}],
        "message": "Synced to a1b2c3d, Healthy",
        "reconciledAt": "2025-01-14T09:00:00Z",
        "observedGeneration": 3,
        "sourceType": "Kustomize",
    }
    assert errors(obj, SCHEMA) == []


def _set(obj: dict, path: str, value: Any) -> dict:
    *parents, last = path.split(".")
    node = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return obj


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("spec.source", _DELETE, ".spec.source: required"),
        ("spec.destination", _DELETE, ".spec.destination: required"),
        ("spec.source.repoURL", _DELETE, ".spec.source.repoURL: required"),
        ("spec.source.repoURL", "", ".spec.source.repoURL: must be at least 1"),
        ("spec.source.path", ["k8s"], ".spec.source.path: must be of type string"),
        ("spec.syncPolicy.automated.prune", "yes", ".spec.syncPolicy.automated.prune: must be of type boolean"),
        ("spec.syncPolicy.syncOptions", "CreateNamespace=true", ".spec.syncPolicy.syncOptions: must be of type array"),
        ("spec.syncPolicy.retry.limit", "5", ".spec.syncPolicy.retry.limit: must be of type integer"),
        ("spec.syncPolicy.retry.backoff.factor", 1.5, ".spec.syncPolicy.retry.backoff.factor: must be an integer or a string"),
        ("spec.syncPolicy.selfHeal", True, ".spec.syncPolicy.selfHeal: unknown field"),  # belongs under automated
        ("spec.ignoreDifferences.0.kind", _DELETE, ".spec.ignoreDifferences[0].kind: required"),
        ("spec.destination.namespce", "guestbook", ".spec.destination.namespce: unknown field"),
        ("spec.revisionHistoryLimit", "10", ".spec.revisionHistoryLimit: must be of type integer"),
        ("spec.info", {"Docs": "x"}, ".spec.info: must be of type array"),
        ("spec.sync", {"revision": "HEAD"}, ".spec.sync: unknown field"),  # operation.sync, not spec.sync
    ],
)
def test_malformed_specs_are_rejected(path: str, value: Any, problem: str) -> None:
    found = errors(_set(copy.deepcopy(app()), path, value), SCHEMA)
    assert any(e.startswith(problem) for e in found), found


def test_factor_as_string_is_accepted() -> None:
    assert errors(_set(app(), "spec.syncPolicy.retry.backoff.factor", "2"), SCHEMA) == []


# Argo CD's Helm sources as its docs write them (docs/user-guide/helm.md), apiVersion changed only.
ARGOCD_HELM_APPS = [
    {"repoURL": "https://charts.example.com", "chart": "sealed-secrets", "targetRevision": "1.16.1",
     "helm": {"releaseName": "sealed-secrets", "passCredentials": True, "skipCrds": True, "skipTests": True,
              "skipSchemaValidation": True, "namespace": "kube-system", "kubeVersion": "1.30.0",
              "apiVersions": ["traefik.io/v1alpha1/TLSOption", "v1/Service"], "version": "v3"}},
    {"repoURL": "https://github.com/argoproj/argocd-example-apps", "path": "helm-guestbook", "targetRevision": "HEAD",
     "helm": {"valueFiles": ["values-production.yaml"], "ignoreMissingValueFiles": True,
              "values": "ingress:\n  enabled: true\n", "valuesObject": {"ingress": {"enabled": True, "path": "/"}},
              "parameters": [{"name": "service.type", "value": "LoadBalancer"},
                             {"name": "image.tag", "value": "v5", "forceString": True}],
              "fileParameters": [{"name": "config", "path": "files/config.json"}]}},
]


@pytest.mark.parametrize("source", ARGOCD_HELM_APPS, ids=["helm repository", "chart in git"])
def test_argocd_helm_sources_are_accepted(source: dict) -> None:
    app = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "Application", "metadata": {"name": "a"},
           "spec": {"source": source, "destination": {"server": "https://kubernetes.default.svc", "namespace": "x"}}}
    assert errors(app, SCHEMA) == []


def test_helm_fields_of_the_wrong_type_are_rejected() -> None:
    app = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "Application", "metadata": {"name": "a"},
           "spec": {"source": {"repoURL": "https://g.example/r", "helm": {"valueFiles": "prod.yaml",
                                                                         "parameters": [{"value": "1"}]}},
                    "destination": {}}}
    assert errors(app, SCHEMA) == [".spec.source.helm.valueFiles: must be of type array, not str",
                                   ".spec.source.helm.parameters[0].name: required"]
