"""Scale benchmark of the pipeline's own stages on a synthetic MS MARCO-shaped collection.

Unlike ``bench.scale`` (exact top-k over random vectors), this runs distillrank's stages
themselves — ``distillrank.stages.{mine,score,train,evaluate}.run(cfg)``, each in a fresh Python
process so its peak RSS (``VmHWM``) is that stage's alone — on a seeded synthetic BEIR collection
with tiny random-init BERT models (``scripts/make_tiny_models.py``):

* the collection: ``passages`` passages of 30–60 words drawn from a Zipf vocabulary, each train and
  test query made of words of its one positive passage (so BM25 finds it), ``qrels/{train,test}.tsv``;
  written once into ``--cache`` (outside the repository) and reused while its settings match;
* scale runs, one per entry of ``train_queries``: mine (BM25, ``depth`` candidates a query, every one
  kept: ~``depth`` pairs a query), score (tiny bi-encoder teacher, empty score cache), train
  (``train_steps`` steps of Margin-MSE), and evaluate (the student retrieving over every passage,
  the largest size only: it does not depend on the pairs);
* sharded identity on a smaller collection: score and train with 1, 2 and 4 gloo processes
  (``RANK`` / ``WORLD_SIZE`` as ``torchrun`` sets them), then each trained student evaluated:
  identical ``scores.parquet``, weights within 1e-5, identical metrics. Trained at
  ``IDENTITY_LR``, the largest learning rate of the shipped recipes (``conf/exp``): Adam's step is
  ~lr a parameter whatever the gradient's size, so the last-bit differences of summing gradients
  in another order (a rank's shard, then the all-reduce) grow with lr. A noise-floor row trains
  one process with 2 threads instead of 1: the same arithmetic summed in another order by the
  matrix kernels, nothing distributed.

    python scripts/bench/scale_pipeline.py                  # full sizes (1M passages, 10M pairs)
    python scripts/bench/scale_pipeline.py --mode smoke     # seconds: checks that it runs

Writes ``<out>/scale_pipeline.json`` and ``<out>/scale_pipeline.md`` (``--out`` defaults to
``docs/bench/scale``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, SCRIPTS_DIR, load_average, machine_line  # noqa: E402

GIB = 2**30
RSS_GOAL_GIB = 4.0  # issue 15: peak RSS of score and train at 10M pairs below 4 GB a process
IDENTITY_LR = "2e-4"  # the largest train.lr of conf/exp/*.yaml (tests/bench check it stays so)


@dataclasses.dataclass(frozen=True)
class ScaleSizes:
    """How much one mode does.

    Attributes:
        passages / test_queries: the scale collection; train queries are ``max(train_queries)``.
        train_queries: one scale run per entry (pairs ~= queries x depth).
        depth: BM25 candidates a query (all kept).
        train_steps / train_batch: training steps and examples a step.
        identity_passages / identity_train_queries / identity_test_queries: the sharded-identity
            collection; identity_depth its mining depth; worlds the process counts compared.
        identity_steps: training steps of the identity runs.
    """

    passages: int
    train_queries: tuple[int, ...]
    test_queries: int
    depth: int
    train_steps: int
    train_batch: int
    identity_passages: int
    identity_train_queries: int
    identity_test_queries: int
    identity_depth: int
    identity_steps: int
    worlds: tuple[int, ...]


SIZES = {
    "smoke": ScaleSizes(
        passages=3000,
        train_queries=(20, 40),
        test_queries=20,
        depth=20,
        train_steps=3,
        train_batch=4,
        identity_passages=2000,
        identity_train_queries=20,
        identity_test_queries=10,
        identity_depth=10,
        identity_steps=2,
        worlds=(1, 2),
    ),
    "medium": ScaleSizes(  # the 1M-passage collection at 1/100 and 1/10 of the pairs: what fits the time box
        passages=1_000_000,
        train_queries=(1000, 10_000),
        test_queries=2000,
        depth=100,
        train_steps=200,
        train_batch=32,
        identity_passages=20_000,
        identity_train_queries=300,
        identity_test_queries=200,
        identity_depth=100,
        identity_steps=20,
        worlds=(1, 2, 4),
    ),
    "full": ScaleSizes(  # 100k and 10M pairs: the smaller size shows how memory grows with the pairs
        passages=1_000_000,
        train_queries=(1000, 100_000),
        test_queries=2000,
        depth=100,
        train_steps=200,
        train_batch=32,
        identity_passages=20_000,
        identity_train_queries=1000,
        identity_test_queries=200,
        identity_depth=100,
        identity_steps=20,
        worlds=(1, 2, 4),
    ),
}

VOCAB = 50_000
COMMON = 200  # the most frequent words (each in 1-40% of passages) play stop words: no query has them
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70 syllables, 3 a word: no stop words


# --------------------------------------------------------------------------- the synthetic collection
def _vocabulary(rng: np.random.Generator) -> np.ndarray:
    words: set[str] = set()
    while len(words) < VOCAB:
        picks = rng.integers(0, len(SYLLABLES), size=(VOCAB, 3))
        words.update("".join(SYLLABLES[i] for i in row) for row in picks)
    return np.array(sorted(words)[:VOCAB], dtype=object)[rng.permutation(VOCAB)]


def make_collection(
    folder: Path, passages: int, train_queries: int, test_queries: int, seed: int = 0
) -> Path:
    """Write a seeded synthetic BEIR collection into ``folder`` unless the same one is there already.

    Passages: 30–60 words from a Zipf vocabulary of 50k words. Query ``i`` (train first, then test)
    has one positive, passage ``perm[i]``, and five words: the three rarest distinct words of that
    passage and two others of it, neither among the ``COMMON`` most frequent words (as a real
    query's stop words are removed; a query of those words would score a third of the corpus). Written to temp names and renamed; ``collection.json`` last.
    """
    settings = {
        "passages": passages,
        "train": train_queries,
        "test": test_queries,
        "seed": seed,
        "vocab": VOCAB,
        "v": 2,
    }
    marker = folder / "collection.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return folder
    if train_queries + test_queries > passages:
        raise ValueError(f"{train_queries + test_queries} queries need as many passages, got {passages}")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "qrels").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    p = 1.0 / (np.arange(VOCAB) + 10.0)
    p /= p.sum()
    n_queries = train_queries + test_queries
    positive_of = rng.permutation(passages)[:n_queries]
    query_of = np.full(passages, -1, dtype=np.int64)
    query_of[positive_of] = np.arange(n_queries)
    query_words: list[str] = [""] * n_queries
    block = 100_000
    with open(folder / "corpus.jsonl.tmp", "w", encoding="ascii") as out:
        for start in range(0, passages, block):
            n = min(block, passages - start)
            lengths = rng.integers(30, 61, size=n)
            ids = rng.choice(VOCAB, size=(n, 60), p=p)
            for j in range(n):
                row = ids[j, : lengths[j]]
                out.write(f'{{"_id": "d{start + j}", "title": "", "text": "{" ".join(vocab[row])}"}}\n')
                q = query_of[start + j]
                if q >= 0:
                    distinct = np.unique(row)  # ascending id = descending frequency: the last are the rarest
                    middle = distinct[:-3][distinct[:-3] >= COMMON]  # no stop-word-like word
                    pool = middle if len(middle) >= 2 else distinct[:-3]
                    others = rng.choice(pool, size=min(2, len(pool)), replace=False)
                    query_words[q] = " ".join(vocab[np.concatenate([distinct[-3:], others])])
    (folder / "corpus.jsonl.tmp").rename(folder / "corpus.jsonl")
    with open(folder / "queries.jsonl.tmp", "w", encoding="ascii") as out:
        for q, text in enumerate(query_words):
            out.write(f'{{"_id": "q{q}", "text": "{text}"}}\n')
    (folder / "queries.jsonl.tmp").rename(folder / "queries.jsonl")
    for split, qs in (("train", range(train_queries)), ("test", range(train_queries, n_queries))):
        lines = ["query-id\tcorpus-id\tscore"] + [f"q{q}\td{positive_of[q]}\t1" for q in qs]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    marker.write_text(json.dumps(settings))
    return folder


MODEL_VOCAB = VOCAB + 10_000  # every word of the collection, and pieces; see make_model


def make_model(folder: Path, collection: Path, sample: int = 100_000) -> Path:
    """A tiny random-init bi-encoder (hidden 32, 2 layers, 64 tokens) whose tokenizer is trained on
    the first ``sample`` passages; made once.

    Its WordPiece vocabulary holds the collection's words whole (:data:`MODEL_VOCAB`), as a real
    model's holds most of a language's: with the 1,000 pieces of the test models, trained on 5,000
    passages, each synthetic word split into ~6 pieces (258 tokens a passage of 43 words, where
    MS MARCO's passages have ~75 BERT tokens), and tokenizing was most of the encoding time.
    """
    settings = {
        "vocab": MODEL_VOCAB,
        "sample": sample,
        "collection": json.loads((collection / "collection.json").read_text()),
    }
    marker = folder / "made_with.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return folder
    sys.path.insert(0, str(SCRIPTS_DIR))
    from make_tiny_models import make_tiny_bi_encoder

    texts = []
    with open(collection / "corpus.jsonl", encoding="ascii") as f:
        for line, _ in zip(f, range(sample), strict=False):
            texts.append(json.loads(line)["text"])
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    make_tiny_bi_encoder(tmp, texts, max_seq_length=64, vocab_size=MODEL_VOCAB)
    (tmp / "made_with.json").write_text(json.dumps(settings))
    shutil.rmtree(folder, ignore_errors=True)  # an older model of this benchmark's own cache
    tmp.rename(folder)
    return folder


# --------------------------------------------------------------------------- one stage in a fresh process
def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def stage_child(stage: str, overrides: list[str]) -> dict[str, Any]:
    """Run ``distillrank.stages.<stage>.run(compose(overrides))`` here; its wall and CPU time and this
    process's peak RSS (what the imports and the config took included, reported apart)."""
    import resource

    from distillrank.validation import check_config, compose

    module = importlib.import_module(f"distillrank.stages.{stage}")
    cfg = compose(overrides)
    check_config(cfg)
    base = _status_bytes("VmRSS")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    manifest = module.run(cfg)
    end = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime, 2),
        "peak_rss_gib": round(_status_bytes("VmHWM") / GIB, 3),
        "rss_before_gib": round(base / GIB, 3),
        "counts": getattr(manifest, "counts", None),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_stage(stage: str, overrides: list[str], world: int = 1, timeout_s: float = 3600) -> dict[str, Any]:
    """``stage`` in ``world`` fresh processes (``RANK`` / ``WORLD_SIZE`` as torchrun sets them when
    ``world`` > 1); rank 0's result with every rank's peak RSS under ``peak_rss_gib_ranks``."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from bench.scale_pipeline import stage_child; "
        "print('SCALE-RESULT ' + json.dumps(stage_child(sys.argv[2], json.loads(sys.argv[3]))))"
    )
    base_env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(base_env)
        if world > 1:
            env.update(
                RANK=str(rank),
                WORLD_SIZE=str(world),
                LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, str(SCRIPTS_DIR), stage, json.dumps(overrides)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outputs = [proc.communicate(timeout=timeout_s) for proc in procs]
    failed = [r for r, proc in enumerate(procs) if proc.returncode != 0]
    if failed:  # every failed rank's error: the first to crash is not always rank 0
        tails = "\n".join(
            f"--- rank {r} (rc {procs[r].returncode}):\n{outputs[r][1][-2500:]}" for r in failed
        )
        raise RuntimeError(f"{stage} failed in {len(failed)} of {world} process(es):\n{tails}")
    results = []
    for rank, (out, err) in enumerate(outputs):
        line = next((x for x in out.splitlines() if x.startswith("SCALE-RESULT ")), None)
        if line is None:
            raise RuntimeError(f"{stage} rank {rank}/{world} printed no result: {err[-2500:]}")
        results.append(json.loads(line.removeprefix("SCALE-RESULT ")))
    first = results[0]
    first["peak_rss_gib_ranks"] = [r["peak_rss_gib"] for r in results]
    first["peak_rss_gib"] = max(first["peak_rss_gib_ranks"])
    return first


# --------------------------------------------------------------------------- configs
def overrides(
    workspace: Path,
    experiment: str,
    collection: Path,
    model: Path,
    depth: int,
    steps: int,
    batch: int,
    threads: int | None,
    max_train_queries: int | None = None,
    lr: str = "1e-3",
) -> list[str]:
    """The pipeline config of one run: tiny teacher and student, BM25 mining keeping every candidate."""
    out = [
        f"workspace={workspace}",
        f"experiment={experiment}",
        # written out, not the default auto: every process and world size must run the same backend
        # (a calibration per workspace could choose another one and break the identity comparison)
        "hardware=cpu",
        "data=beir",
        f"data.path={collection}",
        "data.name=synthetic_msmarco",
        f"teacher.model={model}",
        "teacher.batch_size=256",
        "teacher.passage_max_length=64",
        "teacher.query_max_length=16",
        f"student.model={model}",
        "student.num_layers=1",
        "student.dropout=0",
        "student.passage_max_length=64",
        "student.query_max_length=16",
        f"mining.depth={depth}",
        "mining.sampling=all",
        "mining.window_start=1",
        f"mining.window_end={depth}",
        f"train.max_steps={steps}",
        f"train.batch_size={batch}",
        f"train.lr={lr}",
        "train.checkpoint_minutes=0",
        "score.progress=false",
        "evaluate.systems=[student]",
        "evaluate.baseline=null",
        "evaluate.hybrid=false",
        "evaluate.latency_queries=0",
        "evaluate.batch_size=256",
        "hardware.max_forward_texts=256",
        "hardware.max_forward_tokens=null",  # the tiny model's forwards are small at any size
    ]
    if threads:
        out.append(f"hardware.num_threads={threads}")
    if max_train_queries:
        out.append(f"data.max_train_queries={max_train_queries}")
    return out


# --------------------------------------------------------------------------- the two parts
def scale_runs(sizes: ScaleSizes, collection: Path, model: Path, scratch: Path, log) -> list[dict]:
    """One run per ``train_queries`` entry in one workspace (the BM25 index is built by the first and
    reused); the score cache is emptied before each score stage so every pair is scored."""
    workspace = scratch / "scale-runs"
    rows = []
    for queries in sizes.train_queries:
        args = overrides(
            workspace,
            f"q{queries}",
            collection,
            model,
            sizes.depth,
            sizes.train_steps,
            sizes.train_batch,
            None,
            max_train_queries=queries,
        )
        row: dict[str, Any] = {"train_queries": queries, "stages": {}}
        stages = ["mine", "score", "train"] + (["evaluate"] if queries == max(sizes.train_queries) else [])
        for stage in stages:
            if stage == "score":
                shutil.rmtree(workspace / "_cache" / "scores", ignore_errors=True)
            log(f"scale: {queries} queries, {stage} (load {load_average()})")
            result = run_stage(stage, args)
            result["load_average"] = load_average()
            row["stages"][stage] = result
            log(f"scale: {stage} {result['wall_s']} s, peak RSS {result['peak_rss_gib']} GiB")
        row["pairs"] = row["stages"]["mine"]["counts"]["rows"]
        rows.append(row)
    return rows


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for path in sorted(folder.rglob("*.safetensors")):
        out.update({f"{path.relative_to(folder)}:{k}": v for k, v in load_file(path).items()})
    return out


def identity_runs(sizes: ScaleSizes, collection: Path, model: Path, scratch: Path, log) -> dict[str, Any]:
    """Mine once; then per world size its own workspace (mine's output copied in): score and train
    with that many gloo processes, evaluate the student in one process; compare with world 1."""
    def args_of(workspace: Path, threads: int) -> list[str]:
        return overrides(
            workspace,
            "id",
            collection,
            model,
            sizes.identity_depth,
            sizes.identity_steps,
            8,
            threads,
            lr=IDENTITY_LR,
        )

    base = scratch / "identity"
    log("identity: mine")
    mined = run_stage("mine", args_of(base, 1))
    # (label, processes, threads a process): the worlds, then the noise floor of one process
    runs = [(str(w), w, 1) for w in sizes.worlds] + [("1, 2 threads", 1, 2)]
    per_world: dict[str, dict[str, Any]] = {}
    for label, world, threads in runs:
        ws = scratch / f"identity-w{world}-t{threads}"
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(base, ws)
        w_args = args_of(ws, threads)
        result: dict[str, Any] = {"processes": world, "threads": threads}
        for stage, n in (("score", world), ("train", world), ("evaluate", 1)):
            log(f"identity: {stage} with {n} process(es), {threads} thread(s) each")
            result[stage] = run_stage(stage, w_args, world=n)
        exp = ws / "id"
        result["scores"] = (exp / "score" / "scores.parquet").read_bytes()
        result["weights"] = _weights(exp / "train" / "model")
        result["metrics"] = json.loads((exp / "evaluate" / "metrics.json").read_text())
        per_world[label] = result
    one = per_world[str(sizes.worlds[0])]
    import pyarrow as pa
    import pyarrow.parquet as pq

    def table(raw: bytes) -> pa.Table:
        return pq.read_table(pa.BufferReader(raw))

    comparisons = []
    for label, r in per_world.items():
        diffs = [float(np.max(np.abs(r["weights"][k] - one["weights"][k]))) for k in one["weights"]]
        comparisons.append(
            {
                "world": label,
                "processes": r["processes"],
                "threads": r["threads"],
                "scores_identical": table(r["scores"]).equals(table(one["scores"])),
                "max_weight_diff": max(diffs) if diffs else None,
                "weights_within_1e-5": bool(diffs)
                and max(diffs) <= 1e-5
                and set(r["weights"]) == set(one["weights"]),
                "metrics_identical": _metrics_values(r["metrics"]) == _metrics_values(one["metrics"]),
                "score_s": r["score"]["wall_s"],
                "train_s": r["train"]["wall_s"],
                "score_peak_rss_gib_ranks": r["score"]["peak_rss_gib_ranks"],
                "train_peak_rss_gib_ranks": r["train"]["peak_rss_gib_ranks"],
            }
        )
    return {
        "pairs": mined["counts"]["rows"],
        "lr": IDENTITY_LR,
        "steps": sizes.identity_steps,
        "metrics": _metrics_values(one["metrics"]),
        "by_world": comparisons,
    }


def _metrics_values(metrics: Any) -> Any:
    """The numbers of ``metrics.json`` (timings left out: they differ run to run)."""
    if isinstance(metrics, dict):
        return {
            k: _metrics_values(v)
            for k, v in metrics.items()
            if not any(t in k for t in ("time", "seconds", "_s", "latency", "per_s"))
        }
    if isinstance(metrics, list):
        return [_metrics_values(v) for v in metrics]
    return metrics


# --------------------------------------------------------------------------- report
STAGES = ("mine", "score", "train", "evaluate")


def markdown(result: dict[str, Any]) -> str:
    """The per-stage table (time, CPU time, peak RSS for every size), the identity table and the goal."""
    lines = [
        machine_line(result["machine"], result["load_average"][1]),
        "",
        f"Synthetic collection: {result['settings']['passages']:,} passages, "
        f"{max(result['settings']['train_queries']):,} train queries, {result['settings']['test_queries']:,} test queries; "
        "tiny bi-encoder teacher and student.",
        "",
        "| train queries | pairs | stage | wall s | CPU s | peak RSS GiB | RSS before stage GiB |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in result["scale"]:
        for stage in STAGES:
            s = row["stages"].get(stage)
            if s is None:
                continue
            lines.append(
                f"| {row['train_queries']:,} | {row['pairs']:,} | {stage} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | "
                f"{s['peak_rss_gib']:.2f} | {s['rss_before_gib']:.2f} |"
            )
    ident = result["identity"]
    if "error" in ident:
        lines += [
            "",
            "Sharded identity: **failed** (`identity.error` in the JSON):",
            "",
            "```",
            ident["error"][-800:],
            "```",
        ]
        ident = {"pairs": 0, "by_world": []}
    lines += [
        "",
        f"Sharded identity ({ident['pairs']:,} pairs; score and train with N gloo processes, evaluate in one; "
        f"{ident.get('steps', '?')} steps at lr {ident.get('lr', '1e-3')}, the largest of the shipped recipes; "
        "the last row is the noise floor: one process with 2 threads instead of 1):",
        "",
        "| processes | scores.parquet identical | max weight diff | within 1e-5 | metrics identical | score s | train s | score peak RSS GiB (ranks) | train peak RSS GiB (ranks) |",
        "|---:|---|---:|---|---|---:|---:|---|---|",
    ]
    for c in ident["by_world"]:
        lines.append(
            f"| {c['world']} | {c['scores_identical']} | {c['max_weight_diff']:.2e} | {c['weights_within_1e-5']} | "
            f"{c['metrics_identical']} | {c['score_s']:.1f} | {c['train_s']:.1f} | "
            f"{', '.join(f'{x:.2f}' for x in c['score_peak_rss_gib_ranks'])} | {', '.join(f'{x:.2f}' for x in c['train_peak_rss_gib_ranks'])} |"
        )
    g = result["goal"]
    lines += [
        "",
        f"Goal: peak RSS of score and train at the largest size below {RSS_GOAL_GIB:g} GiB: score {g['score_peak_rss_gib']:.2f}, "
        f"train {g['train_peak_rss_gib']:.2f} → **{'met' if g['rss_met'] else 'not met'}**; "
        f"whole benchmark {result['seconds']:.0f} s (goal 1200 s) → **{'met' if g['time_met'] else 'not met'}**; "
        f"of it {result.get('inputs_seconds', 0):.0f} s writing or checking the synthetic collections and model "
        f"(written once into `--cache`, then reused). "
        f"Load average at start {result['load_average'][0]}, at end {result['load_average'][1]}.",
    ]
    return "\n".join(lines) + "\n"


def run(mode: str, out: Path, cache: Path, scratch: Path, log=print) -> dict[str, Any]:
    from bench.common import machine

    sizes = SIZES[mode]
    started = time.perf_counter()
    host = machine()  # the CPU, its ISA flags, the load average at the start
    load_start = host["load_average"]
    log(f"scale: collection ({sizes.passages} passages) in {cache}")
    collection = make_collection(
        cache / f"msmarco-like-{sizes.passages}", sizes.passages, max(sizes.train_queries), sizes.test_queries
    )
    identity_collection = make_collection(
        cache / f"identity-{sizes.identity_passages}",
        sizes.identity_passages,
        sizes.identity_train_queries,
        sizes.identity_test_queries,
        seed=1,
    )
    model = make_model(cache / "tiny-bi-encoder", collection)
    inputs_s = time.perf_counter() - started  # the synthetic inputs: written once, then read from --cache
    scale = scale_runs(sizes, collection, model, scratch, log)
    out.mkdir(parents=True, exist_ok=True)
    from distillrank.workspace import atomic_write_json

    atomic_write_json(
        out / "scale_pipeline.partial.json", {"mode": mode, "machine": host, "scale": scale}
    )  # kept if identity fails
    try:
        identity = identity_runs(sizes, identity_collection, model, scratch, log)
    except RuntimeError as err:  # reported, not hidden: the scale rows above stand on their own
        log(f"identity: failed: {err}")
        identity = {"error": str(err)[-3000:], "pairs": None, "by_world": []}
    largest = scale[-1]["stages"]
    result = {
        "benchmark": "scale_pipeline",
        "mode": mode,
        "settings": dataclasses.asdict(sizes),
        "machine": host,
        "scale": scale,
        "identity": identity,
        "load_average": [load_start, load_average()],
        "seconds": time.perf_counter() - started,
        "inputs_seconds": round(inputs_s, 1),
    }
    result["goal"] = {
        "score_peak_rss_gib": largest["score"]["peak_rss_gib"],
        "train_peak_rss_gib": largest["train"]["peak_rss_gib"],
        "rss_met": max(largest["score"]["peak_rss_gib"], largest["train"]["peak_rss_gib"]) < RSS_GOAL_GIB,
        "time_met": result["seconds"] < 1200,
    }
    from distillrank.workspace import atomic_path, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "scale_pipeline.json", result)
    with atomic_path(out / "scale_pipeline.md") as tmp:
        Path(tmp).write_text(markdown(result), encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(SIZES), default="full")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench" / "scale")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "distillrank-scale-cache",
        help="synthetic collections and the tiny model, kept between runs (not in the repository)",
    )
    args = parser.parse_args(argv)
    for key, value in (
        ("TOKENIZERS_PARALLELISM", "false"),
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
    ):
        os.environ.setdefault(key, value)
    import tempfile

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="distillrank-scale-") as scratch:
        result = run(args.mode, args.out, args.cache, Path(scratch), log)
    log(f"scale: done in {result['seconds']:.0f} s; {args.out / 'scale_pipeline.md'}")
    return result


if __name__ == "__main__":
    main()
