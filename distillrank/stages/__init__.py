"""The pipeline's stages; each module has ``run(cfg) -> Manifest`` and ``stage_key(cfg) -> str``."""
