"""Health of the custom resources most clusters run, each by its project's documented semantics:
cert-manager, Gateway API, Argo (Rollouts, Workflows, CD), Crossplane, KEDA, External Secrets,
Cluster API, Knative and the Prometheus Operator.

Where a project's own conventions leave "not ready" ambiguous (in progress, or failed?), the
reason decides, then the generic timeout (controller.health._base.STUCK_AFTER_SECONDS); where the
project spells it out (Gateway API's Pending, cert-manager's Issuing), its word is taken as is.
"""

from __future__ import annotations

from controller.health._base import (
    D, H, P, S, U, HealthContext, _condition, _conditions, _false_ready, _find_condition, _generation,
    _is_false, _is_true, _mapping, _metadata, _reason_failed, _spec, _stale, _status, _text, _truth,
    group_rule, rule, worst,
)
from controller.health._generic import phase, ready_condition
from controller.model import HealthResult, HealthStatus, Manifest

# ---------------------------------------------------------------------------------------------
# cert-manager: Issuing=True while a certificate is being (re)issued, Ready for the result.


@rule("cert-manager.io", "Certificate")
def _certificate(obj: Manifest, context: HealthContext | None) -> HealthResult:
    issuing, ready = _condition(obj, "Issuing"), _condition(obj, "Ready")
    if _stale(obj, ready) or _stale(obj, issuing):
        return HealthResult(P, "waiting for cert-manager to observe the latest generation")
    if _is_true(issuing):
        return HealthResult(P, f"Issuing: {_text(issuing, 'issuing')}")
    if _is_true(ready):
        renewal = f"; renewal failed: {_text(issuing)}" if _is_false(issuing) and issuing.get("reason") == "Failed" else ""
        return HealthResult(H, f"{ready.get('message') or ''}{renewal}".lstrip("; "))
    if _is_false(issuing) and _reason_failed(issuing.get("reason")):
        return HealthResult(D, f"Issuing: {_text(issuing)}")
    if ready is None:
        return HealthResult(P, "waiting for cert-manager")
    return ready_condition(obj, ready, context, what="Ready: ")


@rule("cert-manager.io", "CertificateRequest")
def _certificate_request(obj: Manifest, context: HealthContext | None) -> HealthResult:
    for type_ in ("Denied", "InvalidRequest"):
        cond = _condition(obj, type_)
        if _is_true(cond):
            return HealthResult(D, f"{type_}: {_text(cond)}")
    ready = _condition(obj, "Ready")
    if _is_true(ready):
        return HealthResult(H, _text(ready))
    if _is_false(ready) and ready.get("reason") in ("Failed", "Denied"):
        return HealthResult(D, f"Ready: {_text(ready)}")
    if ready is None:
        approved = _condition(obj, "Approved")
        return HealthResult(P, "waiting for the issuer" if _is_true(approved) else "waiting for approval")
    return HealthResult(P, f"Ready: {_text(ready, 'pending')}")  # Pending: the issuer is at work


@rule("cert-manager.io", "Issuer", "ClusterIssuer")
def _issuer(obj: Manifest, context: HealthContext | None) -> HealthResult:
    # Issuers' failure reasons are Err…: ErrRegisterACMEAccount, ErrInitIssuer, ErrGetKeyPair.
    ready = _condition(obj, "Ready")
    if ready is None:
        return HealthResult(P, "waiting for cert-manager to initialise the issuer")
    return ready_condition(obj, ready, context)


# ---------------------------------------------------------------------------------------------
# Gateway API: conditions on the object, its listeners, and per parent (or ancestor) for routes
# and policies. A condition whose observedGeneration is behind is about an older spec.

_GATEWAY = "gateway.networking.k8s.io"


def _gateway_condition(obj: Manifest, cond: dict | None, context: HealthContext | None,
                       what: str) -> HealthResult | None:
    """The verdict of one Accepted/Programmed/ResolvedRefs condition, or None when it is fine."""
    if cond is None:
        return None
    if _stale(obj, cond):
        return HealthResult(P, f"{what}waiting for the controller to observe the latest generation")
    if _is_true(cond):
        return None
    label = f"{what}{cond.get('type')}: {_text(cond, _truth(cond))}"
    if not _is_false(cond) or cond.get("reason") == "Pending":
        return HealthResult(P, label)
    if cond.get("type") == "Programmed" and cond.get("reason") != "Invalid":
        return _false_ready(cond, context, what + "Programmed: ")  # AddressNotAssigned, NoResources: in progress
    return HealthResult(D, label)


@rule(_GATEWAY, "GatewayClass")
def _gateway_class(obj: Manifest, context: HealthContext | None) -> HealthResult:
    accepted = _condition(obj, "Accepted")
    if accepted is None:
        return HealthResult(P, "waiting for a controller to accept the class")
    return _gateway_condition(obj, accepted, context, "") or HealthResult(H, "")


@rule(_GATEWAY, "Gateway")
def _gateway(obj: Manifest, context: HealthContext | None) -> HealthResult:
    if not _conditions(obj):
        return HealthResult(P, "waiting for a controller of its GatewayClass")
    if result := _gateway_condition(obj, _condition(obj, "Accepted"), context, ""):
        return result
    for listener in _status(obj).get("listeners") or ():
        listener = _mapping(listener)
        conditions = _conditions(listener, in_status=False)
        what = f"listener {listener.get('name', '?')}: "
        conflicted = _find_condition(conditions, "Conflicted")
        if _is_true(conflicted):
            return HealthResult(D, f"{what}Conflicted: {_text(conflicted)}")
        for type_ in ("Accepted", "ResolvedRefs", "Programmed"):
            if result := _gateway_condition(obj, _find_condition(conditions, type_), context, what):
                return result
    programmed = _condition(obj, "Programmed") or _condition(obj, "Ready")  # Ready: before v0.7
    if programmed is None:
        return HealthResult(P, "waiting for the gateway to be programmed")
    return _gateway_condition(obj, programmed, context, "") or HealthResult(H, "")


def _attached(obj: Manifest, context: HealthContext | None, key: str, ref: str) -> HealthResult:
    """Routes (status.parents) and policies (status.ancestors): each Gateway they attach to says
    whether it accepted them and resolved their references; the worst answer counts."""
    entries = [_mapping(e) for e in _status(obj).get(key) or ()]
    if not entries:
        return HealthResult(P, "waiting for a Gateway to accept it")
    results: list[HealthResult] = []
    for entry in entries:
        conditions = _conditions(entry, in_status=False)
        what = f"{_mapping(entry.get(ref)).get('kind', 'Gateway')} {_mapping(entry.get(ref)).get('name', '?')}: "
        accepted = _find_condition(conditions, "Accepted")
        verdict = (_gateway_condition(obj, accepted, context, what)
                   or _gateway_condition(obj, _find_condition(conditions, "ResolvedRefs"), context, what))
        if verdict is None and accepted is None:
            verdict = HealthResult(P, f"{what}not accepted yet")
        results.append(verdict or HealthResult(H, ""))
    status = worst(results)
    return next(r for r in results if r.status == status)


@rule(_GATEWAY, "HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute")
def _route(obj: Manifest, context: HealthContext | None) -> HealthResult:
    return _attached(obj, context, "parents", "parentRef")


@rule(_GATEWAY, "BackendTLSPolicy", "BackendLBPolicy", "XBackendTrafficPolicy")
def _policy(obj: Manifest, context: HealthContext | None) -> HealthResult:
    return _attached(obj, context, "ancestors", "ancestorRef")


# ---------------------------------------------------------------------------------------------
# Argo: Rollouts (status.phase since v1.0, else conditions and replica counts), Workflows and
# analysis by phase, CD's own Applications by the health they report.

_ARGO = "argoproj.io"
_ROLLOUT_PHASES = {"Healthy": H, "Progressing": P, "Degraded": D, "Paused": S}


@rule(_ARGO, "Rollout")
def _rollout(obj: Manifest, context: HealthContext | None) -> HealthResult:
    status, spec = _status(obj), _spec(obj)
    if not status:
        return HealthResult(P, "waiting for the rollout controller")
    # observedGeneration is a number as a string since v0.10, a pod-template hash before: only a
    # number is compared.
    observed, generation = _generation(status.get("observedGeneration")), _generation(_metadata(obj).get("generation"))
    workload = (_metadata(obj).get("annotations") or {}).get("rollout.argoproj.io/workload-generation")
    if (observed is not None and generation is not None and observed < generation) or (
            spec.get("workloadRef") and workload is not None
            and str(workload) != str(status.get("workloadObservedGeneration"))):
        return HealthResult(P, "waiting for the rollout's spec update to be observed")
    if status.get("phase") in _ROLLOUT_PHASES:
        message = status.get("message") or ""
        return HealthResult(_ROLLOUT_PHASES[status["phase"]], message or f"rollout is {status['phase'].lower()}")
    return _rollout_before_phases(obj, status, spec)


def _rollout_before_phases(obj: Manifest, status: dict, spec: dict) -> HealthResult:
    """Rollouts before v1.0 wrote no phase: the same decisions from conditions and counts."""
    for cond in _conditions(obj):
        if cond.get("type") == "InvalidSpec" or (
                cond.get("type") == "Progressing" and cond.get("reason") in ("RolloutAborted", "ProgressDeadlineExceeded")):
            return HealthResult(D, _text(cond))
    if status.get("abort"):
        return HealthResult(D, "rollout aborted")
    if spec.get("paused") or status.get("pauseConditions"):
        return HealthResult(S, "rollout is paused")
    current = status.get("currentPodHash")
    if not current:
        return HealthResult(P, "waiting for the rollout controller to reconcile the status")
    wanted, updated = int(spec.get("replicas", 1)), int(status.get("updatedReplicas") or 0)
    if updated < wanted or int(status.get("availableReplicas") or 0) < updated:
        return HealthResult(P, f"{updated} of {wanted} replicas updated and available")
    stable = status.get("stableRS") or _mapping(status.get("canary")).get("stableRS") or ""
    strategy = _mapping(spec.get("strategy"))
    if "blueGreen" in strategy and _mapping(status.get("blueGreen")).get("activeSelector") != current:
        return HealthResult(P, "active service cutover pending")
    if "canary" in strategy and (int(status.get("replicas") or 0) > updated or stable != current):
        return HealthResult(P, "waiting for the rollout to finish its steps")
    return HealthResult(H, "")


_ANALYSIS_PHASES = {"Pending": P, "Running": P, "Successful": H, "Failed": D, "Error": D,
                    "Inconclusive": U}  # inconclusive: a person decides, as Argo CD reports it


@rule(_ARGO, "AnalysisRun", "Experiment")
def _analysis(obj: Manifest, _: HealthContext | None) -> HealthResult:
    status = _status(obj)
    found = _ANALYSIS_PHASES.get(status.get("phase") or "")
    if found is None:
        return HealthResult(P, "waiting for the rollout controller")
    return HealthResult(found, status.get("message") or f"{obj.get('kind')} {status['phase'].lower()}")


_WORKFLOW_PHASES = {"Pending": P, "Running": P, "Succeeded": H, "Failed": D, "Error": D}


@rule(_ARGO, "Workflow")
def _workflow(obj: Manifest, _: HealthContext | None) -> HealthResult:
    status = _status(obj)
    found = _WORKFLOW_PHASES.get(status.get("phase") or "")
    if found is None:
        return HealthResult(P, "waiting for the workflow controller")
    if found is P and _spec(obj).get("suspend"):
        return HealthResult(S, "workflow is suspended")
    return HealthResult(found, status.get("message") or f"workflow {status['phase'].lower()}")


@rule(_ARGO, "CronWorkflow")
def _cron_workflow(obj: Manifest, _: HealthContext | None) -> HealthResult:
    for type_ in ("SpecError", "SubmissionError"):
        cond = _condition(obj, type_)
        if _is_true(cond):
            return HealthResult(D, f"{type_}: {_text(cond)}")
    if _spec(obj).get("suspend"):
        return HealthResult(S, "cron workflow is suspended")
    return HealthResult(H, "")


_APPLICATION_HEALTH = {status.value: status for status in HealthStatus}


@rule(_ARGO, "Application")
@rule("gantry.dev", "Application")
def _application(obj: Manifest, _: HealthContext | None) -> HealthResult:
    """An app of apps: a child Application is as healthy as it says it is."""
    health = _mapping(_status(obj).get("health"))
    found = _APPLICATION_HEALTH.get(str(health.get("status") or ""))
    if found is None:
        return HealthResult(P, "waiting for the application's health")
    return HealthResult(found, health.get("message") or "")


@rule(_ARGO, "ApplicationSet")
def _application_set(obj: Manifest, _: HealthContext | None) -> HealthResult:
    error = _condition(obj, "ErrorOccurred")
    if _is_true(error):
        return HealthResult(D, _text(error))
    if _is_true(_condition(obj, "ResourcesUpToDate")):
        return HealthResult(H, "")
    return HealthResult(P, "waiting for the applications to be generated")


# ---------------------------------------------------------------------------------------------
# Crossplane: managed resources (each provider has groups of its own, under crossplane.io or
# upbound.io), packages, and the kinds that carry no status at all. Claims and composites live in
# their users' groups and get the same Synced/Ready reading from the generic rule.

_NO_STATUS = frozenset({"Composition", "CompositionRevision", "DeploymentRuntimeConfig", "ControllerConfig",
                        "EnvironmentConfig", "ProviderConfig", "ClusterProviderConfig", "ProviderConfigUsage",
                        "ClusterProviderConfigUsage", "ImageConfig", "Usage", "ClusterUsage"})
_CROSSPLANE_READY = ("Ready", "Healthy", "Installed", "Offered", "Established", "ValidPipeline", "RevisionHealthy")


@group_rule(".crossplane.io")
@group_rule(".upbound.io")
def _crossplane(obj: Manifest, context: HealthContext | None) -> HealthResult:
    if (_metadata(obj).get("annotations") or {}).get("crossplane.io/paused") == "true":
        return HealthResult(S, "reconciliation is paused (crossplane.io/paused)")
    conditions = _conditions(obj)
    if not conditions:
        if obj.get("kind") in _NO_STATUS:
            return HealthResult(H, "")
        return HealthResult(P, "waiting for the provider")
    for type_ in ("LastAsyncOperation", "Synced"):
        cond = _find_condition(conditions, type_)
        if _is_false(cond):
            if cond.get("reason") == "ReconcilePaused":
                return HealthResult(S, _text(cond))
            return HealthResult(D, f"{type_}: {_text(cond)}")
    readiness = [c for c in conditions if c.get("type") in _CROSSPLANE_READY]
    for cond in readiness:
        if not _is_true(cond):
            return ready_condition(obj, cond, context, what=f"{cond.get('type')}: ")
    if readiness:
        return HealthResult(H, "")
    return HealthResult(P, "waiting for the resource to become ready")


# ---------------------------------------------------------------------------------------------
# KEDA: Ready=False is the scaler failing; paused autoscaling is a choice.


@rule("keda.sh", "ScaledObject", "ScaledJob")
def _keda(obj: Manifest, _: HealthContext | None) -> HealthResult:
    annotations = _metadata(obj).get("annotations") or {}
    paused = _condition(obj, "Paused")
    if _is_true(paused) or annotations.get("autoscaling.keda.sh/paused") == "true" or (
            "autoscaling.keda.sh/paused-replicas" in annotations):
        return HealthResult(S, _text(paused, "autoscaling is paused"))
    fallback = _condition(obj, "Fallback")
    if _is_true(fallback):
        return HealthResult(D, f"Fallback: {_text(fallback)}")
    ready = _condition(obj, "Ready")
    if _is_true(ready):
        return HealthResult(H, "")
    if _is_false(ready):
        return HealthResult(D, f"Ready: {_text(ready)}")
    return HealthResult(P, f"Ready: {_text(ready, 'waiting for KEDA')}")


# ---------------------------------------------------------------------------------------------
# External Secrets: every reason Ready=False gives is an error (SecretSyncedError, InvalidProviderConfig …).


@rule("external-secrets.io", "ExternalSecret", "ClusterExternalSecret", "SecretStore", "ClusterSecretStore",
      "PushSecret", "ClusterPushSecret")
def _external_secret(obj: Manifest, _: HealthContext | None) -> HealthResult:
    for type_ in ("NotReady", "PartiallyReady"):  # ClusterExternalSecret before v0.9
        cond = _condition(obj, type_)
        if _is_true(cond):
            return HealthResult(D, f"{type_}: {_text(cond)}")
    ready = _condition(obj, "Ready")
    if _stale(obj, ready):
        return HealthResult(P, "waiting for the latest generation to be observed")
    if _is_true(ready):
        return HealthResult(H, _text(ready))
    if _is_false(ready):
        return HealthResult(D, _text(ready))
    return HealthResult(P, f"waiting for {obj.get('kind')} to be synced")


# ---------------------------------------------------------------------------------------------
# Cluster API: phases, and conditions that carry a severity (v1beta1): a False one of severity
# Info is work under way (WaitingForInfrastructure), Error is a failure.


def _capi_failure(obj: Manifest) -> HealthResult | None:
    status = _status(obj)
    if status.get("failureReason") or status.get("failureMessage"):
        return HealthResult(D, ": ".join(str(p) for p in (status.get("failureReason"), status.get("failureMessage")) if p))
    for cond in _conditions(obj):
        if _is_false(cond) and cond.get("severity") == "Error":
            return HealthResult(D, f"{cond.get('type')}: {_text(cond)}")
    return None


def _capi_waiting(obj: Manifest, default: str) -> str:
    ready = _condition(obj, "Ready") or _condition(obj, "Available")
    return f"Ready: {_text(ready)}" if ready is not None and not _is_true(ready) and _text(ready) else default


_CAPI_PHASES = {
    "Cluster": {"Provisioned": H, "Failed": D},
    "Machine": {"Running": H, "Failed": D},
    "MachineDeployment": {"Running": H, "Failed": D},
    "MachinePool": {"Running": H, "Failed": D},
}


@rule("cluster.x-k8s.io", "Cluster", "Machine", "MachineDeployment", "MachinePool", "MachineSet")
def _capi(obj: Manifest, context: HealthContext | None) -> HealthResult:
    kind = str(obj.get("kind"))
    if _spec(obj).get("paused"):
        return HealthResult(S, f"{kind} is paused")
    if failure := _capi_failure(obj):
        return failure
    if kind == "MachineSet":
        wanted, ready = int(_spec(obj).get("replicas", 1)), int(_status(obj).get("readyReplicas") or 0)
        return HealthResult(H, "") if ready >= wanted else HealthResult(P, f"{ready} of {wanted} machines ready")
    found = _CAPI_PHASES[kind].get(str(_status(obj).get("phase") or ""), P)
    if found is H:
        ready = _condition(obj, "Ready")
        if kind == "Cluster" and _is_false(ready) and ready.get("severity") == "Warning":
            return HealthResult(D, f"Ready: {_text(ready)}")
        return HealthResult(H, "")
    phase_text = _status(obj).get("phase") or "Pending"
    return HealthResult(found, _capi_waiting(obj, f"{kind} is {phase_text.lower()}"))


@group_rule(".cluster.x-k8s.io")
def _capi_provider(obj: Manifest, context: HealthContext | None) -> HealthResult | None:
    """Control planes, infrastructure and bootstrap providers: severities, then Ready or
    status.ready (a boolean most providers set)."""
    if failure := _capi_failure(obj):
        return failure
    ready = _condition(obj, "Ready") or _condition(obj, "Available")
    if ready is not None:
        if _is_false(ready) and ready.get("severity") == "Info":
            return HealthResult(P, f"Ready: {_text(ready)}")
        return ready_condition(obj, ready, context, what="Ready: " if not _is_true(ready) else "")
    flag = _status(obj).get("ready")
    if isinstance(flag, bool):
        return HealthResult(H, "") if flag else HealthResult(P, "not ready yet")
    return phase(obj)


# ---------------------------------------------------------------------------------------------
# Knative's duck-typed conditions (knative.dev/pkg): Unknown while it reconciles, False when it
# has failed for this generation; the failing sub-condition (ConfigurationsReady …) says why.


@group_rule(".knative.dev")
def _knative(obj: Manifest, _: HealthContext | None) -> HealthResult:
    if _stale(obj):
        return HealthResult(P, "waiting for the latest generation to be observed")
    conditions = _conditions(obj)
    ready = _find_condition(conditions, "Ready") or _find_condition(conditions, "Succeeded")
    if ready is None:
        return HealthResult(P, "waiting for Knative")
    if _is_true(ready):
        return HealthResult(H, "")
    truth = _truth(ready)
    cause = next((c for c in conditions if c is not ready and _truth(c) == truth), ready)
    text = f"{cause.get('type')}: {_text(cause, truth)}"
    return HealthResult(D if truth == "False" else P, text)


# ---------------------------------------------------------------------------------------------
# Prometheus Operator: Available (True, Degraded when some replicas are not ready, False) and
# Reconciled for the servers; per-server Accepted bindings for the configuration objects.

_MONITORING = "monitoring.coreos.com"


@rule(_MONITORING, "Prometheus", "PrometheusAgent", "Alertmanager", "ThanosRuler")
def _prometheus(obj: Manifest, context: HealthContext | None) -> HealthResult:
    if _spec(obj).get("paused"):
        return HealthResult(S, "reconciliation is paused")
    reconciled, available = _condition(obj, "Reconciled"), _condition(obj, "Available")
    if _stale(obj, available) or _stale(obj, reconciled):
        return HealthResult(P, "waiting for the operator to observe the latest generation")
    if _is_false(reconciled):
        return HealthResult(D, f"Reconciled: {_text(reconciled)}")
    if available is None:
        return HealthResult(P, "waiting for the operator")
    truth = _truth(available)
    if truth == "True":
        return HealthResult(H, "")
    if truth == "False":
        return _false_ready(available, context, "Available: ")  # NoPodReady: pods on their way, at first
    if truth == "Degraded" and available.get("reason") != "SomePodsNotReady":
        return HealthResult(D, f"Available: {_text(available)}")
    return HealthResult(P, f"Available: {_text(available, truth)}")


@rule(_MONITORING, "ServiceMonitor", "PodMonitor", "Probe", "PrometheusRule", "ScrapeConfig", "AlertmanagerConfig")
def _monitoring_config(obj: Manifest, _: HealthContext | None) -> HealthResult | None:
    bindings = [_mapping(b) for b in _status(obj).get("bindings") or ()]
    if not bindings:
        return None  # before v0.80 these carry no status: nothing to judge
    for binding in bindings:
        accepted = _find_condition(_conditions(binding, in_status=False), "Accepted")
        if _is_false(accepted):
            return HealthResult(D, f"{binding.get('resource', 'server')} {binding.get('name', '?')}: {_text(accepted)}")
    return HealthResult(H, "")
