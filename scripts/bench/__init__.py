"""Side-by-side benchmarks of distillrank against sentence-transformers (``scripts/bench/run.py``).

Each benchmark module has one job and one entry point ``run(ctx) -> dict`` (see
:mod:`bench.common` for the context and the result layout); ``run.py`` runs them and writes JSON.
"""
