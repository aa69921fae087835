"""distillrank: distil a strong, slow ranker (the teacher) into a small, fast one (the student)."""

import os

# Arrow's default allocator (mimalloc) keeps the pages a batch freed for a while, for reuse by Arrow
# alone. The stages read millions of rows in batches and then work on numpy arrays, which cannot
# reuse them, so a process's resident memory grew with the rows read: ~2x the peak of the score
# stage's final pass at 8M pairs (scripts/bench/score_memory.py; docs/SCALE.md "Memory per pair").
# Returning freed pages at once costs no time there. Read by mimalloc when pyarrow is first
# imported: set here, before any module of ours imports it; a value the user set is kept.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")

__version__ = "0.1.0"
