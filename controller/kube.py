"""The edge to the API server: one small JSON-over-HTTPS client with discovery, used by diff, sync,
the live-object cache and the operator. Objects stay plain dicts (no client model classes), which is
both what the stages compare and several times faster than the generated client for bulk work.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from .model import GantryError, Manifest

logger = logging.getLogger(__name__)


class KubeApiError(GantryError):
    """A non-2xx answer from the API server, with its Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message or reason or f"HTTP {status}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        # Conflicts on resourceVersion, throttling, timeouts and server errors go away on retry;
        # validation (422), not found (404) and forbidden (403) need a change by a human.
        return self.status in (0, 409, 429, 500, 502, 503, 504) and self.reason != "AlreadyExists"


class KubeconfigError(GantryError):
    """The kubeconfig is missing, unreadable or not a kubeconfig; the message names the file."""


def describe_kube_error(error: KubeApiError, host: str) -> str:
    """One line for an API failure: an unreachable server names itself and the reason only."""
    if error.status == 0:
        match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", error.message) or \
            re.search(r"(certificate verify failed[^'\")]*|timed out|Connection refused)", error.message)
        reason = match.group(1).strip() if match else error.message.replace("cannot reach the API server: ", "")
        return f"cannot reach the API server at {host}: {' '.join(reason.split())}"
    if error.status == 401:
        return f"the API server at {host} did not accept the credentials of the kubeconfig (401 Unauthorized)"
    if error.status == 403:
        return f"forbidden: {error.message}"
    return " ".join(str(error).split())


class UnservedApiError(GantryError):
    """The cluster serves no such apiVersion/kind (a removed API such as networking.k8s.io/v1beta1)."""

    def __init__(self, api_version: str, kind: str) -> None:
        super().__init__(f"{api_version} {kind} is not served by this cluster")
        self.api_version = api_version
        self.kind = kind


@dataclass(frozen=True)
class Resource:
    """Where objects of one apiVersion/kind live in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0] if "/" in self.api_version else ""

    def collection_path(self, namespace: str | None = None) -> str:
        base = f"/apis/{self.api_version}" if "/" in self.api_version else f"/api/{self.api_version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return f"{base}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection_path(namespace)}/{quote(name, safe='')}"


# The whole of a root's discovery in one answer (Kubernetes 1.30 on), else the plain lists.
_AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"


def _decode(body: bytes) -> Manifest:
    """A JSON answer, or the plain text some endpoints give (`404 page not found` for an unknown
    API group) as a Status-like message."""
    if not body:
        return {}
    try:
        return json.loads(body)
    except ValueError:
        return {"message": body.decode(errors="replace").strip()}


class KubeClient:
    """Thread-safe: urllib3's pool is, and discovery is guarded by a lock."""

    def __init__(self, configuration: k8s_client.Configuration, *, pool_size: int = 16) -> None:
        self.configuration = configuration
        self.host = configuration.host.rstrip("/")
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            cert_reqs="CERT_REQUIRED" if configuration.verify_ssl else "CERT_NONE",
            ca_certs=configuration.ssl_ca_cert,
            cert_file=configuration.cert_file,
            key_file=configuration.key_file,
        )
        self._discovery: dict[str, dict[str, Resource] | None] = {}
        self._discovery_lock = threading.Lock()
        self.requests_made = 0  # read by benchmarks: API requests since start

    def as_user(self, token: str) -> "KubeClient":
        """A client for the same API server that authenticates with `token` only (no client
        certificate of ours): what the UI uses to act as the user who signed in."""
        configuration = k8s_client.Configuration()
        configuration.host = self.configuration.host
        configuration.ssl_ca_cert = self.configuration.ssl_ca_cert
        configuration.verify_ssl = self.configuration.verify_ssl
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return KubeClient(configuration, pool_size=4)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, context: str | None = None) -> "KubeClient":
        """In-cluster when running in a pod (and no kubeconfig is named), else the kubeconfig.
        Raises KubeconfigError when neither can be loaded."""
        configuration = k8s_client.Configuration()
        if kubeconfig is None:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
                return cls(configuration)
            except k8s_config.ConfigException:
                pass
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        if kubeconfig and not os.path.exists(kubeconfig):
            # The loader skips a missing file and only says "No configuration found".
            raise KubeconfigError(f"cannot load the kubeconfig {where}: no such file")
        try:
            k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        except Exception as error:
            # The loader raises ConfigException for a missing key, yaml's errors for a file that does
            # not parse, OSError for one it cannot read, and TypeError or AttributeError for YAML of
            # another shape: to the user all are the same broken file.
            raise KubeconfigError(f"cannot load the kubeconfig {where}: {' '.join(str(error).split())}") from error
        return cls(configuration)

    # ------------------------------------------------------------------ HTTP

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "gantry"}
        if content_type:
            headers["Content-Type"] = content_type
        token = self.configuration.get_api_key_with_prefix("BearerToken") or self.configuration.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> Manifest:
        """`headers`: more of them, for a service behind the API server's proxy."""
        url = self.host + path + (f"?{urlencode(query)}" if query else "")
        payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.requests_made += 1
        try:
            response = self._pool.request(
                method, url, body=payload, headers={**self._headers(content_type if payload else None), **(headers or {})},
                timeout=urllib3.Timeout(connect=10, read=timeout), retries=False,
            )
        except urllib3.exceptions.HTTPError as error:
            raise KubeApiError(0, "ConnectionError", f"cannot reach the API server: {error}") from error
        data = _decode(response.data)
        if response.status >= 400:
            # A service behind the API server's proxy (Gantry's web UI) words its errors {"error": …}
            # and gives no reason: the API server's own answers are Statuses, with one.
            raise KubeApiError(response.status, data.get("reason", ""),
                               data.get("message", data.get("error", response.reason or "")))
        return data

    def stream(self, path: str, query: dict[str, Any], *, timeout: float) -> Iterator[Manifest]:
        """Watch events (one JSON object a line) until the server closes the stream."""
        buffer = b""
        for chunk in self.read_stream(path, {**query, "watch": "true"}, timeout=timeout):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)

    def read_stream(self, path: str, query: dict[str, Any], *, timeout: float) -> Iterator[bytes]:
        """The body of a GET as it comes (a watch, a pod's log), until the server ends it or sends
        nothing for `timeout` seconds more than it was asked to wait."""
        url = self.host + path + "?" + urlencode(query)
        self.requests_made += 1
        response = self._pool.request(
            "GET", url, headers=self._headers(None), preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout + 10), retries=False,
        )
        try:
            if response.status >= 400:
                data = _decode(response.read())
                raise KubeApiError(response.status, data.get("reason", ""), data.get("message", ""))
            yield from response.stream(65536, decode_content=True)
        finally:
            response.release_conn()

    # ------------------------------------------------------------------ discovery

    def resource(self, api_version: str, kind: str) -> Resource:
        """The REST resource of apiVersion/kind; refreshes discovery once on a miss (new CRDs)."""
        for refresh in (False, True):
            resources = self._group_version(api_version, refresh=refresh)
            if resources and kind in resources:
                return resources[kind]
        raise UnservedApiError(api_version, kind)

    def resource_of(self, manifest: Manifest) -> Resource:
        return self.resource(manifest.get("apiVersion", ""), manifest.get("kind", ""))

    def server_version(self) -> str:
        """The API server's version as it says it (`v1.36.3`)."""
        return str(self.request("GET", "/version").get("gitVersion") or "")

    def served_api_versions(self) -> tuple[str, ...]:
        """Every group/version and group/version/kind the API server serves (`apps/v1`,
        `apps/v1/Deployment`, `v1`, `v1/Pod`), sorted: what Argo CD gives helm as the cluster's API
        versions. One request per root from aggregated discovery; a server without it gives
        group/versions only."""
        served: set[str] = set()
        for root in ("/api", "/apis"):
            listing = self.request("GET", root, headers={"Accept": _AGGREGATED_DISCOVERY})
            for group in listing.get("items") or ():  # APIGroupDiscoveryList
                name = (group.get("metadata") or {}).get("name") or ""
                for version in group.get("versions") or ():
                    group_version = f"{name}/{version['version']}" if name else version["version"]
                    served.add(group_version)
                    served.update(f"{group_version}/{resource['responseKind']['kind']}"
                                  for resource in version.get("resources") or () if resource.get("responseKind"))
            served.update(listing.get("versions") or ())  # APIVersions (/api without aggregation)
            for group in listing.get("groups") or ():  # APIGroupList
                served.update(v["groupVersion"] for v in group.get("versions") or ())
        return tuple(sorted(v for v in served if isinstance(v, str)))

    def invalidate_discovery(self) -> None:
        with self._discovery_lock:
            self._discovery.clear()

    def _group_version(self, api_version: str, *, refresh: bool) -> dict[str, Resource] | None:
        with self._discovery_lock:
            if not refresh and api_version in self._discovery:
                return self._discovery[api_version]
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            listing = self.request("GET", path)
            resources = {
                entry["kind"]: Resource(api_version, entry["kind"], entry["name"], entry["namespaced"])
                for entry in listing.get("resources", [])
                if "/" not in entry["name"]  # subresources such as deployments/scale
            }
        except KubeApiError as error:
            if error.status != 404:
                raise
            resources = None
        with self._discovery_lock:
            self._discovery[api_version] = resources
        return resources

    # ------------------------------------------------------------------ conveniences

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> Manifest | None:
        try:
            return self.request("GET", resource.object_path(name, namespace))
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    def list(self, resource: Resource, namespace: str | None = None, *, label_selector: str | None = None) -> Manifest:
        """The whole list (following `continue`), as one List dict with items and resourceVersion."""
        items: list[Manifest] = []
        query: dict[str, Any] = {"limit": 500}
        if label_selector:
            query["labelSelector"] = label_selector
        while True:
            page = self.request("GET", resource.collection_path(namespace), query=query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return {"items": items, "metadata": page.get("metadata") or {}}
            query["continue"] = token


def list_and_watch(client: KubeClient, resource: Resource, namespace: str | None, *,
                   on_list: Callable[[list[Manifest]], None], on_event: Callable[[str, Manifest], None],
                   stopped: threading.Event, label_selector: str | None = None, timeout: int = 300) -> None:
    """List `resource` (in `namespace`, or everywhere), hand the items to `on_list`, then each watch
    event's type and object to `on_event`, until `stopped`; a watch too old to resume (410) lists
    again at once, any other failure after a backoff of up to 30 s. Items and objects carry their
    apiVersion and kind. Blocks: run it in a thread of its own."""
    backoff = 1.0
    while not stopped.is_set():
        try:
            listing = client.list(resource, namespace, label_selector=label_selector)
            for item in listing["items"]:
                item.setdefault("apiVersion", resource.api_version)
                item.setdefault("kind", resource.kind)
            on_list(listing["items"])
            version = listing["metadata"].get("resourceVersion")
            backoff = 1.0
            while not stopped.is_set():
                query: dict[str, Any] = {"timeoutSeconds": timeout, "allowWatchBookmarks": "true"}
                if label_selector:
                    query["labelSelector"] = label_selector
                if version:
                    query["resourceVersion"] = version
                for event in client.stream(resource.collection_path(namespace), query, timeout=timeout):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        raise KubeApiError(obj.get("code", 0), obj.get("reason", ""), obj.get("message", ""))
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind == "BOOKMARK":
                        continue
                    obj.setdefault("apiVersion", resource.api_version)
                    obj.setdefault("kind", resource.kind)
                    on_event(kind, obj)
        except KubeApiError as error:
            if error.status != 410:  # 410 Gone: our resourceVersion is too old, relist at once
                logger.warning("watch %s: %s; retrying in %.0fs", resource.plural, error, backoff)
                stopped.wait(backoff)
                backoff = min(backoff * 2, 30)
        except Exception as error:  # connection reset, API server restart …
            logger.warning("watch %s: %s; retrying in %.0fs", resource.plural, error, backoff)
            stopped.wait(backoff)
            backoff = min(backoff * 2, 30)
