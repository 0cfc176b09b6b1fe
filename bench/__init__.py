"""Benchmarks of issue 6: Gantry against the floor (`kubectl apply --server-side`) and against Flux,
side by side on the local control plane. Run with `make bench` (see bench/README.md)."""
