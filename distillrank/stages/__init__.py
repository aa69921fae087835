"""The pipeline's stages; each module has ``run(cfg) -> Manifest`` and ``stage_key(cfg) -> str``.

A stage never imports another stage (tests/test_layers.py): other stages' keys and output names
come from :mod:`distillrank.keys` and :mod:`distillrank.artifacts`, shared builders from
:mod:`distillrank.builders`, and the order of the stages is :mod:`distillrank.pipeline`'s.
"""
