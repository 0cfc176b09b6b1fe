"""The checks before the controller starts, against a fake API server (no cluster): which answer
means which problem, and that each becomes one line naming the cause and the fix."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from controller.kube import KubeApiError
from controller.startup import (Access, StartupError, api_problem, check_cluster, listen, load_client,
                                missing_rights, required_access)

HOST = "https://10.0.0.1:6443"
SERVED = {"kind": "APIResourceList", "groupVersion": "gantry.dev/v1alpha1",
          "resources": [{"name": "applications", "kind": "Application", "namespaced": True},
                        {"name": "applications/status", "kind": "Application", "namespaced": True}]}


class FakeApi:
    """The few endpoints the checks use: the API group's listing, access reviews, the user."""

    host = HOST

    def __init__(self, group: dict | KubeApiError = SERVED, allowed: Callable[[dict], bool] = lambda _a: True,
                 reviews: KubeApiError | None = None, listing: KubeApiError | None = None) -> None:
        self.group, self.allowed, self.reviews, self.listing = group, allowed, reviews, listing
        self.asked: list[dict] = []

    def request(self, method: str, path: str, *, body=None, query=None, timeout: float = 60.0) -> dict:
        if path == "/apis/gantry.dev/v1alpha1":
            if isinstance(self.group, KubeApiError):
                raise self.group
            return self.group
        if path.endswith("/selfsubjectaccessreviews"):
            if self.reviews:
                raise self.reviews
            attributes = body["spec"]["resourceAttributes"]
            self.asked.append(attributes)
            return {**body, "status": {"allowed": self.allowed(attributes)}}
        if path.endswith("/selfsubjectreviews"):
            return {"status": {"userInfo": {"username": "system:serviceaccount:gantry:ctl"}}}
        if path.endswith("/applications") and method == "GET":
            if self.listing:
                raise self.listing
            return {"items": []}
        raise AssertionError(f"unexpected request {method} {path}")


def test_a_cluster_that_serves_applications_and_grants_the_rights_passes():
    api = FakeApi()
    check_cluster(api, ["gantry", "team-a"])
    assert {(a["verb"], a["namespace"], a.get("subresource", "")) for a in api.asked} == {
        (verb, namespace, sub) for namespace in ("gantry", "team-a")
        for verb, sub in (("list", ""), ("watch", ""), ("patch", "status"))}
    assert all(a["group"] == "gantry.dev" and a["resource"] == "applications" for a in api.asked)


def test_all_namespaces_asks_for_the_rights_cluster_wide():
    api = FakeApi()
    check_cluster(api, None)
    assert {a["namespace"] for a in api.asked} == {""}


@pytest.mark.parametrize(("group", "expected"), [
    (KubeApiError(404, "NotFound", "404 page not found"),
     f"the Application CRD applications.gantry.dev is not installed in the cluster at {HOST}; "
     "install it with `kubectl apply -f crds/` (or `kubectl apply -k deploy/`)"),
    # Another CRD of the group is installed, not ours.
    ({"kind": "APIResourceList", "resources": [{"name": "widgets", "kind": "Widget"}]},
     f"the cluster at {HOST} serves gantry.dev/v1alpha1 without applications: the Application CRD "
     "applications.gantry.dev is not installed; install it with `kubectl apply -f crds/` (or `kubectl apply -k deploy/`)"),
    (KubeApiError(0, "ConnectionError", "cannot reach the API server: HTTPSConnectionPool(host='10.0.0.1', "
                  "port=6443): Max retries exceeded (Caused by NewConnectionError('<conn>: Failed to establish a new "
                  "connection: [Errno 111] Connection refused'))"),
     f"cannot reach the API server at {HOST}: Connection refused; "
     "check that the cluster is up and that the kubeconfig names its server"),
    (KubeApiError(401, "Unauthorized", "Unauthorized"),
     f"the API server at {HOST} did not accept the credentials of the kubeconfig (401 Unauthorized); "
     "renew the token or certificate in the kubeconfig"),
], ids=["crd-missing", "group-without-applications", "unreachable", "unauthorized"])
def test_what_the_api_groups_answer_says(group, expected):
    assert api_problem(HOST, group) == expected
    with pytest.raises(StartupError) as error:
        check_cluster(FakeApi(group=group), ["gantry"])
    assert str(error.value) == expected
    assert "\n" not in str(error.value)


def test_missing_rights_are_named_by_namespace_with_the_user():
    api = FakeApi(allowed=lambda a: a["namespace"] == "gantry" or a["verb"] == "list")
    with pytest.raises(StartupError) as error:
        check_cluster(api, ["gantry", "team-a"])
    assert str(error.value) == (
        "system:serviceaccount:gantry:ctl may not watch applications.gantry.dev, patch applications.gantry.dev/status "
        "in namespace team-a; grant them as deploy/ does (deploy/README.md lists every rule)")


def test_missing_rights_everywhere_say_all_namespaces():
    assert missing_rights("me", [Access("watch", "")]) == (
        "me may not watch applications.gantry.dev in all namespaces; grant them as deploy/ does "
        "(deploy/README.md lists every rule)")
    assert required_access(None) == [Access("list", ""), Access("watch", ""), Access("patch", "", "status")]


def test_without_access_reviews_the_list_itself_decides():
    forbidden = KubeApiError(403, "Forbidden", "selfsubjectaccessreviews is forbidden")
    check_cluster(FakeApi(reviews=forbidden), ["gantry"])
    with pytest.raises(StartupError, match="may not list applications.gantry.dev in namespace gantry;"):
        check_cluster(FakeApi(reviews=forbidden, listing=KubeApiError(403, "Forbidden", "no")), ["gantry"])


def test_an_address_in_use_names_the_flag_and_the_fix():
    def bind(address: str) -> socket.socket:
        host, _, port = address.rpartition(":")
        sock = socket.socket()
        try:
            sock.bind((host, int(port)))
        except OSError:
            sock.close()
            raise
        return sock

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(StartupError) as error:
            listen("--metrics-address", address, bind)
    assert str(error.value) == (f"cannot listen on --metrics-address={address}: Address already in use; "
                                "stop what listens there or pass another --metrics-address")
    with pytest.raises(StartupError, match=r"--webhook-address=127.0.0.1:99999: not a host:port"):
        listen("--webhook-address", "127.0.0.1:99999", bind)


@pytest.mark.parametrize("text", ["{{{ not: yaml: [", "just a string\n", "apiVersion: v1\nkind: Config\n"])
def test_a_kubeconfig_that_is_not_one_is_one_line_naming_the_file(tmp_path, text):
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(StartupError) as error:
        load_client(str(path))
    message = str(error.value)
    assert message.startswith(f"cannot load the kubeconfig {path}: ") and "\n" not in message
    assert message.endswith("; pass a valid one with --kubeconfig or $KUBECONFIG")


def test_a_missing_kubeconfig_says_so(tmp_path):
    with pytest.raises(StartupError) as error:
        load_client(str(tmp_path / "nowhere"))
    assert str(error.value).startswith(f"cannot load the kubeconfig {tmp_path / 'nowhere'}: no such file;")
