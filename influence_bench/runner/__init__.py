"""Running entries against a task, by job: ``evaluation`` (one entry: fit, scores, tuning, LDS,
metrics, cost), ``isolation`` (entries and the GGN reference in processes of their own),
``comparison`` (paired bootstrap and the chain across entries) and ``persistence`` (the results
directory). The entry point is ``influence_bench.api.run``."""
