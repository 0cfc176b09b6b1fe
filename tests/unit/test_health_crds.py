"""controller/health/_crds.py: custom resources of the projects most clusters run, as fixtures
(testdata/health/<kind>-<state>.yaml, each in the status shape its project documents) and the
health each project's documented semantics give them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from controller.health import STUCK_AFTER_SECONDS, HealthContext, assess
from controller.model import HealthStatus

TESTDATA = Path(__file__).parent / "testdata" / "health" / "crds"
H, S, P, D, U = (HealthStatus.HEALTHY, HealthStatus.SUSPENDED, HealthStatus.PROGRESSING, HealthStatus.DEGRADED,
                 HealthStatus.UNKNOWN)
# The fixtures' conditions changed at 2025-01-14T09:12:04Z: a minute later, and past the timeout.
SOON = HealthContext(now=datetime(2025, 1, 14, 9, 13, 4, tzinfo=timezone.utc))
LATE = HealthContext(now=datetime(2025, 1, 14, 9, 12, 4, tzinfo=timezone.utc) + timedelta(seconds=STUCK_AFTER_SECONDS + 1))

# (fixture, expected status, substring of the message, or None for "no health"); assessed at SOON
CASES = [
    # cert-manager
    ("certificate-issuing", P, "Issuing: DoesNotExist: Issuing certificate as Secret does not exist"),
    ("certificate-ready", H, "Certificate is up to date and has not expired"),
    ("certificate-failed", D, 'Issuing: Failed: The certificate request has failed to complete and will be retried: '
                              'ClusterIssuer.cert-manager.io "letsencrypt" not found'),
    ("certificate-renewing", P, "Issuing: Renewing certificate as renewal was scheduled"),
    ("certificate-renewal-failed", H, "renewal failed: Failed: The certificate request has failed"),
    ("certificate-stale", P, "latest generation"),
    ("certificate-expired", P, "Ready: Expired: Certificate expired"),
    ("certificate-new", P, "waiting for cert-manager"),
    ("certificaterequest-pending", P, "Ready: Pending: Waiting on certificate issuance from order"),
    ("certificaterequest-issued", H, "Issued"),
    ("certificaterequest-denied", D, "Denied: policy.cert-manager.io: No policy approved this request"),
    ("certificaterequest-failed", D, "Ready: Failed to wait for order resource"),
    ("certificaterequest-awaiting-approval", P, "waiting for approval"),
    ("issuer-ready", H, "Signing CA verified"),
    ("clusterissuer-acme-failed", D, "ErrRegisterACMEAccount: Failed to register ACME account"),
    ("clusterissuer-new", P, "waiting for cert-manager to initialise the issuer"),
    # Gateway API
    ("gatewayclass-accepted", H, ""),
    ("gatewayclass-pending", P, "Accepted: Pending: Waiting for controller"),
    ("gatewayclass-invalid", D, 'Accepted: InvalidParameters: EnvoyProxy "custom" not found'),
    ("gateway-programmed", H, ""),
    ("gateway-pending", P, "Accepted: Pending: Waiting for controller"),
    ("gateway-no-address", P, "Programmed: AddressNotAssigned: No addresses have been assigned to the Gateway"),
    ("gateway-listener-bad-certificate", D,
     "listener https: ResolvedRefs: InvalidCertificateRef: Secret krampoline/web-tls does not exist."),
    ("gateway-listener-conflicted", D, "listener http: Conflicted: HostnameConflict"),
    ("httproute-accepted", H, ""),
    ("httproute-unattached", P, "waiting for a Gateway to accept it"),
    ("httproute-not-allowed", D, "Gateway web: Accepted: NotAllowedByListeners: No listeners included"),
    ("httproute-backend-not-found", D, "Gateway web: ResolvedRefs: BackendNotFound"),
    ("httproute-stale", P, "Gateway web: waiting for the controller to observe the latest generation"),
    ("httproute-two-parents-one-rejected", D, "Gateway internal: Accepted: NoMatchingListenerHostname"),
    ("grpcroute-accepted", H, ""),
    ("backendtlspolicy-accepted", H, ""),
    # Argo
    ("rollout-healthy", H, ""),
    ("rollout-progressing", P, "more replicas need to be updated"),
    ("rollout-paused", S, "CanaryPauseStep"),
    ("rollout-aborted", D, "RolloutAborted: Rollout aborted update to revision 2"),
    ("rollout-stale", P, "waiting for the rollout's spec update to be observed"),
    ("rollout-hash-generation", H, ""),
    ("rollout-before-phases-aborted", D, "RolloutAborted: Rollout is aborted"),
    ("analysisrun-running", P, "AnalysisRun running"),
    ("analysisrun-successful", H, 'Metric "success-rate" assessed Successful'),
    ("analysisrun-failed", D, "failureLimit"),
    ("analysisrun-inconclusive", U, "Inconclusive"),
    ("workflow-running", P, "workflow running"),
    ("workflow-succeeded", H, "workflow succeeded"),
    ("workflow-failed", D, "child 'build-x7k2p-1234' failed"),
    ("workflow-error", D, "exceeded quota"),
    ("workflow-new", P, "waiting for the workflow controller"),
    ("cronworkflow-scheduled", H, ""),
    ("cronworkflow-submission-error", D, "SubmissionError: Failed to submit Workflow"),
    ("cronworkflow-suspended", S, "suspended"),
    ("application-argocd-degraded", D, "Deployment web: exceeded its progress deadline"),
    # Crossplane
    ("crossplane-bucket-ready", H, ""),
    ("crossplane-bucket-creating", P, "Ready: Creating"),
    ("crossplane-bucket-reconcile-error", D, "Synced: ReconcileError: observe failed"),
    ("crossplane-bucket-async-failed", D, "LastAsyncOperation: ApplyFailure: apply failed"),
    ("crossplane-bucket-new", P, "waiting for the provider"),
    ("crossplane-bucket-paused", S, "paused"),
    ("crossplane-claim-waiting", P, "Waiting: Claim is waiting for composite resource to become Ready"),
    ("crossplane-composite-synced-error", D, "Synced: ReconcileError: cannot compose resources"),
    ("crossplane-provider-healthy", H, ""),
    ("crossplane-provider-unhealthy", D, "Healthy: UnhealthyPackageRevision: post establish runtime hook failed"),
    ("crossplane-composition", H, ""),
    # KEDA
    ("scaledobject-ready", H, ""),
    ("scaledobject-paused", S, "ScaledObject is paused"),
    ("scaledobject-trigger-error", D, "Ready: ScaledObjectCheckFailed"),
    ("scaledobject-fallback", D, "Fallback: FallbackExists"),
    ("scaledobject-new", P, "Ready"),
    ("scaledjob-ready", H, ""),
    # External Secrets
    ("externalsecret-synced", H, "secret synced"),
    ("externalsecret-sync-error", D, "SecretSyncedError: could not get secret data from provider"),
    ("externalsecret-new", P, "waiting for ExternalSecret to be synced"),
    ("secretstore-valid", H, "store validated"),
    ("clustersecretstore-invalid", D, "InvalidProviderConfig: unable to log in"),
    # Cluster API
    ("cluster-provisioned", H, ""),
    ("cluster-provisioning", P, "Ready: WaitingForControlPlane"),
    ("cluster-paused", S, "Cluster is paused"),
    ("cluster-failed", D, "InvalidConfiguration: AWSCluster prod: VPC vpc-0abc does not exist"),
    ("machine-waiting-for-infrastructure", P, "Ready: WaitingForInfrastructure: 1 of 2 completed"),
    ("machine-running", H, ""),
    ("machine-failed", D, "UpdateError"),
    ("machinedeployment-running", H, ""),
    ("machinedeployment-scaling-up", P, "WaitingForAvailableMachines"),
    ("machinedeployment-paused", S, "MachineDeployment is paused"),
    ("kubeadmcontrolplane-ready", H, ""),
    ("dockercluster-ready", H, ""),
    # Knative
    ("knative-service-ready", H, ""),
    ("knative-service-deploying", P, "RevisionMissing"),
    ("knative-service-failed", D, "ConfigurationsReady: RevisionFailed: Revision \"hello-00001\" failed"),
    # Prometheus Operator
    ("prometheus-available", H, ""),
    ("prometheus-some-pods-not-ready", P, "Available: SomePodsNotReady"),
    ("prometheus-no-pod-ready", P, "Available: NoPodReady"),
    ("prometheus-reconcile-failed", D, "Reconciled: ReconciliationFailed: creating config failed"),
    ("alertmanager-available", H, ""),
    ("servicemonitor-no-status", None, None),
    ("servicemonitor-rejected", D, "prometheuses k8s: InvalidConfiguration"),
    ("servicemonitor-accepted", H, ""),
]


def load(name: str) -> dict:
    return yaml.safe_load((TESTDATA / f"{name}.yaml").read_text())


@pytest.mark.parametrize(("fixture", "status", "message"), CASES, ids=[case[0] for case in CASES])
def test_assess(fixture: str, status: HealthStatus | None, message: str | None) -> None:
    result = assess(load(fixture), SOON)
    if status is None:
        assert result is None
        return
    assert result is not None and result.status == status, result
    assert message in result.message, result.message


# Not ready for a reason that does not say it failed: in progress for a while, then Degraded.
@pytest.mark.parametrize("fixture", ["certificate-expired", "crossplane-bucket-creating", "prometheus-no-pod-ready",
                                     "crossplane-claim-waiting"])
def test_not_ready_beyond_the_timeout_is_degraded(fixture: str) -> None:
    assert assess(load(fixture), SOON).status == P
    late = assess(load(fixture), LATE)
    assert late.status == D and late.message.endswith("(not ready for 10m1s)"), late


# Explicitly in progress by the project's own word: no timeout turns it into a failure.
@pytest.mark.parametrize("fixture", ["gateway-pending", "gatewayclass-pending", "certificate-issuing",
                                     "certificaterequest-pending", "machine-waiting-for-infrastructure",
                                     "knative-service-deploying", "prometheus-some-pods-not-ready"])
def test_documented_progress_does_not_time_out(fixture: str) -> None:
    assert assess(load(fixture), LATE).status == P


def test_every_fixture_is_in_the_table() -> None:
    assert {p.stem for p in TESTDATA.glob("*.yaml")} == {case[0] for case in CASES}
