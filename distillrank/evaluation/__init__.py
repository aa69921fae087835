"""Retrieval, metrics (ir_measures), TREC run files and result tables, and the evaluation systems:
``systems`` (run and cache each system on a collection), ``hybrid_systems`` (the student fused with
BM25), ``summary`` (significance, the macro mean, results.md and metrics.json), ``targets``."""
