"""Before the flow starts: can the controller listen on its ports, load its kubeconfig, reach the
API server, find the Application CRD and watch Applications where it serves them?

`main()` runs these checks before kopf does anything, and turns a `StartupError` into one line on
stderr and exit code 2: kopf itself would log the error and retry for ever, a process that stays
up and reconciles nothing, which neither a supervisor nor Kubernetes' restart policy notices.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .kube import KubeApiError, KubeClient, KubeconfigError, describe_kube_error
from .model import API_GROUP, API_VERSION, GantryError, Manifest
from .status import one_line

__all__ = ["APPLICATIONS", "EXIT_CODE", "Access", "StartupError", "api_problem", "check_cluster", "listen", "load_client",
           "missing_rights", "required_access"]

EXIT_CODE = 2  # as the `gantry` CLI's errors: a configuration a human has to fix
APPLICATIONS = "applications"  # the CRD's plural
CRD_NAME = f"{APPLICATIONS}.{API_GROUP}"
INSTALL_HINT = "install it with `kubectl apply -f crds/` (or `kubectl apply -k deploy/`)"
RBAC_HINT = "grant them as deploy/ does (deploy/README.md lists every rule)"

T = TypeVar("T")


class StartupError(GantryError):
    """The controller cannot start; the message, one line, says what failed and how to fix it."""


@dataclass(frozen=True)
class Access:
    """One right the controller needs on Applications; namespace "" is every namespace."""

    verb: str
    namespace: str
    subresource: str = ""

    @property
    def resource(self) -> str:
        return f"{CRD_NAME}/{self.subresource}" if self.subresource else CRD_NAME

    def review(self) -> Manifest:
        """The SelfSubjectAccessReview that asks for it (what `kubectl auth can-i` sends)."""
        attributes = {"group": API_GROUP, "resource": APPLICATIONS, "verb": self.verb, "namespace": self.namespace}
        if self.subresource:
            attributes["subresource"] = self.subresource
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes}}


def listen(flag: str, address: str, bind: Callable[[str], T]) -> T:
    """`bind(address)`, a server holding its socket; a port in use, a host that does not resolve
    or an address that is not host:port is a StartupError naming the flag."""
    try:
        return bind(address)
    except OSError as error:
        reason, fix = error.strerror or str(error), f"pass another {flag}"
        if error.errno == errno.EADDRINUSE:
            fix = f"stop what listens there or {fix}"
    except (ValueError, OverflowError):  # int() of the port, or a port beyond 65535
        reason, fix = "not a host:port with a port from 0 to 65535", f"pass {flag}=HOST:PORT (empty turns it off)"
    raise StartupError(f"cannot listen on {flag}={address}: {reason}; {fix}")


def load_client(kubeconfig: str | None) -> KubeClient:
    try:
        return KubeClient.from_kubeconfig(kubeconfig)
    except KubeconfigError as error:
        raise StartupError(f"{error}; pass a valid one with --kubeconfig or $KUBECONFIG") from None


def required_access(namespaces: Sequence[str] | None) -> list[Access]:
    """What kopf's watch and our status writes need in each served namespace (None: all of them)."""
    return [Access(verb, namespace, subresource)
            for namespace in (namespaces if namespaces is not None else [""])
            for verb, subresource in (("list", ""), ("watch", ""), ("patch", "status"))]


def api_problem(host: str, answer: Manifest | KubeApiError) -> str | None:
    """What the answer to GET /apis/gantry.dev/v1alpha1 says is wrong; None when Applications are
    served. A 404 is the API group missing: no cluster answers it for a CRD that is installed."""
    if isinstance(answer, KubeApiError):
        if answer.status == 404:
            return f"the Application CRD {CRD_NAME} is not installed in the cluster at {host}; {INSTALL_HINT}"
        if answer.status == 403:
            return f"the API server at {host} refused to list the API group {API_GROUP}: {one_line(answer.message)}"
        hint = {0: "check that the cluster is up and that the kubeconfig names its server",
                401: "renew the token or certificate in the kubeconfig"}.get(answer.status)
        return one_line(describe_kube_error(answer, host)) + (f"; {hint}" if hint else "")
    if not any(entry.get("name") == APPLICATIONS for entry in answer.get("resources") or []):
        return (f"the cluster at {host} serves {API_GROUP}/{API_VERSION} without {APPLICATIONS}: "
                f"the Application CRD {CRD_NAME} is not installed; {INSTALL_HINT}")
    return None


def missing_rights(user: str, denied: Sequence[Access]) -> str:
    """One line naming every right in `denied` (not empty) that `user` lacks, by namespace."""
    by_namespace: dict[str, list[str]] = {}
    for access in denied:
        by_namespace.setdefault(access.namespace, []).append(f"{access.verb} {access.resource}")
    where = "; ".join(f"{', '.join(rights)} in {f'namespace {namespace}' if namespace else 'all namespaces'}"
                      for namespace, rights in by_namespace.items())
    return f"{user} may not {where}; {RBAC_HINT}"


def check_cluster(client: KubeClient, namespaces: Sequence[str] | None, *, timeout: float = 10.0) -> None:
    """The API server answers, serves Applications, and lets us watch them and write their status
    in `namespaces` (None: in all). Raises StartupError."""
    try:
        answer: Manifest | KubeApiError = client.request("GET", f"/apis/{API_GROUP}/{API_VERSION}", timeout=timeout)
    except KubeApiError as error:
        answer = error
    problem = api_problem(client.host, answer)
    if problem:
        raise StartupError(problem)
    denied = [access for access in required_access(namespaces) if not _allowed(client, access, timeout)]
    if denied:
        raise StartupError(missing_rights(_user(client, timeout), denied))


def _allowed(client: KubeClient, access: Access, timeout: float) -> bool:
    try:
        review = client.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                body=access.review(), timeout=timeout)
    except KubeApiError as error:
        if error.status not in (403, 404):
            raise StartupError(one_line(describe_kube_error(error, client.host))) from None
        # A cluster that lets nobody ask: try the list itself (watch and patch stay unchecked).
        return access.verb != "list" or _can_list(client, access.namespace, timeout)
    return bool((review.get("status") or {}).get("allowed"))


def _can_list(client: KubeClient, namespace: str, timeout: float) -> bool:
    where = f"/namespaces/{namespace}" if namespace else ""
    try:
        client.request("GET", f"/apis/{API_GROUP}/{API_VERSION}{where}/{APPLICATIONS}", query={"limit": 1},
                       timeout=timeout)
    except KubeApiError as error:
        if error.status == 403:
            return False
        raise StartupError(one_line(describe_kube_error(error, client.host))) from None
    return True


def _user(client: KubeClient, timeout: float) -> str:
    """Who the kubeconfig authenticates as (SelfSubjectReview, Kubernetes 1.28+), for the message."""
    try:
        review = client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                                timeout=timeout)
    except KubeApiError:
        return "the kubeconfig's user"
    return ((review.get("status") or {}).get("userInfo") or {}).get("username") or "the kubeconfig's user"
