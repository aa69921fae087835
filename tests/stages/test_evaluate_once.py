"""The evaluate stage does each piece of work once: one BM25 index and one BM25 run of the test
queries shared by the baseline, the re-rankers' first stage and the hybrid systems; a saved
student's corpus embeddings cached (encoded once per model and settings); the metrics as before."""

from __future__ import annotations

import json

from distillrank import pipeline
from distillrank.builders import components, evaluation
from distillrank.evaluation import dense
from distillrank.evaluation.dense import dense_retrieve
from distillrank.evaluation.metrics import compute_metrics
from distillrank.mining.bm25 import BM25Index
from distillrank.runtime import Runtime
from distillrank.stages import evaluate
from distillrank.students.factory import load_student
from distillrank.validation import compose
from distillrank.workspace import stage_dir


def test_bm25_runs_once_and_the_student_corpus_is_encoded_once(tiny_args, monkeypatch, tmp_path) -> None:
    args = [a for a in tiny_args if not a.startswith("teacher.model=")]  # a BM25 teacher: re-ranks BM25's top
    cfg = compose(
        [*args, "teacher=bm25", "evaluate.systems=[bm25,teacher,student]", "evaluate.latency_queries=0"]
    )
    assert evaluation.reranks(cfg, "teacher") and not evaluation.reranks(cfg, "student")
    assert int(cfg.evaluate.top_k) == int(cfg.evaluate.rerank_depth)
    pipeline.run(cfg)
    folder = stage_dir(cfg, "evaluate")
    first = json.loads((folder / "metrics.json").read_text())
    student_run = (folder / "student" / "run.trec").read_text()

    # the student's run as the scratch index made it before its embeddings were cached
    coll = components.collection(cfg)
    target = evaluation.targets(cfg)[0]
    encoder = load_student(stage_dir(cfg, "train") / "model").encoder(Runtime())
    ev = cfg.evaluate
    run, _, _ = dense_retrieve(
        encoder, coll, target.queries, ev.top_k, ev.batch_size, ev.chunk_size, Runtime(), tmp_path
    )
    scratch_metrics, _ = compute_metrics(target.qrels, run, list(ev.measures))
    assert first["student"]["metrics"] == scratch_metrics

    loads: list[str] = []
    searches: list[tuple[tuple[str, ...], int]] = []
    encoded: list[int] = []
    original_load, original_search = BM25Index.build_or_load.__func__, BM25Index.search
    original_encode = dense._encode_chunks

    def build_or_load(cls, collection, *args, **kwargs):
        loads.append(collection.name)
        return original_load(cls, collection, *args, **kwargs)

    def search(self, queries, k, *args, **kwargs):
        if len(queries) > 1:  # a whole query set (single queries are latency probes)
            searches.append((tuple(queries), int(k)))
        return original_search(self, queries, k, *args, **kwargs)

    def encode_chunks(encoder, collection, matrix, partial, chunks, *args, **kwargs):
        encoded.append(len(chunks))
        return original_encode(encoder, collection, matrix, partial, chunks, *args, **kwargs)

    monkeypatch.setattr(BM25Index, "build_or_load", classmethod(build_or_load))
    monkeypatch.setattr(BM25Index, "search", search)
    monkeypatch.setattr(dense, "_encode_chunks", encode_chunks)
    monkeypatch.setattr(
        dense, "encode_corpus", lambda *a, **k: (_ for _ in ()).throw(AssertionError("scratch"))
    )
    cfg.force = True
    evaluate.run(cfg)

    again = json.loads((folder / "metrics.json").read_text())
    for name in ("bm25", "teacher", "student", "hybrid", "hybrid_rrf"):
        assert again[name]["metrics"] == first[name]["metrics"], name
    assert (folder / "student" / "run.trec").read_text() == student_run
    assert loads == ["tiny"]  # one index load for the evaluation
    test_texts = tuple(t for _, t in target.queries)
    assert searches.count((test_texts, int(ev.top_k))) == 1  # bm25 and the teacher's candidates
    assert len(searches) == len(set(searches))  # no query set searched twice at one depth
    assert encoded == [] or max(encoded) == 0  # the student's corpus came from the cache
