"""Benchmark 2: student training throughput (examples/s; one example = 1 query + 1 positive + 7 negatives).

distillrank: :func:`distillrank.training.loop.train_student` with
:class:`distillrank.losses.margin_mse.MarginMSELoss` (the train stage's loop, called directly).
sentence-transformers: ``SentenceTransformerTrainer`` with ``MarginMSELoss`` in its multi-negative
form: columns (query, positive, negative_1..7) and a label of the 8 teacher scores
``[t(q, p), t(q, n_1), …, t(q, n_7)]``; the loss is the mean squared error of the 7 margins, the
same objective as ours. Same student folder (the first 2 MiniLM layers), AdamW, learning rate,
warm-up, linear decay, gradient clipping, batch size, fp32, same examples.

Max lengths: distillrank truncates queries at ``query_max_length`` and passages at
``passage_max_length``; sentence-transformers has one ``max_seq_length`` for every column, set to
``passage_max_length``. SciFact queries are far shorter than ``query_max_length``, so neither tool
truncates a query and the work is the same.

A second pair of arms trains both tools with every dropout of the student off (distillrank's
``student.dropout=0``; sentence-transformers' ``config_kwargs`` setting the model's dropout keys
to 0): a recipe choice, not the same work as the default arms. It is reported twice, against
sentence-transformers with its default dropout (what a user of each tool's defaults gets) and
against sentence-transformers with dropout off as well (the same work again).

``margin_mse_auto`` trains as the train stage does under ``hardware=auto`` (the default): the
student's training calibration runs first (:func:`bench.auto.calibrate_student`: fp32 against
bf16 autocast, the first steps' losses within 1e-2 of fp32's), then the loop trains in the chosen
precision against the same sentence-transformers runs (fp32, its defaults). It is the headline of
the training goal; its fidelity is the calibration's loss difference (this benchmark measures no
nDCG: the quality of a bf16-trained student is measured by ``bench/st_quality.py``).

Teacher scores are the BM25 scores of the candidates (throughput does not depend on their values);
dev nDCG@10 is not measured by this benchmark.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from bench import auto
from bench.common import Context, alternate, comparison, distillrank_runtime, load_average, timed

GOAL = 1.3
NEGATIVES = 7
# the dropout keys of the BERT config of the student (what student.dropout=0 sets on our side)
ST_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def _pools(ctx: Context, n_examples: int):
    """One example per training query: its first judged positive and 7 BM25 negatives, BM25 scores as teacher."""
    from distillrank.mining.bm25 import BM25Index
    from distillrank.training.batching import QueryPool

    coll = ctx.collection
    queries = coll.split_queries("train")
    index = BM25Index.build_or_load(coll, ctx.cache, progress=False)
    rows, scores = index.search([t for _, t in queries], NEGATIVES + 8, progress=False)
    doc_ids = coll.doc_ids()
    pools, query_text = [], {}
    for (qid, text), ranked, ranked_scores in zip(queries, rows, scores, strict=True):
        positives = [d for d, rel in coll.qrels["train"][qid].items() if rel > 0]
        negs = [(doc_ids[r], float(sc)) for r, sc in zip(ranked, ranked_scores, strict=True) if r >= 0 and doc_ids[r] not in positives]
        if not positives or len(negs) < NEGATIVES:
            continue
        top = float(ranked_scores[0]) + 1.0
        pools.append(QueryPool(qid, [(positives[0], top)], negs[:NEGATIVES]))
        query_text[qid] = text
        if len(pools) == n_examples:
            break
    return pools, query_text


def run(ctx: Context) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss as STMarginMSE
    from transformers.trainer_callback import PrinterCallback

    from distillrank.losses.margin_mse import MarginMSELoss
    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.models.layers import set_dropout
    from distillrank.students.factory import as_student
    from distillrank.training import loop

    # the loop's entry point (train_student; train_bi_encoder before students other than bi-encoders)
    train = getattr(loop, "train_student", None) or loop.train_bi_encoder

    s = ctx.sizes
    n_examples = s.train_batch * s.train_steps
    pools, query_text = _pools(ctx, n_examples)
    n_examples = len(pools)
    steps = -(-n_examples // s.train_batch)
    coll = ctx.collection

    def passage_text(docids: list[str]) -> list[str]:
        return coll.passage_texts([coll.doc_row(d) for d in docids])

    lr, warmup, decay = 2e-5, 0.1, 0.01
    cfg = OmegaConf.create(
        {
            "epochs": 1, "max_steps": steps, "batch_size": s.train_batch, "negatives_per_example": NEGATIVES,
            "grad_accum_steps": 1, "lr": lr, "weight_decay": decay, "warmup_ratio": warmup,
            "scheduler": "linear", "max_grad_norm": 1.0, "log_every": 10**9, "checkpoint_every": 0,
        }
    )
    columns: dict[str, list] = {"query": [], "positive": []} | {f"negative_{i + 1}": [] for i in range(NEGATIVES)}
    columns["label"] = []
    for pool in pools:
        docs = [pool.positives[0]] + pool.negatives
        texts = passage_text([d for d, _ in docs])
        columns["query"].append(query_text[pool.qid])
        columns["positive"].append(texts[0])
        for i in range(NEGATIVES):
            columns[f"negative_{i + 1}"].append(texts[i + 1])
        columns["label"].append([sc for _, sc in docs])
    dataset = Dataset.from_dict(columns)
    scratch = Path(tempfile.mkdtemp(dir=ctx.scratch, prefix="train-"))
    runtime = distillrank_runtime("cpu")

    warm_cfg = OmegaConf.merge(cfg, {"max_steps": 1})

    def load_student() -> BiEncoder:
        return BiEncoder.load(ctx.student, query_max_length=s.query_max_length, passage_max_length=s.passage_max_length)

    def ours(run_cfg=cfg, run_pools=pools, dropout: float | None = None, run_runtime=runtime) -> float:
        student = load_student()
        if dropout is not None:  # what student.dropout does in BiEncoder.from_backbone
            set_dropout(student.backbone, dropout)
        t = timed(
            lambda: train(
                student, MarginMSELoss(), run_pools, query_text, passage_text, run_cfg, run_runtime, 0,
                scratch / "train_log.jsonl",
            )
        )
        return len(run_pools) / t

    def theirs(max_steps: int = steps, data=dataset, dropout: float | None = None) -> float:
        config = {} if dropout is None else {k: dropout for k in ST_DROPOUT_KEYS}
        model = SentenceTransformer(str(ctx.student), device="cpu", config_kwargs=config)
        model.max_seq_length = s.passage_max_length
        args = SentenceTransformerTrainingArguments(
            output_dir=str(scratch / "st"), per_device_train_batch_size=s.train_batch, max_steps=max_steps,
            learning_rate=lr, warmup_steps=warmup, weight_decay=decay, lr_scheduler_type="linear",
            max_grad_norm=1.0, logging_steps=10**9, save_strategy="no", report_to="none", use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, seed=0,
        )
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=STMarginMSE(model))
        trainer.remove_callback(PrinterCallback)  # its end-of-training print; ours prints nothing either
        t = timed(trainer.train)
        return len(data) / t

    # the student's calibration, as the train stage runs it under hardware=auto (the default)
    choice = auto.calibrate_student(ctx, lambda: as_student(load_student()), lr)
    auto_runtime = dataclasses.replace(runtime, precision=choice["precision"])

    # warm-up: one optimizer step of each tool on one batch (imports, allocator, thread pools)
    # (the dropout-off arms run the same code: no warm-up of their own)
    warm = {
        "distillrank": lambda: ours(warm_cfg, pools[: s.train_batch]),
        "sentence_transformers": lambda: theirs(1, dataset.select(range(min(s.train_batch, len(dataset))))),
        "distillrank_dropout0": lambda: None,
        "sentence_transformers_dropout0": lambda: None,
        auto.TOOL: lambda: ours(warm_cfg, pools[: s.train_batch], run_runtime=auto_runtime),
    }
    arms = {
        "distillrank": ours,
        "sentence_transformers": theirs,
        "distillrank_dropout0": lambda: ours(dropout=0.0),
        "sentence_transformers_dropout0": lambda: theirs(dropout=0.0),
        auto.TOOL: lambda: ours(run_runtime=auto_runtime),
    }
    load_before = load_average()
    rates = alternate(arms, s.repeats, warmup=warm)
    load_after = load_average()
    return {
        "benchmark": "training",
        "settings": {
            "student": str(ctx.student),
            "examples_per_run": n_examples,
            "steps_per_run": steps,
            "batch_size": s.train_batch,
            "negatives_per_example": NEGATIVES,
            "query_max_length": s.query_max_length,
            "passage_max_length": s.passage_max_length,
            "lr": lr,
            "precision": "fp32",
            "repeats": s.repeats,
            "st_dropout_keys": list(ST_DROPOUT_KEYS),
            "hardware_auto": choice,
        },
        "cases": [
            auto.auto_case(
                "margin_mse_auto", "examples/s", rates[auto.TOOL], rates["sentence_transformers"], GOAL, choice,
                {
                    "loss_rdiff_vs_fp32": auto.chosen(choice).get("loss_rdiff"),
                    "ndcg_at_10": None,
                    "quality_met": None,  # not measured here (bench/st_quality.py): the calibration's loss tolerance decided
                },
                "training", load_average=[load_before, load_after],
            ),
            comparison(
                "margin_mse_1q_1p_7n", "examples/s", rates["distillrank"], rates["sentence_transformers"], GOAL,
                load_average=[load_before, load_after],
            ),
            comparison(
                "margin_mse_dropout0_vs_st_default", "examples/s", rates["distillrank_dropout0"],
                rates["sentence_transformers"], GOAL, load_average=[load_before, load_after],
                precision="fp32; dropout off vs ST's default",
                note="recipe, not the same work: distillrank with student.dropout=0 against ST's default dropout",
            ),
            comparison(
                "margin_mse_dropout0_vs_st_dropout0", "examples/s", rates["distillrank_dropout0"],
                rates["sentence_transformers_dropout0"], GOAL, load_average=[load_before, load_after],
                precision="fp32; dropout off in both", note="both tools with dropout off",
            ),
        ],
        "dev_ndcg_at_10": None,
        "notes": [
            "timed: one whole training call each (optimizer set-up, data collation and tokenisation included); "
            "model loading is outside the timed region",
            "dev nDCG@10 not measured (teacher scores are BM25 scores; the benchmark measures throughput)",
            f"mean distinct passages per example: {np.mean([1 + len(p.negatives) for p in pools]):.1f}",
        ],
    }
