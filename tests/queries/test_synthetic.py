"""Title and inverse-cloze queries: what they hold, their ids, determinism."""

from __future__ import annotations

import numpy as np

from distillrank.queries.synthetic import ict_queries, make_query, split_sentences, title_queries

PASSAGE = "Cats sleep a lot during the day. Dogs bark at strangers passing by. Birds sing at dawn in spring."


def test_split_sentences():
    assert split_sentences(PASSAGE) == [
        "Cats sleep a lot during the day.",
        "Dogs bark at strangers passing by.",
        "Birds sing at dawn in spring.",
    ]
    assert split_sentences("no punctuation here at all") == ["no punctuation here at all"]


def test_ids_are_content_derived():
    a = make_query("ict", "q text", "d1", "rest")
    assert a == make_query("ict", "q text", "d1", "rest")
    assert a.qid.startswith("syn-") and a.positive.startswith("d1#ict-")
    assert make_query("ict", "q text", "d1", "other rest").qid != a.qid
    plain = make_query("generator", "q text", "d1")
    assert plain.positive == "d1" and plain.positive_text is None


def test_title_queries_use_the_body_as_positive_and_skip_blank_titles():
    out = title_queries(["a", "b"], ["A title", " "], ["body a", "body b"])
    assert [(q.text, q.source, q.positive_text) for q in out] == [("A title", "a", "body a")]


def test_ict_removes_the_query_sentence_from_its_positive():
    out = ict_queries(["d"], [PASSAGE], per_doc=3, rng=np.random.default_rng(0), remove_prob=1.0)
    assert len(out) == 3 and len({q.text for q in out}) == 3
    for q in out:
        assert q.text in split_sentences(PASSAGE)
        assert q.text not in q.positive_text
        assert sorted(split_sentences(q.positive_text) + [q.text]) == sorted(split_sentences(PASSAGE))


def test_ict_keeps_the_sentence_when_remove_prob_is_zero():
    (q,) = ict_queries(["d"], [PASSAGE], per_doc=1, rng=np.random.default_rng(0), remove_prob=0.0)
    assert q.positive_text == PASSAGE


def test_ict_falls_back_to_a_word_span_without_sentence_punctuation():
    text = " ".join(f"w{i}" for i in range(30))
    out = ict_queries(["d"], [text], per_doc=2, rng=np.random.default_rng(1), remove_prob=1.0, span_words=(4, 6))
    assert out
    for q in out:
        words = q.text.split()
        assert 4 <= len(words) <= 6 and q.text in text
        assert len(q.positive_text.split()) == 30 - len(words)
        assert q.text not in q.positive_text


def test_ict_is_seeded_and_skips_short_passages():
    a = ict_queries(["d", "e"], [PASSAGE, "too short"], 2, np.random.default_rng(5))
    b = ict_queries(["d", "e"], [PASSAGE, "too short"], 2, np.random.default_rng(5))
    assert a == b and {q.source for q in a} == {"d"}
