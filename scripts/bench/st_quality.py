"""Train sentence-transformers on the examples a distillrank experiment trained on, for a quality
comparison of the two trainers (benchmark 2's "reaching the same dev nDCG@10").

The experiment's scores (its ``score`` stage must have run) give the training pools; the examples of
each epoch are drawn exactly as :func:`distillrank.training.loop.train_student` draws them (same
seed, same :func:`~distillrank.training.batching.epoch_examples`), so both tools see the same
(query, positive, negatives) with the same teacher scores. sentence-transformers then trains the same
student initialisation (``cfg.student``, saved as a sentence-transformers folder) with
``SentenceTransformerTrainer`` + ``MarginMSELoss`` and the experiment's optimiser settings (AdamW,
learning rate, weight decay, warm-up ratio, linear decay, clipping, batch size, steps); only the
order of the examples within an epoch is the trainer's own. The trained model is saved to ``--out``;
evaluate it beside distillrank's student with ``evaluate.checkpoints``::

    python scripts/bench/st_quality.py --out runs/margin_mse_epoch/st_model -- \\
        +exp=margin_mse experiment=margin_mse_epoch
    distillrank evaluate +exp=margin_mse experiment=margin_mse_epoch \\
        'evaluate.systems=[student]' +evaluate.checkpoints.st=runs/margin_mse_epoch/st_model \\
        evaluate.baseline=st 'evaluate.collections=[vaswani]'

Only the bi-encoder student with a Margin-MSE loss is supported (the loss sentence-transformers
shares with us); the script stops with an error for anything else.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the trained sentence-transformers model")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the hardware config's)")
    parser.add_argument("overrides", nargs="*", help="distillrank config overrides of the experiment (after --)")
    return parser.parse_args(argv)


def st_columns(cfg, pools, query_text, passage_text) -> dict[str, list]:
    """The examples of every epoch of the distillrank run, as sentence-transformers columns:
    query, positive, negative_1..n and the label (the teacher's margins, positive minus each negative)."""
    import numpy as np

    from distillrank.training.batching import epoch_examples

    n = int(cfg.train.negatives_per_example)
    rng = np.random.default_rng(cfg.seed)  # train_student's epoch rng: same seed, same draws
    per_epoch = len(epoch_examples(pools, n, np.random.default_rng(0)))
    total = per_epoch * int(cfg.train.epochs)
    if cfg.train.get("max_steps"):
        total = min(total, int(cfg.train.max_steps) * int(cfg.train.batch_size) * int(cfg.train.grad_accum_steps))
    negatives = ["negative"] if n == 1 else [f"negative_{i + 1}" for i in range(n)]
    columns: dict[str, list] = {"query": [], "positive": [], **{k: [] for k in negatives}, "label": []}
    while len(columns["query"]) < total:
        for ex in epoch_examples(pools, n, rng):
            texts = passage_text(list(ex.docids))
            columns["query"].append(query_text[ex.qid])
            columns["positive"].append(texts[0])
            for key, text in zip(negatives, texts[1:], strict=True):
                columns[key].append(text)
            scores = [float(s) for s in ex.teacher]
            margins = [scores[0] - s for s in scores[1:]]
            columns["label"].append(margins[0] if n == 1 else margins)
            if len(columns["query"]) == total:
                break
    return columns


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    import torch
    from datasets import Dataset
    from hydra.utils import get_class, instantiate
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss

    from bench.common import machine
    from distillrank.builders.training import passages, train_queries
    from distillrank.errors import ConfigError
    from distillrank.losses.margin_mse import MarginMSELoss as MarginMSE
    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.runtime import apply_threads
    from distillrank.stages import score
    from distillrank.training.batching import query_pools
    from distillrank.validation import compose
    from distillrank.workspace import atomic_dir, require_stage

    cfg = compose(list(args.overrides))
    target = str(cfg.loss.get("_target_", ""))
    if not (target.startswith("distillrank.") and issubclass(get_class(target), MarginMSE)):
        raise ConfigError(f"st_quality compares Margin-MSE trainers; the experiment's loss is {target}")
    if int(cfg.train.grad_accum_steps) != 1:
        raise ConfigError("st_quality needs train.grad_accum_steps=1")
    apply_threads(args.threads or cfg.hardware.num_threads)
    _, score_dir = require_stage(cfg, score.STAGE, score.stage_key(cfg))
    pools, _ = query_pools(score_dir / score.OUTPUT)
    query_text = dict(train_queries(cfg))
    columns = st_columns(cfg, pools, query_text, passages(cfg))
    dataset = Dataset.from_dict(columns)
    student = instantiate(cfg.student)
    if not isinstance(student, BiEncoder):
        raise ConfigError("st_quality trains bi-encoder students only")
    steps = math.ceil(len(dataset) / int(cfg.train.batch_size))
    t = cfg.train
    with tempfile.TemporaryDirectory() as tmp:
        init = student.save(Path(tmp) / "init")  # the same initialisation, as a sentence-transformers folder
        model = SentenceTransformer(str(init), device="cpu")
        model.max_seq_length = int(cfg.student.passage_max_length)
        training = SentenceTransformerTrainingArguments(
            output_dir=str(Path(tmp) / "trainer"), per_device_train_batch_size=int(t.batch_size), max_steps=steps,
            learning_rate=float(t.lr), warmup_steps=float(t.warmup_ratio), weight_decay=float(t.weight_decay),
            lr_scheduler_type=str(t.scheduler), max_grad_norm=float(t.max_grad_norm), logging_steps=10,
            save_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0, seed=int(cfg.seed),
        )
        trainer = SentenceTransformerTrainer(model=model, args=training, train_dataset=dataset, loss=MarginMSELoss(model))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        with atomic_dir(args.out) as out:
            model.save(str(out))
            (out / "st_quality.json").write_text(
                json.dumps(
                    {
                        "overrides": list(args.overrides),
                        "examples": len(dataset),
                        "steps": steps,
                        "seconds": seconds,
                        "examples_per_s": len(dataset) / seconds,
                        "torch_threads": torch.get_num_threads(),
                        "machine": machine(),
                    },
                    indent=2,
                )
                + "\n",
                encoding="utf-8",
            )
    print(f"st_quality: {len(dataset)} examples, {steps} steps in {seconds:.0f} s; model in {args.out}")
    return args.out


if __name__ == "__main__":
    main()
