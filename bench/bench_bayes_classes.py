"""Issue #16's PyMC model classes (zero-code artifacts): 1-row draws latency vs warm pm.sample_posterior_predictive,
and the exact-quantile formulations vs np.quantile — its own suite so `make bench` runs it (the tables are built in
bench_bayes, beside the examples' tables they share helpers with)."""

from __future__ import annotations


def run() -> list[dict]:
    from bench.bench_bayes import class_tables

    return class_tables()
