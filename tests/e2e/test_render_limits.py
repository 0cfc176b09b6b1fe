"""What one commit may make a render read and cost (the security issue's parts 1, 3 and 4): YAML
whose aliases explode, and files too large to hold, fail their own app with a message naming the
file and the limit, while the controller stays healthy and the other apps go on syncing; with
--no-remote-bases, a remote base is refused before kustomize runs."""

from __future__ import annotations

import urllib.request

import yaml
from harness import controller_instead, web_app_files

# Nine levels of nine aliases: 10 lines that expand to half a billion nodes.
BILLION_LAUGHS = "\n".join(
    ["apiVersion: v1", "kind: ConfigMap", "metadata:", "  name: lol", "data:",
     '  l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"  l{n}: &l{n} [{','.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 9)]) + "\n"
ALIASES_REFUSED = ("YAML aliases expand the document that starts here to 490,329,074 nodes from the 38 written (the "
                   "limit is 100,000")


def healthy(controller) -> bool:
    with urllib.request.urlopen(controller.metrics_url + "/healthz", timeout=5) as response:
        return response.status == 200


def resident_mib(controller) -> float:
    for line in open(f"/proc/{controller.process.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def with_resource(name: str, text: str) -> dict[str, str]:
    files = web_app_files()
    kustomization = yaml.safe_load(files["k8s/kustomization.yaml"])
    kustomization["resources"].append(name)
    return {**files, "k8s/kustomization.yaml": yaml.safe_dump(kustomization), f"k8s/{name}": text}


def failed_at_head(app) -> str:
    app.refresh()
    status = app.wait(lambda s: (s.get("sync") or {}).get("revision") == app.repo.head
                      and s["sync"]["status"] == "Failed", "Failed at the new commit", timeout=120)
    return status["conditions"][0]["message"]


def synced_apps(make_app, count: int = 2):
    apps = [make_app() for _ in range(count)]
    for app in apps:
        app.apply()
    for app in apps:
        app.wait_synced(app.repo.head)
    return apps


def test_yaml_aliases_that_explode_fail_only_their_app(make_app, controller):
    app, bystander = synced_apps(make_app)
    running = app.object("deployment", "web")["metadata"]["resourceVersion"]

    # A plain directory: the file is read by the controller itself.
    app.push({"k8s/lol.yaml": BILLION_LAUGHS}, delete=("k8s/kustomization.yaml",), message="plain bomb")
    message = failed_at_head(app)
    assert message.startswith(f"k8s/lol.yaml:1: {ALIASES_REFUSED}"), message
    assert healthy(controller)

    # Through kustomize, under another name: refused before kustomize reads it.
    app.push(with_resource("lol.txt", BILLION_LAUGHS), delete=("k8s/lol.yaml",), message="kustomize bomb")
    message = failed_at_head(app)
    assert message.startswith(f"k8s/lol.txt:1: {ALIASES_REFUSED}"), message
    assert healthy(controller)

    assert app.object("deployment", "web")["metadata"]["resourceVersion"] == running
    assert app.object("configmap", "lol") is None
    changed = bystander.push(web_app_files(replicas=2), message="scale")
    bystander.refresh()
    bystander.wait_synced(changed)


def test_a_file_too_large_to_render_is_refused_unread(make_app, controller):
    app, bystander = synced_apps(make_app)
    running = app.object("deployment", "web")["metadata"]["resourceVersion"]
    before = resident_mib(controller)

    huge = "".join(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: huge-{i}\ndata:\n  blob: {'x' * 4000}\n"
                   for i in range(3000))
    app.push(with_resource("huge.yaml", huge), message="12 MiB of ConfigMaps")
    message = failed_at_head(app)
    assert message == ("k8s/huge.yaml: is 11.7 MiB, over the 8 MiB limit for one file the controller renders: "
                       "split it into smaller files"), message
    assert healthy(controller)
    # Refused before it was read: the controller holds no copy of it.
    assert resident_mib(controller) - before < 64

    assert app.object("deployment", "web")["metadata"]["resourceVersion"] == running
    assert app.object("configmap", "huge-0") is None
    changed = bystander.push(web_app_files(replicas=2), message="scale")
    bystander.refresh()
    bystander.wait_synced(changed)


def test_remote_bases_can_be_refused(cluster, controller, make_app, git_server, tmp_path):
    base = make_app()  # a public repo on the loopback server, fetchable as a remote base
    app = make_app()
    entry = f"{git_server.url(base.name)}//k8s?ref=main"
    files = web_app_files()
    files["k8s/kustomization.yaml"] = yaml.safe_dump({"resources": [entry], "namePrefix": "remote-"})
    app.push(files, message="a remote base")
    with controller_instead(cluster, controller, tmp_path, "--no-remote-bases"):
        app.apply()
        message = app.wait_sync_status("Failed")["conditions"][0]["message"]
        assert message == (f"k8s/kustomization.yaml:3: resources entry {entry!r} is a remote base, and this "
                           f"controller fetches none (it runs with --no-remote-bases): copy the base into this "
                           f"repository"), message
        assert app.object("service", "remote-web") is None
    # By default kustomize fetches it (as Argo CD does).
    app.refresh()
    app.wait_synced(app.repo.head)
    assert app.object("deployment", "remote-web") is not None
