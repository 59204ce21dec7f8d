"""spanprobe's benchmark harness: overhead against in-process OpenTelemetry, and the
agent's own throughput. Run `python -m bench --help` from the repository root; see
bench/README.md for what is measured and how."""
