"""The benchmark suite: every bench/bench_*.py contributes tables; `python -m bench` writes results."""
