"""Training queries made from passages alone: document titles and inverse-cloze sentences.

Each function returns :class:`SyntheticQuery` records. A synthetic query's id is a hash of its text
and source, so cached teacher scores (keyed by query id) can never be attached to another text.

* ``title`` — the document's title is the query and its body (without the title) the positive:
  the title–body pairs that Contriever / E5-style pre-training use. Documents without a title give
  no query.
* ``ict`` — the inverse cloze task (Lee et al. 2019, "Latent Retrieval for Weakly Supervised Open
  Domain Question Answering"): a random sentence of the passage is the query, and the passage with
  that sentence removed is the positive (it is kept in the passage with probability
  ``1 - remove_prob``; Lee et al. remove it 90% of the time, so that the retriever also learns some
  word matching). Passages without sentence punctuation (e.g. Vaswani's lower-cased abstracts) fall
  back to a random span of ``span_words`` words, in the spirit of Contriever's random cropping.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


@dataclass(frozen=True)
class SyntheticQuery:
    """One synthetic training query.

    Attributes:
        qid: ``"syn-<hash>"`` of (method, text, source docid, positive text).
        text: the query.
        source: the corpus document it was made from.
        positive: the id of its positive passage: ``source`` itself, or ``"<source>#<method>-<hash>"``
            when the positive is a rewritten passage (``positive_text``).
        positive_text: the rewritten positive (``None`` when the positive is the source document).
    """

    qid: str
    text: str
    source: str
    positive: str
    positive_text: str | None = None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def make_query(method: str, text: str, source: str, positive_text: str | None = None) -> SyntheticQuery:
    """A record with content-derived ids (same text and source -> same ids, in any run)."""
    key = _digest(method, text, source, positive_text or "")
    positive = source if positive_text is None else f"{source}#{method}-{key[:8]}"
    return SyntheticQuery(f"syn-{key}", text, source, positive, positive_text)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` split after ``.``, ``!`` or ``?`` followed by white space."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def title_queries(docids: Sequence[str], titles: Sequence[str], texts: Sequence[str]) -> list[SyntheticQuery]:
    """One query per document with a non-blank title and body: the title; the positive is the body."""
    out = []
    for docid, title, body in zip(docids, titles, texts, strict=True):
        title, body = (title or "").strip(), (body or "").strip()
        if title and body:
            out.append(make_query("title", title, docid, body))
    return out


def ict_queries(
    docids: Sequence[str],
    texts: Sequence[str],
    per_doc: int,
    rng: np.random.Generator,
    remove_prob: float = 0.9,
    span_words: Sequence[int] = (4, 12),
    min_words: int = 8,
    titles: Sequence[str] | None = None,
) -> list[SyntheticQuery]:
    """Up to ``per_doc`` inverse-cloze queries per passage (distinct sentences or spans).

    Queries come from the passage text; a positive keeps its document's title in front (when
    ``titles`` is given and the title is not blank), as the corpus passages do.

    Args:
        remove_prob: probability that the query's sentence is removed from its positive.
        span_words: ``[lo, hi]`` words of the fallback span when a passage has one sentence.
        min_words: passages with fewer words, and queries that would leave fewer words in the
            positive, are skipped.
    """
    lo, hi = int(span_words[0]), int(span_words[1])
    out: list[SyntheticQuery] = []
    titles = titles if titles is not None else [""] * len(docids)
    for docid, text, title in zip(docids, texts, titles, strict=True):
        title = (title or "").strip()

        def titled(body: str, title: str = title) -> str:
            return f"{title} {body}" if title else body

        words = (text or "").split()
        if len(words) < min_words:
            continue
        sentences = split_sentences(text)
        if len(sentences) >= 2:
            picks = rng.permutation(len(sentences))[:per_doc]
            for i in picks:
                query = sentences[i]
                rest = " ".join(sentences[:i] + sentences[i + 1 :])
                positive = rest if rng.random() < remove_prob else " ".join(sentences)
                if len(positive.split()) >= min_words // 2 and query:
                    out.append(make_query("ict", query, docid, titled(positive)))
            continue
        seen: set[int] = set()
        for _ in range(per_doc):
            length = int(rng.integers(lo, hi + 1))
            if len(words) - length < min_words // 2:
                length = max(len(words) - min_words // 2, 1)
            start = int(rng.integers(0, len(words) - length + 1))
            if start in seen:
                continue
            seen.add(start)
            query = " ".join(words[start : start + length])
            kept = words[:start] + words[start + length :] if rng.random() < remove_prob else words
            out.append(make_query("ict", query, docid, titled(" ".join(kept))))
    return out
