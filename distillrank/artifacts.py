"""What the stages write, by name: stage folders and their output files (layer 0).

Every module that names another stage's artifacts (a stage reading its upstream outputs, the keys,
the pipeline, the report) takes the names from here, so none has to import a stage to find them.
A stage's folder is ``<workspace>/<experiment>/<stage>/`` (:func:`distillrank.workspace.stage_dir`).
"""

from __future__ import annotations

# the stages, by folder name (their order is the pipeline's: distillrank/pipeline.py)
QUERIES = "queries"
MINE = "mine"
SCORE = "score"
TRAIN = "train"
EVALUATE = "evaluate"

# queries/: the synthetic training queries and the positives they rewrote
SYNTHETIC_QUERIES = "queries.parquet"  # qid, text, source, positive, kept, positive_rank
REWRITTEN_PASSAGES = "passages.parquet"  # docid, text

# mine/
CANDIDATES = "candidates.parquet"  # qid, docid, label, rank, first_stage_score

# score/
SCORES = "scores.parquet"  # the candidates plus teacher (and teacher_raw, dropped)

# train/
MODEL = "model"  # the exported student, with its model card README.md
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
DEV_QUERIES = "dev_queries.txt"  # the training queries set aside by train.dev_queries, one qid a line
TENSORBOARD = "tensorboard"
MODEL_CARD = "README.md"  # inside MODEL; evaluate adds its section

# evaluate/: one folder per system (per extra collection: evaluate/<collection>/<system>/)
METRICS = "metrics.json"
RESULTS = "results.md"
RUN = "run.trec"
SCRATCH = ".scratch"  # corpus matrices of the systems being evaluated, deleted after each

# folders of a workspace that are not experiments (the shared cache, Hydra's logs and multirun
# folders, the report): an experiment may not take their names, and the report skips them
WORKSPACE_FOLDERS = frozenset({"_cache", "logs", "report", "multirun", "outputs"})
