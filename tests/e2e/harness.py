"""Test apps for the end-to-end tests: what a team keeps under k8s/ in its repo."""

from __future__ import annotations

import yaml


def web_app_files(*, replicas: int = 1, image: str = "nginx:1.27", host: str = "shop.example.test") -> dict[str, str]:
    """A Deployment with a readiness probe, its Service, a ConfigMap and an Ingress with a host,
    listed by a kustomization, plus the Dockerfile every app repo has at its root."""
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                     "name": "web", "image": image, "ports": [{"containerPort": 80}],
                     "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
                 }]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 80}]}}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"},
              "data": {"greeting": "hello"}}
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
               "spec": {"rules": [{"host": host, "http": {"paths": [{
                   "path": "/", "pathType": "Prefix",
                   "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}
    return {
        "k8s/kustomization.yaml": yaml.safe_dump({"resources": ["deployment.yaml", "service.yaml", "config.yaml", "ingress.yaml"]}),
        "k8s/deployment.yaml": yaml.safe_dump(deployment),
        "k8s/service.yaml": yaml.safe_dump(service),
        "k8s/config.yaml": yaml.safe_dump(config),
        "k8s/ingress.yaml": yaml.safe_dump(ingress),
        "Dockerfile": "FROM nginx:1.27\n",
    }


