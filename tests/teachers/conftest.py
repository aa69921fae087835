"""Teacher tests resolve model folders afresh: each test may build or move tiny models."""

from __future__ import annotations

import pytest

from distillrank.models.hub import resolve_model


@pytest.fixture(autouse=True)
def _fresh_resolve_cache():
    resolve_model.cache_clear()
    yield
    resolve_model.cache_clear()
