"""The queue-proxy: the sidecar in front of each model-server replica (concurrency limit, probes, drain, stats)."""
