"""Health of Kubernetes' own kinds: workloads (with their pods), Jobs, Services, Ingresses, claims,
autoscalers, and the API machinery's CRDs, PodDisruptionBudgets and APIServices.

A workload that is not fully ready also looks at its pods, when the context can list them, so the
message names the pod and what fails in it ("2 of 3 replicas available" tells nobody what to fix).
"""

from __future__ import annotations

import json
from datetime import datetime

from controller.health._base import (
    D, H, P, HealthContext, _condition, _conditions, _duration, _find_condition, _generation_unobserved, _int, _is_false,
    _is_true, _metadata, _name, _now, _one_line, _plural, _spec, _status, _text, _time, worst,
)
from controller.health._base import rule as _kind
from controller.model import HealthResult, HealthStatus, Manifest

LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
# autoscaling/v1 has no status.conditions; the API server carries them in this annotation.
HPA_V1_CONDITIONS_ANNOTATION = "autoscaling.alpha.kubernetes.io/conditions"

# A running pod whose readiness probe has failed for longer than this (counted from its Ready
# condition's last transition, plus the probe's initialDelaySeconds) is Degraded; before, it may
# just be warming up, so it is Progressing. Long enough for an app's first probes, short enough
# that a user watching a fresh deploy learns within a minute that it will not become ready.
READINESS_GRACE_SECONDS = 30


def _lb_addresses(obj: Manifest) -> list[dict]:
    return ((_status(obj).get("loadBalancer") or {}).get("ingress")) or []


def _selects(selector: dict | None, labels: dict) -> bool:
    """A metav1.LabelSelector's meaning: matchLabels and matchExpressions all hold; an empty
    selector selects everything, a missing one nothing (as the API machinery reads them)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or ():
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or ()
        if operator == "In":
            matched = key in labels and labels[key] in values
        elif operator == "NotIn":
            matched = labels.get(key) not in values  # a missing key is "not in", as in Kubernetes
        elif operator == "Exists":
            matched = key in labels
        elif operator == "DoesNotExist":
            matched = key not in labels
        else:
            raise ValueError(f"unknown label selector operator {operator!r}")
        if not matched:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Pods: the health of one pod, used by the Pod rule and, through _with_pods, by the workloads.

# Waiting reasons that never resolve without a change (image, config, code) or the kubelet backs
# off from: Argo CD's rule (Err*, *BackOff, *Error) covers ErrImagePull, ImagePullBackOff,
# CrashLoopBackOff, CreateContainerConfigError, InvalidImageName, RunContainerError and the like.
_STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})


def _stuck(reason: str) -> bool:
    return reason not in _STARTING_REASONS and (
        reason.startswith("Err") or reason.endswith(("BackOff", "Error")) or reason == "InvalidImageName"
    )


def _exit(terminated: dict) -> str:
    """`exit code 1 (Error): <first line of the termination message>`."""
    text = f"exit code {terminated.get('exitCode', '?')}"
    if terminated.get("reason"):
        text += f" ({terminated['reason']})"
    if terminated.get("message"):
        text += f": {_one_line(terminated['message'])}"
    return text


def _waiting_message(container_status: dict, reason: str, waiting: dict) -> str:
    name = container_status.get("name", "?")
    if reason == "CrashLoopBackOff":
        restarts = _int(container_status.get("restartCount"))
        last = (container_status.get("lastState") or {}).get("terminated")
        detail = f"last {_exit(last)}" if last else _one_line(waiting.get("message") or "")
        text = f"container {name} CrashLoopBackOff (restarted {_plural(restarts, 'time')})"
        return f"{text}: {detail}" if detail else text
    detail = _one_line(waiting.get("message") or "") or f"image {container_status.get('image', '?')}"
    return f"container {name} {reason}: {detail}"


def _port(port: object, container: dict) -> str:
    """A probe's port as a number: a named port is looked up in the container's ports."""
    if isinstance(port, str) and not port.isdigit():
        for declared in container.get("ports") or ():
            if declared.get("name") == port and declared.get("containerPort"):
                return str(declared["containerPort"])
    return str(port) if port is not None else "?"


def _describe_probe(probe: dict, container: dict) -> str:
    """`HTTP GET :8080/healthz`, `TCP :5432`, `gRPC :9090`, `exec pg_isready -U app`."""
    if (http := probe.get("httpGet")) is not None:
        path = http.get("path") or "/"
        path = path if path.startswith("/") else "/" + path
        scheme = (http.get("scheme") or "HTTP").upper()
        return f"{scheme} GET {http.get('host') or ''}:{_port(http.get('port'), container)}{path}"
    if (tcp := probe.get("tcpSocket")) is not None:
        return f"TCP {tcp.get('host') or ''}:{_port(tcp.get('port'), container)}"
    if (grpc := probe.get("grpc")) is not None:
        service = f" service {grpc['service']}" if grpc.get("service") else ""
        return f"gRPC :{grpc.get('port', '?')}{service}"
    if (exec_ := probe.get("exec")) is not None:
        return "exec " + _one_line(" ".join(str(arg) for arg in exec_.get("command") or ()), 80)
    return "probe without an action"


def _pod_health(pod: Manifest, now: datetime) -> HealthResult:
    """Health of one pod, its message without the pod's name (callers that list pods add it)."""
    spec, status = _spec(pod), _status(pod)
    phase = status.get("phase") or "Pending"
    containers = {c.get("name"): c for c in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]}
    init_statuses = status.get("initContainerStatuses") or []
    statuses = status.get("containerStatuses") or []
    # A container the kubelet cannot start or keeps restarting is the answer, whatever the phase
    # (ImagePullBackOff leaves the pod Pending, CrashLoopBackOff leaves it Running).
    for container_status in [*init_statuses, *statuses]:
        waiting = (container_status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if _stuck(reason):
            return HealthResult(HealthStatus.DEGRADED, _waiting_message(container_status, reason, waiting))
    if phase == "Succeeded":
        return HealthResult(HealthStatus.HEALTHY, "completed")
    if phase == "Failed":
        failed = next((cs for cs in [*init_statuses, *statuses]
                       if _int(((cs.get("state") or {}).get("terminated") or {}).get("exitCode")) != 0), None)
        if failed is not None:
            return HealthResult(HealthStatus.DEGRADED,
                                f"container {failed.get('name')} failed: {_exit(failed['state']['terminated'])}")
        why = ": ".join(part for part in (status.get("reason"), status.get("message")) if part)  # Evicted: …
        return HealthResult(HealthStatus.DEGRADED, f"failed: {_one_line(why)}" if why else "failed")
    if phase == "Pending":
        scheduled = _condition(pod, "PodScheduled")
        if _is_false(scheduled):
            why = scheduled.get("message") or scheduled.get("reason") or "no node fits"
            return HealthResult(HealthStatus.PROGRESSING, f"not scheduled: {_one_line(why)}")
        starting = next(((cs.get("name"), cs["state"]["waiting"].get("reason")) for cs in [*init_statuses, *statuses]
                         if ((cs.get("state") or {}).get("waiting") or {}).get("reason")), None)
        if starting:
            return HealthResult(HealthStatus.PROGRESSING, f"container {starting[0]} {starting[1]}")
        return HealthResult(HealthStatus.PROGRESSING, "pending")
    if phase != "Running":
        return HealthResult(HealthStatus.UNKNOWN, f"pod phase {phase}")
    if (spec.get("restartPolicy") or "Always") != "Always":
        # A pod meant to finish (a Job's): running is progress, readiness is beside the point.
        return HealthResult(HealthStatus.PROGRESSING, "running")
    ready = _condition(pod, "Ready")
    if _is_true(ready):
        return HealthResult(HealthStatus.HEALTHY)
    return _not_ready(pod, containers, statuses, ready, now)


def _not_ready(pod: Manifest, containers: dict, statuses: list, ready: dict | None, now: datetime) -> HealthResult:
    """A Running pod that is not Ready: name the container and the probe that keeps it out."""
    since = _time((ready or {}).get("lastTransitionTime"))
    # Whole seconds, as the message shows them: "failing for 30s" must never read as Degraded.
    elapsed = int((now - since).total_seconds()) if since else 0
    several = len(_spec(pod).get("containers") or ()) > 1
    for container_status in statuses:
        if container_status.get("ready"):
            continue
        name = container_status.get("name")
        container = containers.get(name) or {}
        who = f"container {name} " if several else ""
        state = container_status.get("state") or {}
        if "terminated" in state:
            # Caught between two back-offs of a crash loop: the kubelet shows the exit, not yet
            # CrashLoopBackOff. A container that failed before and failed again is looping.
            restarts = _int(container_status.get("restartCount"))
            if restarts > 0 and _int(state["terminated"].get("exitCode")) != 0:
                return HealthResult(HealthStatus.DEGRADED, f"container {name} crash-looping (restarted "
                                    f"{_plural(restarts, 'time')}): {_exit(state['terminated'])}")
            return HealthResult(HealthStatus.PROGRESSING,
                                f"container {name} restarting after {_exit(state['terminated'])}")
        if "running" not in state:
            reason = (state.get("waiting") or {}).get("reason") or "waiting"
            return HealthResult(HealthStatus.PROGRESSING, f"container {name} {reason}")
        if container_status.get("started") is False and container.get("startupProbe"):
            # The startup probe has its own budget (failureThreshold × periodSeconds); when that
            # runs out the kubelet restarts the container, which shows up as CrashLoopBackOff.
            return HealthResult(HealthStatus.PROGRESSING, f"{who}startup probe not passed yet "
                                f"({_describe_probe(container['startupProbe'], container)})")
        probe = container.get("readinessProbe")
        if probe is None:
            continue  # ready as soon as it runs: something else holds the pod back
        failing = f"{who}readiness probe failing for {_duration(elapsed)} ({_describe_probe(probe, container)})"
        grace = READINESS_GRACE_SECONDS + _int(probe.get("initialDelaySeconds"))
        if since is not None and elapsed > grace:
            return HealthResult(HealthStatus.DEGRADED, failing)
        return HealthResult(HealthStatus.PROGRESSING, failing)
    for gate in _spec(pod).get("readinessGates") or ():
        # Set by something outside the pod (a load balancer controller registering targets).
        gate_type = gate.get("conditionType")
        if not _is_true(_condition(pod, gate_type)):
            return HealthResult(HealthStatus.PROGRESSING,
                                f"readiness gate {gate_type} not True for {_duration(elapsed)}")
    why = (ready or {}).get("message") or (ready or {}).get("reason") or "no Ready condition yet"
    return HealthResult(HealthStatus.PROGRESSING, f"not ready: {_one_line(why)}")


def _with_pods(obj: Manifest, context: HealthContext | None, counts: HealthResult, *,
               progress: bool = True) -> HealthResult:
    """`counts`, what a workload's status says, made precise by its pods: a pod that crash-loops,
    cannot pull its image or fails its readiness probe past the grace period makes the workload
    Degraded with that pod named; a pod still on its way (unless `progress` is False) adds its
    name and state to the message.

    Only live pods count (terminating and finished ones have been replaced), and only those the
    workload's selector selects in its namespace, as its controller counts them.
    """
    if context is None or context.pods_in is None or counts.status not in (HealthStatus.PROGRESSING,
                                                                           HealthStatus.DEGRADED):
        return counts
    namespace = _metadata(obj).get("namespace")
    selector = _spec(obj).get("selector")
    if not namespace:
        return counts
    try:
        pods = list(context.pods_in(namespace))
    except Exception:  # noqa: BLE001 (the pods only add detail: without them the counts still hold)
        return counts
    now = _now(context)
    problems: list[tuple[HealthResult, str]] = []
    for pod in sorted(pods, key=_name):
        metadata = _metadata(pod)
        if (metadata.get("deletionTimestamp") or _status(pod).get("phase") in ("Succeeded", "Failed")
                or not _selects(selector, metadata.get("labels") or {})):
            continue
        result = _pod_health(pod, now)
        # A pod in phase Unknown (its node stopped reporting) is the node's problem, which the
        # workload's controller handles by replacing the pod: the counts already say it is missing.
        if result.status is HealthStatus.DEGRADED or (progress and result.status is HealthStatus.PROGRESSING):
            problems.append((result, _name(pod)))
    if not problems:
        return counts
    status = worst(result for result, _ in problems)
    named = [(result, name) for result, name in problems if result.status == status]
    result, name = named[0]
    message = f"pod {name}: {result.message}"
    if len(named) > 1:
        message += f" (and {_plural(len(named) - 1, 'more pod')})"
    if status is HealthStatus.DEGRADED and counts.status is not HealthStatus.DEGRADED:
        return HealthResult(HealthStatus.DEGRADED, message)
    return HealthResult(counts.status, f"{counts.message}; {message}")


# ---------------------------------------------------------------------------------------------
# One function per kind. Messages are short and say what the object is waiting for. Workloads:
# the replica counts their controller writes, then (through _with_pods) their pods.


@_kind("apps", "Deployment")
def _deployment(obj: Manifest, context: HealthContext | None) -> HealthResult:
    return _with_pods(obj, context, _deployment_counts(obj))


@_kind("apps", "StatefulSet")
def _statefulset(obj: Manifest, context: HealthContext | None) -> HealthResult:
    return _with_pods(obj, context, _statefulset_counts(obj))


@_kind("apps", "DaemonSet")
def _daemonset(obj: Manifest, context: HealthContext | None) -> HealthResult:
    return _with_pods(obj, context, _daemonset_counts(obj))


@_kind("apps", "ReplicaSet")
def _replicaset(obj: Manifest, context: HealthContext | None) -> HealthResult:
    return _with_pods(obj, context, _replicaset_counts(obj))


def _replica_failure(obj: Manifest) -> HealthResult | None:
    """Pods cannot even be created (a quota, an admission policy): no rollout will progress."""
    failure = _condition(obj, "ReplicaFailure")
    if not _is_true(failure):
        return None
    why = failure.get("message") or failure.get("reason")
    return HealthResult(HealthStatus.DEGRADED, f"cannot create pods: {why}")


def _deployment_counts(obj: Manifest) -> HealthResult:
    # Same order as `kubectl rollout status`, which Argo CD borrows.
    spec, status = _spec(obj), _status(obj)
    if spec.get("paused"):
        return HealthResult(HealthStatus.SUSPENDED, "deployment is paused")
    if _generation_unobserved(obj):
        return HealthResult(HealthStatus.PROGRESSING, "waiting for rollout to be observed")
    if failure := _replica_failure(obj):
        return failure
    progressing = _condition(obj, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return HealthResult(HealthStatus.DEGRADED, f'deployment "{_name(obj)}" exceeded its progress deadline')
    wanted = _int(spec.get("replicas"), 1)
    updated = _int(status.get("updatedReplicas"))
    available = _int(status.get("availableReplicas"))
    if updated < wanted:
        return HealthResult(HealthStatus.PROGRESSING, f"{updated} of {wanted} replicas updated")
    old = _int(status.get("replicas")) - updated
    if old > 0:
        return HealthResult(HealthStatus.PROGRESSING, f"{old} old replicas pending termination")
    if available < updated:
        return HealthResult(HealthStatus.PROGRESSING, f"{available} of {updated} updated replicas are available")
    return HealthResult(HealthStatus.HEALTHY)


def _statefulset_counts(obj: Manifest) -> HealthResult:
    spec, status = _spec(obj), _status(obj)
    # observedGeneration 0/absent: the controller has not looked at the object at all yet.
    if not status.get("observedGeneration") or _generation_unobserved(obj):
        return HealthResult(HealthStatus.PROGRESSING, "waiting for rollout to be observed")
    wanted = _int(spec.get("replicas"), 1)
    ready = _int(status.get("readyReplicas"))
    if ready < wanted:
        return HealthResult(HealthStatus.PROGRESSING, f"{ready} of {wanted} pods ready")
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") == "OnDelete":
        # Pods change revision only when someone deletes them: nothing to wait for.
        return HealthResult(HealthStatus.HEALTHY, f"{ready} pods ready (OnDelete updates)")
    updated = _int(status.get("updatedReplicas"))
    partition = _int((strategy.get("rollingUpdate") or {}).get("partition"))
    if partition > 0:
        # Pods below the partition stay at the old revision on purpose, so the revisions never
        # converge; done means every pod at or above the partition is updated.
        target = max(wanted - partition, 0)
        if updated < target:
            return HealthResult(HealthStatus.PROGRESSING, f"partitioned rollout: {updated} of {target} pods updated")
        return HealthResult(HealthStatus.HEALTHY, f"partitioned rollout complete: {updated} pods updated")
    update_revision = status.get("updateRevision")
    if updated < wanted or (update_revision and status.get("currentRevision") != update_revision):
        return HealthResult(
            HealthStatus.PROGRESSING, f"rolling update: {updated} of {wanted} pods at revision {update_revision}"
        )
    return HealthResult(HealthStatus.HEALTHY)


def _daemonset_counts(obj: Manifest) -> HealthResult:
    spec, status = _spec(obj), _status(obj)
    if not status.get("observedGeneration") or _generation_unobserved(obj):
        return HealthResult(HealthStatus.PROGRESSING, "waiting for rollout to be observed")
    desired = _int(status.get("desiredNumberScheduled"))
    updated = _int(status.get("updatedNumberScheduled"))
    available = _int(status.get("numberAvailable"))
    on_delete = (spec.get("updateStrategy") or {}).get("type") == "OnDelete"
    if updated < desired and not on_delete:
        return HealthResult(HealthStatus.PROGRESSING, f"{updated} of {desired} pods updated")
    if available < desired:
        return HealthResult(HealthStatus.PROGRESSING, f"{available} of {desired} pods available")
    if desired == 0:
        return HealthResult(HealthStatus.HEALTHY, "no node to run on")
    return HealthResult(HealthStatus.HEALTHY, f"{available} pods available (OnDelete updates)" if on_delete else "")


def _replicaset_counts(obj: Manifest) -> HealthResult:
    if _generation_unobserved(obj):
        return HealthResult(HealthStatus.PROGRESSING, "waiting for the replica set to be observed")
    if failure := _replica_failure(obj):
        return failure
    wanted = _int(_spec(obj).get("replicas"), 1)
    available = _int(_status(obj).get("availableReplicas"))
    if available < wanted:
        return HealthResult(HealthStatus.PROGRESSING, f"{available} of {wanted} replicas available")
    return HealthResult(HealthStatus.HEALTHY)


@_kind("", "Pod")
def _pod(obj: Manifest, context: HealthContext | None) -> HealthResult:
    return _pod_health(obj, _now(context))


@_kind("batch", "Job")
def _job(obj: Manifest, context: HealthContext | None) -> HealthResult:
    spec, status = _spec(obj), _status(obj)
    for type_ in ("Failed", "FailureTarget"):
        cond = _condition(obj, type_)
        if _is_true(cond):
            why = ": ".join(part for part in (cond.get("reason"), cond.get("message")) if part)
            return HealthResult(HealthStatus.DEGRADED, f"job failed: {why}" if why else "job failed")
    if _is_true(_condition(obj, "Complete")) or _is_true(_condition(obj, "SuccessCriteriaMet")):
        succeeded = _plural(_int(status.get("succeeded")), "pod")
        return HealthResult(HealthStatus.HEALTHY, f"completed: {succeeded} succeeded")
    if spec.get("suspend"):
        return HealthResult(HealthStatus.SUSPENDED, "job is suspended")
    active, failed = _int(status.get("active")), _int(status.get("failed"))
    message = f"{_plural(active, 'pod')} running" if active else "waiting for pods"
    if failed:
        message += f", {failed} failed"
    # A Job's running pods are its progress; only a pod that cannot start or keeps crashing is news.
    return _with_pods(obj, context, HealthResult(HealthStatus.PROGRESSING, message), progress=False)


@_kind("batch", "CronJob")
def _cronjob(obj: Manifest, _: HealthContext | None) -> HealthResult:
    spec, status = _spec(obj), _status(obj)
    if spec.get("suspend"):
        return HealthResult(HealthStatus.SUSPENDED, "cron job is suspended")
    active = status.get("active") or []
    if active:
        # A run in progress is what a cron job is for, not a rollout to wait on.
        return HealthResult(HealthStatus.HEALTHY, f"job {active[-1].get('name', '?')} running")
    scheduled = _time(status.get("lastScheduleTime"))
    succeeded = _time(status.get("lastSuccessfulTime"))
    if scheduled is None:
        return HealthResult(HealthStatus.HEALTHY, "not scheduled yet")
    if succeeded is None or succeeded < scheduled:
        return HealthResult(HealthStatus.DEGRADED,
                            f"the job scheduled at {status['lastScheduleTime']} did not succeed")
    return HealthResult(HealthStatus.HEALTHY, f"last succeeded at {status['lastSuccessfulTime']}")


@_kind("", "PersistentVolumeClaim")
def _pvc(obj: Manifest, _: HealthContext | None) -> HealthResult:
    phase = _status(obj).get("phase")
    if phase == "Bound":
        return HealthResult(HealthStatus.HEALTHY)
    if phase == "Pending":
        annotations = _metadata(obj).get("annotations") or {}
        provisioner = (annotations.get("volume.kubernetes.io/storage-provisioner")
                       or annotations.get("volume.beta.kubernetes.io/storage-provisioner"))
        if provisioner:
            return HealthResult(HealthStatus.PROGRESSING,
                                f"waiting for a volume to be bound (from provisioner {provisioner})")
        return HealthResult(HealthStatus.PROGRESSING, "waiting for a volume to be bound")
    if phase == "Lost":
        return HealthResult(HealthStatus.DEGRADED, "bound volume is lost")
    return HealthResult(HealthStatus.UNKNOWN, f"unknown phase {phase!r}")


@_kind("", "Service")
def _service(obj: Manifest, _: HealthContext | None) -> HealthResult:
    if _spec(obj).get("type") == "LoadBalancer" and not _lb_addresses(obj):
        return HealthResult(HealthStatus.PROGRESSING, "waiting for the load balancer to get an address")
    return HealthResult(HealthStatus.HEALTHY)


@_kind("networking.k8s.io", "Ingress")
def _ingress(obj: Manifest, context: HealthContext | None) -> HealthResult:
    if _lb_addresses(obj):
        return HealthResult(HealthStatus.HEALTHY)
    if context is None or context.ingress_classes is None:
        return HealthResult(HealthStatus.PROGRESSING, "waiting for an address from the ingress controller")
    annotations = _metadata(obj).get("annotations") or {}
    # The annotation predates spec.ingressClassName (1.18) and is still what many charts set.
    cls = _spec(obj).get("ingressClassName") or annotations.get(LEGACY_CLASS_ANNOTATION)
    cls = cls or context.default_ingress_class
    if cls and cls in context.ingress_classes:
        return HealthResult(HealthStatus.PROGRESSING, f"waiting for an address from ingress controller {cls}")
    # Nothing will ever write status.loadBalancer: waiting would leave the app Progressing forever.
    if not context.ingress_classes:
        why = "no IngressClass in the cluster"
    elif cls:
        why = f"no IngressClass {cls!r} in the cluster"
    else:
        why = "no ingressClassName and no default IngressClass"
    return HealthResult(HealthStatus.HEALTHY, f"{why}: no ingress controller will assign an address")


@_kind("autoscaling", "HorizontalPodAutoscaler")
def _hpa(obj: Manifest, _: HealthContext | None) -> HealthResult:
    conditions = _status(obj).get("conditions")
    if conditions is None:
        annotation = (_metadata(obj).get("annotations") or {}).get(HPA_V1_CONDITIONS_ANNOTATION)
        conditions = json.loads(annotation) if annotation else []
    if not conditions:
        return HealthResult(HealthStatus.PROGRESSING, "waiting for the autoscaler's first assessment")
    for type_ in ("AbleToScale", "ScalingActive"):
        cond = _find_condition(conditions, type_)
        if not _is_false(cond):
            continue
        text = cond.get("message") or cond.get("reason") or f"{type_} is False"
        if cond.get("reason") == "ScalingDisabled":
            return HealthResult(HealthStatus.SUSPENDED, text)  # the target was scaled to zero on purpose
        return HealthResult(HealthStatus.DEGRADED, text)
    # ScalingLimited=True only says the bounds (min/maxReplicas) are doing their job.
    limited = _find_condition(conditions, "ScalingLimited")
    return HealthResult(HealthStatus.HEALTHY, limited.get("message", "") if _is_true(limited) else "")


# ---------------------------------------------------------------------------------------------
# The API machinery's own kinds.


@_kind("apiextensions.k8s.io", "CustomResourceDefinition")
def _crd(obj: Manifest, _: HealthContext | None) -> HealthResult:
    """Established is what makes the type servable; NamesAccepted=False (its plural, kind or a short
    name is taken by another CRD) never resolves by waiting. Installing is the moment in between."""
    terminating = _condition(obj, "Terminating")
    if _is_true(terminating):
        return HealthResult(P, f"being deleted: {_text(terminating)}".rstrip(": "))
    names = _condition(obj, "NamesAccepted")
    if _is_false(names):
        return HealthResult(D, f"names not accepted: {_text(names, 'a name is in use by another CRD')}")
    structural = _condition(obj, "NonStructuralSchema")
    if _is_true(structural):
        return HealthResult(D, f"schema is not structural: {_text(structural)}")
    established = _condition(obj, "Established")
    if _is_true(established):
        return HealthResult(H, "")
    if established is None or established.get("reason") == "Installing" or not _is_false(established):
        return HealthResult(P, f"not established yet: {_text(established, 'waiting for the API server')}")
    return HealthResult(D, f"not established: {_text(established)}")


@_kind("policy", "PodDisruptionBudget")
def _pdb(obj: Manifest, _: HealthContext | None) -> HealthResult:
    """A budget the disruption controller has computed. One that is met but allows no disruption
    (minAvailable equal to the replicas) is a choice, not a fault, as Argo CD decided; one whose
    selected workloads will never have as many pods as it requires is Degraded; one short of pods
    while they are still starting is Progressing (the workload's own health says why)."""
    status = _status(obj)
    if not status or _generation_unobserved(obj) or "desiredHealthy" not in status and not _conditions(obj):
        return HealthResult(P, "waiting for the disruption controller")
    allowed = _condition(obj, "DisruptionAllowed")
    if _is_false(allowed) and allowed.get("reason") not in (None, "", "InsufficientPods"):
        return HealthResult(D, f"budget not computed: {_text(allowed)}")  # SyncFailed
    desired, current = _int(status.get("desiredHealthy")), _int(status.get("currentHealthy"))
    expected = _int(status.get("expectedPods"))
    if current >= desired:
        disruptions = _int(status.get("disruptionsAllowed"))
        return HealthResult(H, f"{_plural(current, 'healthy pod')}, {_plural(disruptions, 'disruption')} allowed")
    if 0 < expected < desired:
        return HealthResult(D, f"can never be met: requires {_plural(desired, 'healthy pod')}, the workload has {expected}")
    return HealthResult(P, f"{current} of {desired} required pods healthy")


# APIService reasons (kube-aggregator's availability controller) that are the normal state of an
# install while the backing Service, its endpoints or its pods come up: metrics-server's pods
# not ready yet is MissingEndpoints. The backing workload's own health says when they never will.
_APISERVICE_WAITING = frozenset({"ServiceNotFound", "EndpointsNotFound", "MissingEndpoints", "FailedDiscoveryCheck",
                                 "ServiceAccessError", "EndpointsAccessError"})


@_kind("apiregistration.k8s.io", "APIService")
def _apiservice(obj: Manifest, _: HealthContext | None) -> HealthResult:
    available = _condition(obj, "Available")
    if available is None:
        return HealthResult(P, "waiting for the aggregator's availability check")
    if _is_true(available):
        return HealthResult(H, "" if available.get("reason") in ("Local", "Passed") else _text(available))
    if available.get("reason") in _APISERVICE_WAITING or not _is_false(available):
        return HealthResult(P, _text(available, "not available yet"))
    return HealthResult(D, _text(available, "not available"))  # ServicePortError: a spec mistake
