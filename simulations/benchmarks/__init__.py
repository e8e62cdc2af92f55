"""Benchmarks behind docs/benchmarks.md and docs/deployment.md (speed, memory, scale, deployment, device start, SecAgg+ profile); each prints its figures."""
