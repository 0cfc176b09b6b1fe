"""Gantry: a GitOps controller that keeps a Kubernetes cluster equal to git.

The flow, one module per stage: source (git) → render (kustomize) → diff (SSA dry-run) →
sync (SSA apply, prune) → health → status; operator.py wires them into kopf handlers.
"""
