"""Stage 3, train: the student learns the teacher's scores on the mined candidates.

Output ``model/``: the student in sentence-transformers format (``SentenceTransformer(path)`` loads
it) with a model card, and ``train_log.jsonl`` (step, loss, lr, gradient norm).

With ``train.checkpoint_every > 0``, resumable checkpoints go to ``checkpoints/`` in the stage
folder; a killed run leaves them (but no model and no manifest) and the rerun resumes from the last
one with identical results. They are deleted once the model is saved, before the manifest is written.
"""

from __future__ import annotations

import logging
import shutil
import time

import pyarrow.parquet as pq
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig

from distillrank.errors import ConfigError
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import hardware, seed_everything
from distillrank.stages import context, score
from distillrank.training.batching import query_pools
from distillrank.training.loop import train_bi_encoder
from distillrank.validation import check_targets
from distillrank.workspace import (
    Manifest,
    current_manifest,
    fingerprint,
    require_stage,
    stage_dir,
    to_plain,
)

log = logging.getLogger(__name__)

STAGE = "train"
MODEL = "model"
LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"


def stage_key(cfg: DictConfig) -> str:
    """The scores, the student, the loss, the optimisation settings, the precision and the seed.

    ``train.checkpoint_every`` is left out: checkpointing does not change the results.
    """
    train = dict(to_plain(cfg.train))
    train.pop("checkpoint_every", None)
    return fingerprint(
        {
            "stage": STAGE,
            "score": score.stage_key(cfg),
            "student": to_plain(cfg.student),
            "loss": to_plain(cfg.loss),
            "train": train,
            "precision": cfg.hardware.precision,
            "seed": cfg.seed,
        }
    )


def model_card(cfg: DictConfig, counts: dict) -> str:
    """A README for the exported student: what it was distilled from, how, and on what."""
    config = {k: to_plain(cfg[k]) for k in ("data", "mining", "teacher", "student", "loss", "train")}
    return (
        "---\nlibrary_name: sentence-transformers\ntags: [sentence-transformers, distillrank, knowledge-distillation]\n---\n"
        f"# {cfg.experiment}: a distilled bi-encoder\n\n"
        f"Trained with [distillrank](https://pypi.org/project/distillrank/) from the teacher `{cfg.teacher.model}` "
        f"on the `{cfg.data.train_split}` queries of `{cfg.data.name}`, loss `{cfg.loss._target_}`.\n\n"
        "```python\nfrom sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer(PATH)\n```\n\n"
        f"## Training\n\n{counts}\n\n## Config\n\n```yaml\n{yaml.safe_dump(config, sort_keys=False)}```\n"
    )


def run(cfg: DictConfig) -> Manifest:
    """Train the student; skipped when the manifest matches."""
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        return done
    check_targets(cfg)
    score_manifest, score_dir = require_stage(cfg, score.STAGE, score.stage_key(cfg))
    start = time.perf_counter()
    seed_everything(cfg.seed)
    table = pq.read_table(score_dir / score.OUTPUT)
    pools, dropped = query_pools(table)
    query_text = dict(context.train_queries(cfg))
    student = instantiate(cfg.student)
    if not isinstance(student, BiEncoder):
        raise ConfigError(f"student {cfg.student._target_} is not a bi-encoder; only bi-encoders train here")
    loss_fn = instantiate(cfg.loss)

    passage_text = context.passage_lookup(cfg)

    checkpoint_dir = folder / CHECKPOINTS if cfg.train.get("checkpoint_every", 0) else None
    with hardware(cfg.hardware) as (device, precision):
        result = train_bi_encoder(
            student,
            loss_fn,
            pools,
            query_text,
            passage_text,
            cfg.train,
            device,
            precision,
            cfg.seed,
            folder / LOG,
            checkpoint_dir=checkpoint_dir,
            resume_key=key,
        )
    counts = {
        "queries": len(pools),
        "queries_dropped": dropped,
        "steps": result.steps,
        "examples": result.examples,
        "final_loss": result.final_loss,
        "examples_per_s": round(result.examples_per_s, 2),
    }
    student.cpu().save(folder / MODEL, model_card=model_card(cfg, counts))
    log.info("train: %s", counts)
    shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)  # the model is saved: nothing left to resume
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={k: to_plain(cfg[k]) for k in ("student", "loss", "train", "hardware", "seed")},
        inputs={"score": score_manifest.key},
        counts=counts,
        outputs=[MODEL, LOG],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(folder)
    return manifest
