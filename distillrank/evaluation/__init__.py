"""Retrieval, metrics (ir_measures), TREC run files and result tables."""
