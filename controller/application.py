"""The Application as its readers see it: its state in a few words, and the requests one writes to
it. The `gantry` CLI and the web UI both read and ask through here, so they say the same things."""

from __future__ import annotations

from typing import Any

from .model import REFRESH_ANNOTATION, Manifest
from .source import redact_url
from .status import short_revision

__all__ = ["TOKEN_HEADER", "app_summary", "automated_enabled", "destination_namespace", "health_status", "name_of",
           "refresh_request", "repo_url", "rollback_request", "spec_of", "status_of", "sync_request", "sync_status"]


# A bearer token for one request to the web UI's API from a client that is not a browser (`gantry
# app diff`). Not Authorization: the API server's service proxy, the CLI's way in, keeps that one.
TOKEN_HEADER = "X-Gantry-Authorization"


def status_of(app: Manifest) -> dict:
    return app.get("status") or {}


def spec_of(app: Manifest) -> dict:
    return app.get("spec") or {}


def name_of(app: Manifest) -> str:
    return (app.get("metadata") or {}).get("name", "")


def sync_status(app: Manifest) -> str:
    return (status_of(app).get("sync") or {}).get("status") or "Unknown"


def health_status(app: Manifest) -> str:
    return (status_of(app).get("health") or {}).get("status") or "Unknown"


def destination_namespace(app: Manifest) -> str:
    return (spec_of(app).get("destination") or {}).get("namespace") or (app.get("metadata") or {}).get("namespace", "")


def repo_url(app: Manifest) -> str:
    """The repository URL without any credentials it embeds: never print a token."""
    return redact_url(str((spec_of(app).get("source") or {}).get("repoURL") or ""))


def automated_enabled(app: Manifest) -> bool:
    """spec.syncPolicy.automated is there and not switched off with `enabled: false` (as AppSpec reads it)."""
    automated = (spec_of(app).get("syncPolicy") or {}).get("automated")
    return automated is not None and automated.get("enabled") is not False


def app_summary(app: Manifest) -> dict[str, Any]:
    """One Application in the words of `gantry app list` and the UI's list, as JSON-ready values."""
    metadata, status, source = app.get("metadata") or {}, status_of(app), spec_of(app).get("source") or {}
    sync, health = status.get("sync") or {}, status.get("health") or {}
    operation = status.get("operationState") or {}
    summary = status.get("summary") or {}
    return {
        "namespace": metadata.get("namespace", ""),
        "name": name_of(app),
        "sync": sync_status(app),
        "health": health_status(app),
        "healthMessage": health.get("message") or "",
        "revision": sync.get("revision") or "",
        "shortRevision": sync.get("shortRevision") or short_revision(sync.get("revision")) or "",
        "commitMessage": (sync.get("revisionMetadata") or {}).get("message") or "",
        "commitAuthor": (sync.get("revisionMetadata") or {}).get("author") or "",
        "repo": repo_url(app),
        "path": source.get("path") or "k8s",
        "chart": source.get("chart") or "",  # a chart of the Helm repository `repo` (path is then unused)
        "targetRevision": source.get("targetRevision") or "HEAD",
        "destination": destination_namespace(app),
        "urls": list(summary.get("externalURLs") or []),
        "lastSync": operation.get("finishedAt") or "",
        "operation": operation.get("phase") if app.get("operation") or operation.get("phase") == "Running" else "",
        "automated": automated_enabled(app),
        "message": status.get("message") or "",
        "reconciledAt": status.get("reconciledAt") or "",
    }


def sync_request(revision: str | None = None, prune: bool = False, source: dict | None = None,
                 username: str | None = None) -> dict:
    """The merge patch that asks the controller for a sync (Argo CD's `operation.sync`).

    `source` ({repoURL, path, targetRevision}, as a history entry records it) makes the controller
    render that source at `revision` instead of the app's current spec.source: a rollback goes back
    to what was deployed then, even if the path or repository has changed since, as in Argo CD.
    """
    sync: dict[str, Any] = {}
    if revision:
        sync["revision"] = revision
    if source:
        sync["source"] = dict(source)
    if prune:
        sync["prune"] = True
    operation: dict[str, Any] = {"sync": sync}
    if username:
        operation["initiatedBy"] = {"username": username}  # recorded in operationState and history
    return {"operation": operation}


def rollback_request(entry: dict, prune: bool = False, username: str | None = None) -> dict:
    """The sync request that re-applies a status.history entry: its revision, and its source when
    it recorded one (entries written before sources were recorded have only the revision)."""
    return sync_request(entry["revision"], prune, entry.get("source") or None, username)


def refresh_request(hard: bool = False) -> dict:
    """The merge patch that asks the controller to read git now (`hard`: and render again)."""
    return {"metadata": {"annotations": {REFRESH_ANNOTATION: "hard" if hard else "normal"}}}
