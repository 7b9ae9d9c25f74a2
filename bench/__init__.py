"""Throughput, latency and resource benchmark of the worker on the embedded stack: `python -m bench.run`."""
