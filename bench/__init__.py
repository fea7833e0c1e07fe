"""Benchmarks of xdp-ip-counter: see bench/README.md."""
