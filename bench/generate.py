"""The benchmark apps: Kubernetes objects as a team's repo would hold them, and that repo's files.

`large_app` is benchmark 1's app (1,000 objects over a few namespaces: Deployments with their
Service, ServiceAccount, ConfigMaps, Secrets and RBAC, a StatefulSet, cluster-wide RBAC);
`small_app` is one of benchmark 5's 200 apps (namespace-less, so one repo serves any destination);
`ui_apps` are benchmark 7's Applications with a status as the controller would have written it.
Pure functions: the counts are checked by tests/unit/test_bench.py.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable

import yaml

Manifest = dict

# One microservice: what a Deployment usually brings along in a real repo.
SERVICE_BUNDLE = ("Deployment", "Service", "ServiceAccount", "ConfigMap", "ConfigMap", "ConfigMap", "Secret",
                  "Secret", "Role", "RoleBinding")
RELEASE_CONFIGMAP = "release"  # the object benchmark 3's commits change


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _meta(name: str, namespace: str | None, component: str) -> dict:
    metadata: dict = {"name": name, "labels": {"app.kubernetes.io/name": component,
                                               "app.kubernetes.io/part-of": "gantry-bench"}}
    if namespace is not None:
        metadata["namespace"] = namespace
    return metadata


def _deployment(name: str, namespace: str | None, replicas: int = 1) -> Manifest:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, namespace, name),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{
                        "name": "app",
                        "image": f"registry.example.com/bench/{name}:1.0.0",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "envFrom": [{"configMapRef": {"name": f"{name}-env"}}],
                        "env": [{"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"{name}-token",
                                                                                    "key": "token"}}}],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                      "limits": {"memory": "64Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/app"},
                                         {"name": "tls", "mountPath": "/etc/tls", "readOnly": True}],
                    }],
                    "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}},
                                {"name": "tls", "secret": {"secretName": f"{name}-tls"}}],
                },
            },
        },
    }


def _service(name: str, namespace: str | None, *, headless: bool = False) -> Manifest:
    spec: dict = {"selector": {"app.kubernetes.io/name": name},
                  "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace, name), "spec": spec}


def _configmap(name: str, namespace: str | None, component: str, index: int) -> Manifest:
    data = {"LOG_LEVEL": "info", "FEATURE_FLAGS": f"search,checkout,v{index}",
            "app.yaml": f"server:\n  port: 8080\n  workers: {2 + index % 4}\ncache:\n  ttl: {60 * (1 + index % 5)}s\n"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, namespace, component), "data": data}


def _secret(name: str, namespace: str | None, component: str, index: int) -> Manifest:
    # `data`, not `stringData`: the API server turns stringData into data, and a controller that
    # compares would see a difference for ever.
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, namespace, component), "type": "Opaque",
            "data": {"token": _b64(f"bench-token-{component}-{index}"), "tls.crt": _b64("not a real certificate\n")}}


def _role(name: str, namespace: str | None) -> Manifest:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(name, namespace, name),
            "rules": [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "watch"]}]}


def _role_binding(name: str, namespace: str | None) -> Manifest:
    # A Group subject, not the ServiceAccount: a ServiceAccount subject must name its namespace,
    # and benchmark 5's apps name none (their destination sets it).
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": _meta(name, namespace, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": f"team-{name}"}]}


def _service_bundle(name: str, namespace: str | None, index: int) -> list[Manifest]:
    """Exactly SERVICE_BUNDLE, in that order."""
    return [
        _deployment(name, namespace),
        _service(name, namespace),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace, name)},
        _configmap(f"{name}-config", namespace, name, index),
        _configmap(f"{name}-env", namespace, name, index),
        _configmap(f"{name}-dashboards", namespace, name, index),
        _secret(f"{name}-token", namespace, name, index),
        _secret(f"{name}-tls", namespace, name, index),
        _role(name, namespace),
        _role_binding(name, namespace),
    ]


def _statefulset(name: str, namespace: str) -> Manifest:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(name, namespace, name),
        "spec": {
            "serviceName": name, "replicas": 2, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                "name": "db", "image": "registry.example.com/bench/postgres:16",
                "ports": [{"name": "http", "containerPort": 5432}],
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
            }]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    }


def _release(namespace: str | None, revision: int) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(RELEASE_CONFIGMAP, namespace, "release"),
            "data": {"revision": str(revision)}}


def large_app(prefix: str, total: int = 1000, namespaces: int = 4, revision: int = 0) -> list[Manifest]:
    """`total` objects: `namespaces` Namespaces named <prefix>-0…, a ClusterRole and binding per
    namespace, a StatefulSet with its headless Service and the `release` ConfigMap in the first
    namespace, then microservices (SERVICE_BUNDLE) round-robin over the namespaces, the rest as
    ConfigMaps. `revision` is the release ConfigMap's value (benchmark 3 commits new ones)."""
    names = [f"{prefix}-{i}" for i in range(namespaces)]
    objects: list[Manifest] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names]
    for name in names:
        objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                        "metadata": _meta(f"{name}-viewer", None, "rbac"),
                        "rules": [{"apiGroups": ["", "apps"], "resources": ["pods", "deployments", "services"],
                                   "verbs": ["get", "list", "watch"]}]})
        objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                        "metadata": _meta(f"{name}-viewer", None, "rbac"),
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                    "name": f"{name}-viewer"},
                        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                      "name": f"{name}-viewers"}]})
    objects += [_statefulset("db", names[0]), _service("db", names[0], headless=True), _release(names[0], revision)]
    if total < len(objects):
        raise ValueError(f"an app of {total} objects cannot hold its {len(objects)} fixed ones")
    bundles = (total - len(objects)) // len(SERVICE_BUNDLE)
    for index in range(bundles):
        objects += _service_bundle(f"svc-{index:03d}", names[index % namespaces], index)
    for index in range(total - len(objects)):
        objects.append(_configmap(f"extra-{index:03d}", names[index % namespaces], "extra", index))
    return objects


def small_app(total: int = 20) -> list[Manifest]:
    """One microservice and ConfigMaps/Secrets up to `total`, without namespaces (the Application's
    destination, or Flux's targetNamespace, puts them in one)."""
    if total < len(SERVICE_BUNDLE):
        raise ValueError(f"a small app holds at least {len(SERVICE_BUNDLE)} objects")
    objects = _service_bundle("web", None, 0)
    for index in range(total - len(objects)):
        maker = _configmap if index % 2 == 0 else _secret
        objects.append(maker(f"web-extra-{index:02d}", None, "web", index))
    return objects


def kinds(objects: Iterable[Manifest]) -> Counter:
    return Counter(o["kind"] for o in objects)


def repo_files(objects: list[Manifest], folder: str = "k8s") -> dict[str, str]:
    """The repo as a team would lay it out: `<folder>/kustomization.yaml`, cluster-wide objects in
    cluster.yaml, one file per namespace (and `app.yaml` for namespace-less objects)."""
    files: dict[str, list[Manifest]] = {}
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            name = "cluster.yaml"
        else:
            name = f"{namespace}.yaml" if namespace else "app.yaml"
        files.setdefault(name, []).append(obj)
    out = {f"{folder}/{name}": yaml.safe_dump_all(docs, sort_keys=False) for name, docs in files.items()}
    out[f"{folder}/kustomization.yaml"] = yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": list(files)},
        sort_keys=False)
    return out


# ------------------------------------------------------------------------------------------------
# Benchmark 7: Applications as the web UI sees them, with no controller behind them

# Kinds the controller assesses health of (the others carry no health, as in its status).
_ASSESSED = {"Deployment", "StatefulSet", "Service", "PersistentVolumeClaim"}


def resource_entries(objects: Iterable[Manifest], namespace: str | None = None) -> list[dict]:
    """`status.resources` for `objects` as the controller writes it after a sync: Synced, and
    Healthy where it assesses health (controller/status.py's resource_entry); objects without a
    namespace are put in `namespace` when one is given (the destination's, for `small_app`)."""
    entries = []
    for obj in objects:
        api_version = obj["apiVersion"]
        group, _, version = api_version.rpartition("/")
        entry: dict = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"],
                       "status": "Synced"}
        if obj["metadata"].get("namespace") or namespace:
            entry["namespace"] = obj["metadata"].get("namespace") or namespace
        if obj["kind"] in _ASSESSED:
            entry["health"] = {"status": "Healthy"}
        entries.append(entry)
    return entries


def ui_app_name(index: int) -> str:
    return f"app-{index:04d}"


def ui_apps(namespace: str, count: int = 1000, large_resources: int = 1000) -> list[tuple[Manifest, dict]]:
    """`count` Applications in `namespace` (app-0000 …) and the status of each: most Synced and
    Healthy, some OutOfSync, Progressing or Failed with a file-and-line message, over 20 repos;
    each with the 20 resources of `small_app`, except app-0000, which has `large_resources`
    (`large_app`'s objects). Manual sync and a repo that does not resolve: a controller that
    happened to serve the namespace would neither deploy nor reach anything."""
    apps = []
    small = small_app(20)
    for index in range(count):
        name = ui_app_name(index)
        team = f"team-{index % 20:02d}"
        revision = f"{index * 7919 % 16**8:08x}{index:032x}"[-40:]
        app = {
            "apiVersion": "gantry.dev/v1alpha1", "kind": "Application",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "project": "default",
                "source": {"repoURL": f"https://git.example.invalid/{team}/deploy.git", "targetRevision": "HEAD",
                           "path": f"apps/{name}"},
                "destination": {"server": "https://kubernetes.default.svc", "namespace": name},
            },
        }
        if index == 0:
            resources = resource_entries(large_app(name, large_resources))
        else:
            resources = resource_entries(small, namespace=name)
        # Mostly fine, as a real fleet: 1 in 20 OutOfSync, 1 in 50 Progressing, 1 in 100 Failed.
        sync, health, message = "Synced", "Healthy", f"synced {len(resources)} resources at {revision[:7]}"
        if index % 100 == 99:
            sync, health = "Failed", "Degraded"
            message = f"apps/{name}/deployment.yaml: line 12: mapping values are not allowed in this context"
        elif index % 50 == 7:
            health, message = "Progressing", f"Deployment {name}: 1 of 2 replicas ready"
        elif index % 20 == 3:
            sync, message = "OutOfSync", f"ConfigMap {name}/settings differs from git"
        status = {
            "sync": {"status": sync, "revision": revision, "shortRevision": revision[:7],
                     "revisionMetadata": {"author": f"Dev {index % 37} <dev{index % 37}@example.com>",
                                          "date": "2026-12-01T10:00:00Z",
                                          "message": f"{name}: bump image to 1.{index % 13}.{index % 7}"}},
            "health": {"status": health, **({"message": message} if health != "Healthy" else {})},
            "summary": {"externalURLs": [f"https://{name}.example.test/"], "primaryURL": f"https://{name}.example.test/",
                        "images": [f"registry.example.com/{team}/{name}:1.{index % 13}.{index % 7}"]},
            "operationState": {"phase": "Failed" if sync == "Failed" else "Succeeded", "message": message,
                               "startedAt": "2026-12-01T10:00:00Z", "finishedAt": "2026-12-01T10:00:03Z"},
            "message": message, "reconciledAt": "2026-12-01T10:05:00Z", "resources": resources,
            "history": [{"id": 1, "revision": revision, "deployedAt": "2026-12-01T10:00:03Z",
                         "source": app["spec"]["source"]}],
        }
        apps.append((app, status))
    return apps
