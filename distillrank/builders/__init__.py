"""Layer 2, beside the stages: what a config builds, and what several stages share.

``components``: the collection, teacher, student, loss, generator, BM25 index and first stage of a
config (memoised per config within a process). ``evaluation``: the systems and collections the
evaluate stage covers. ``systems``: those systems built, for :mod:`distillrank.evaluation.systems`.
``training``: the training queries of a config (a judged split, or the ``queries`` stage's).
Stage keys are in :mod:`distillrank.keys`. No module here imports a stage.
"""
