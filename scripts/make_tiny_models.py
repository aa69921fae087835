"""Build tiny random-init models and a tiny synthetic BEIR collection for tests.

Nothing here touches the network: the tokenizer is a ``tokenizers`` BERT WordPiece pipeline whose
vocabulary is counted from the given texts, and the models are randomly initialised
``transformers`` BERTs (well under 1 MB each). Every output is deterministic given ``seed`` (and
the texts), across processes too.

Use it as a module (``sys.path.insert(0, "<repo>/scripts")``, then ``import make_tiny_models``)
or as a CLI::

    python scripts/make_tiny_models.py OUT_DIR

which writes ``OUT_DIR/beir``, ``OUT_DIR/bi_encoder`` and ``OUT_DIR/cross_encoder``.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from collections import Counter
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel, WordPiece
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

SPECIAL_TOKENS: list[str] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POOLING_MODES: tuple[str, ...] = ("cls", "mean", "max")
BASE_ALPHABET: str = string.ascii_lowercase + string.digits + string.punctuation
# Weight init std. BERT's usual 0.02 is kept for the bi-encoder (a student starting point), but a
# tiny cross-encoder initialised that way scores every pair within ~1e-4 of each other, so its
# init is wider: its scores then spread over roughly one logit, which a teacher in tests needs.
BI_ENCODER_INIT_RANGE: float = 0.02
CROSS_ENCODER_INIT_RANGE: float = 0.2

# --------------------------------------------------------------------------------------------
# Word lists. The tiny BEIR collection and DEFAULT_TEXTS are both generated from these, so a
# tokenizer trained on DEFAULT_TEXTS has every collection word in its vocabulary.
# --------------------------------------------------------------------------------------------

FILLER_WORDS: list[str] = (
    "the a of in on for with and to from by about this that these study report results analysis "
    "method methods data evidence effect effects role new recent review case model patterns "
    "changes levels during between under across within among observed measured"
).split()

QUERY_WORDS: list[str] = "what how why which does do is are can role effect influence".split()

# Rare content words, grouped into topics by make_tiny_beir (order matters for determinism).
TOPIC_WORDS: list[str] = (
    "protein enzyme membrane ribosome mitochondria chromosome antibody vaccine neuron synapse "
    "cortex hormone insulin glucose lipid cholesterol tumor lymphocyte macrophage cytokine "
    "glacier volcano earthquake tsunami monsoon drought aquifer sediment erosion permafrost "
    "coral plankton mangrove wetland estuary reef algae kelp seagrass lagoon "
    "galaxy nebula quasar pulsar comet asteroid telescope orbit eclipse meteor "
    "transistor capacitor resistor inductor semiconductor laser photon electron magnet circuit "
    "algorithm compiler database network protocol encryption router kernel cache processor "
    "wheat barley maize rice soybean fertilizer irrigation harvest orchard pesticide "
    "violin piano guitar trumpet orchestra symphony melody rhythm harmony opera "
    "bridge tunnel highway railway harbor airport canal dam skyscraper pipeline "
    "inflation currency tariff mortgage dividend pension budget deficit export invoice "
    "falcon sparrow penguin dolphin whale salmon beetle butterfly tortoise wolf "
    "castle cathedral pyramid temple monastery fortress palace museum library theater "
    "vitamin calcium sodium potassium iron zinc magnesium iodine copper selenium "
    "oxygen nitrogen carbon hydrogen helium argon methane ozone ammonia sulfur "
    "bacteria virus fungus parasite pathogen antibiotic infection fever malaria tuberculosis"
).split()

# Modifiers that make individual documents distinguishable inside a topic.
SPECIFIC_WORDS: list[str] = (
    "thermal coastal arctic tropical urban rural ancient modern rapid gradual chronic acute "
    "northern southern eastern western genetic seasonal nocturnal microscopic massive fragile "
    "dense porous toxic stable volatile dormant mobile fossil orbital acoustic optical magnetic "
    "elastic synthetic organic frozen humid arid saline alpine marine lunar solar digital "
    "analog hybrid rotary linear circular vertical silent bright dim pale crimson golden "
    "silver emerald violet amber"
).split()

GENERAL_WORDS: list[str] = (
    "people city river mountain forest ocean school teacher student doctor patient market "
    "history science music language energy water light sound time world family health food "
    "garden village country island desert winter summer spring autumn morning evening night "
    "small large early late strong weak simple complex important common rare quiet loud "
    "grows moves changes shows finds helps makes takes keeps builds carries explains describes "
    "protects reduces increases supports affects improves"
).split()

_TEMPLATES: list[str] = [
    "The {a} {n1} {v} the {n2} near the {n3}.",
    "A {a} {n1} and a {n2} were studied in the {n3}.",
    "Researchers found that {n1} {v} {n2} in {a} {n3}.",
    "In the {n3}, the {a} {n1} often {v} a {n2}.",
    "Why does the {n1} {v} the {a} {n2}?",
    "This report describes how {a} {n1} {v} {n2} and {n3}.",
]


def _default_texts(seed: int = 1234, n_sentences: int = 400) -> list[str]:
    """Generate the built-in English text sample.

    Args:
        seed: Seed of the sentence generator.
        n_sentences: Number of template sentences (on top of one word-list sentence per pool).

    Returns:
        Sentences that together use every word of every word list at least twice.
    """
    rng = random.Random(seed)
    nouns = TOPIC_WORDS + GENERAL_WORDS[:40]
    adjs = SPECIFIC_WORDS + GENERAL_WORDS[40:56]
    verbs = GENERAL_WORDS[56:]
    texts: list[str] = []
    # Every word appears at least twice, so the WordPiece trainer keeps it as a whole token.
    for pool in (FILLER_WORDS, QUERY_WORDS, TOPIC_WORDS, SPECIFIC_WORDS, GENERAL_WORDS):
        for _ in range(2):
            for i in range(0, len(pool), 8):
                texts.append(" ".join(pool[i : i + 8]).capitalize() + ".")
    for _ in range(n_sentences):
        template = rng.choice(_TEMPLATES)
        texts.append(
            template.format(
                a=rng.choice(adjs),
                n1=rng.choice(nouns),
                n2=rng.choice(nouns),
                n3=rng.choice(nouns),
                v=rng.choice(verbs),
            )
        )
    return texts


DEFAULT_TEXTS: list[str] = _default_texts()


# --------------------------------------------------------------------------------------------
# Tokenizer and models
# --------------------------------------------------------------------------------------------


def _wordpiece_vocab(counts: Counter[str], vocab_size: int) -> list[str]:
    """Choose a WordPiece vocabulary deterministically from word counts.

    Order: special tokens; the alphabet (printable ASCII, then the texts' other characters by
    decreasing count, cut at ``(vocab_size - 5) // 2``),
    each character also as a ``##`` continuation; whole words by decreasing count; then frequent
    word prefixes (2-5 characters) and ``##`` suffixes (2-4 characters), so unseen words split
    into sensible pieces. Ties are broken alphabetically.

    Args:
        counts: Pre-tokenized, normalised word counts.
        vocab_size: Maximum vocabulary size.

    Returns:
        The vocabulary in id order.
    """
    char_counts: Counter[str] = Counter()
    for word, n in counts.items():
        for ch in word:
            char_counts[ch] += n

    def by_count(c: Counter[str]) -> list[str]:
        return [k for k, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]

    max_chars = max(0, (vocab_size - len(SPECIAL_TOKENS)) // 2)
    # Printable ASCII always comes first, so unseen plain-English words never map to [UNK].
    alphabet = list(dict.fromkeys(list(BASE_ALPHABET) + by_count(char_counts)))
    chars = sorted(alphabet[:max_chars])
    vocab = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    seen = set(vocab)
    pieces: Counter[str] = Counter()
    for word, n in counts.items():
        for k in range(2, min(5, len(word) - 1) + 1):
            pieces[word[:k]] += n
        for k in range(2, min(4, len(word) - 1) + 1):
            pieces[f"##{word[-k:]}"] += n
    for token in by_count(counts) + by_count(pieces):
        if len(vocab) >= vocab_size:
            break
        if token not in seen:
            vocab.append(token)
            seen.add(token)
    return vocab


def build_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """Build a lower-casing BERT WordPiece tokenizer for ``texts`` and save it to ``out_dir``.

    The pipeline is the ``tokenizers`` library's BERT one (``BertNormalizer`` with lower-casing and
    accent stripping, ``BertPreTokenizer``, ``WordPiece`` model, ``[CLS] A [SEP] B [SEP]``
    template). The vocabulary is counted from ``texts`` in Python rather than with
    ``WordPieceTrainer``: that trainer breaks ties in hash-map order, so two runs in different
    processes give different vocabularies, whereas this one is identical for identical texts.

    Args:
        texts: Training texts.
        out_dir: Folder that receives ``tokenizer.json``, ``tokenizer_config.json`` and
            ``vocab.txt`` (plus whatever else ``save_pretrained`` writes).
        vocab_size: Upper bound on the vocabulary size (the real size is smaller when the texts
            have fewer distinct pieces).

    Returns:
        The tokenizer, a ``BertTokenizerFast``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] += 1
    vocab = _wordpiece_vocab(counts, vocab_size)
    ids = {token: i for i, token in enumerate(vocab)}

    backend = Tokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=backend,
        do_lower_case=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    tokenizer.save_pretrained(str(out_dir))
    # transformers >= 5 no longer writes vocab.txt for tokenizers-backed models; write it ourselves.
    (out_dir / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    return tokenizer


def _bert_config(vocab_size: int, hidden: int, layers: int, heads: int, **kwargs: object) -> BertConfig:
    """A small ``BertConfig`` (intermediate size ``4 * hidden``, 512 positions)."""
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
        **kwargs,
    )


def _init_model(model_cls: type, config: BertConfig, seed: int) -> torch.nn.Module:
    """Randomly initialise ``model_cls(config)`` with ``seed`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


def _save_model(model: torch.nn.Module, out_dir: Path) -> None:
    """``model.save_pretrained(out_dir)`` (safetensors) without transformers' progress bars."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(out_dir))
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _versions() -> dict[str, str]:
    """Installed package versions for ``config_sentence_transformers.json``."""
    out = {}
    for key, dist in (("sentence_transformers", "sentence-transformers"), ("transformers", "transformers")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "3.0.0" if key == "sentence_transformers" else "4.40.0"
    out["pytorch"] = torch.__version__
    return out


def _write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def make_tiny_bi_encoder(
    out_dir: Path,
    texts: Iterable[str] | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    pooling: str = "mean",
    normalize: bool = False,
    max_seq_length: int = 64,
    vocab_size: int = 1000,
) -> Path:
    """Save a random-init BERT bi-encoder in sentence-transformers folder format.

    Layout: ``config.json``, ``model.safetensors`` and tokenizer files at the root;
    ``modules.json`` (Transformer at ``""``, Pooling at ``1_Pooling``, and Normalize at
    ``2_Normalize`` when ``normalize``); ``sentence_bert_config.json``; ``1_Pooling/config.json``;
    ``config_sentence_transformers.json``.

    Args:
        out_dir: Output folder (created).
        texts: Tokenizer training texts; ``DEFAULT_TEXTS`` when None.
        hidden: Hidden size (= embedding dimension).
        layers: Number of transformer layers.
        heads: Number of attention heads.
        seed: Seed of the random initialisation.
        pooling: ``"mean"``, ``"cls"`` or ``"max"``.
        normalize: Append a Normalize module (unit-norm embeddings).
        max_seq_length: Maximum sequence length used by sentence-transformers.
        vocab_size: Upper bound on the tokenizer's vocabulary (:func:`build_tokenizer`).

    Returns:
        ``out_dir``.
    """
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(DEFAULT_TEXTS if texts is None else texts, out_dir, vocab_size=vocab_size)
    # sentence-transformers truncates at max_seq_length; keep the tokenizer's limit in line with it.
    _set_model_max_length(out_dir, max_seq_length)
    config = _bert_config(len(tokenizer), hidden, layers, heads, initializer_range=BI_ENCODER_INIT_RANGE)
    _save_model(_init_model(BertModel, config, seed), out_dir)

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (out_dir / "2_Normalize").mkdir(exist_ok=True)
    _write_json(out_dir / "modules.json", modules)
    _write_json(
        out_dir / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False}
    )
    _write_json(
        out_dir / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    _write_json(
        out_dir / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "__version__": _versions(),
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if normalize else "dot",
        },
    )
    return out_dir


def _set_model_max_length(out_dir: Path, max_length: int) -> None:
    """Set ``model_max_length`` in a saved ``tokenizer_config.json``."""
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["model_max_length"] = max_length
    _write_json(path, cfg)


def make_tiny_cross_encoder(
    out_dir: Path,
    texts: Iterable[str] | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    max_length: int = 128,
) -> Path:
    """Save a random-init ``BertForSequenceClassification`` (one logit) with its tokenizer.

    The folder is plain Hugging Face format, loadable by ``AutoModelForSequenceClassification``
    and by ``sentence_transformers.CrossEncoder``.

    Args:
        out_dir: Output folder (created).
        texts: Tokenizer training texts; ``DEFAULT_TEXTS`` when None.
        hidden: Hidden size.
        layers: Number of transformer layers.
        heads: Number of attention heads.
        seed: Seed of the random initialisation.
        max_length: Tokenizer ``model_max_length`` (the pair truncation length).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(DEFAULT_TEXTS if texts is None else texts, out_dir)
    _set_model_max_length(out_dir, max_length)
    config = _bert_config(
        len(tokenizer),
        hidden,
        layers,
        heads,
        initializer_range=CROSS_ENCODER_INIT_RANGE,
        num_labels=1,
        id2label={0: "LABEL_0"},
        label2id={"LABEL_0": 0},
    )
    _save_model(_init_model(BertForSequenceClassification, config, seed), out_dir)
    return out_dir


# ColBERT markers of Stanford ColBERT (BERT vocabularies hold them); the tiny tokenizer gets them too.
COLBERT_MARKERS: tuple[str, str] = ("[unused0]", "[unused1]")
# Like the cross-encoder's: a wide init spreads a random ColBERT's MaxSim scores enough for a teacher.
COLBERT_INIT_RANGE: float = 0.2
COLBERT_LAYOUTS: tuple[str, ...] = ("distillrank", "stanford")


def make_tiny_colbert(
    out_dir: Path,
    texts: Iterable[str] | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    dim: int = 16,
    seed: int = 0,
    layout: str = "distillrank",
    query_max_length: int = 16,
    passage_max_length: int = 64,
) -> Path:
    """Save a random-init BERT ColBERT (projection ``hidden -> dim``, no bias) with its tokenizer.

    The tokenizer is :func:`build_tokenizer`'s plus the markers ``[unused0]`` / ``[unused1]``
    (added tokens), as in a BERT vocabulary.

    Layouts:
        ``distillrank``: saved by ``distillrank.models.colbert.ColBERTModel.save`` (HF backbone at
        the root, PyLate ``1_Dense`` projection, ``modules.json``, settings JSONs).
        ``stanford``: a Stanford ColBERT checkpoint like ``colbert-ir/colbertv2.0``: one
        ``model.safetensors`` holding ``bert.*`` and ``linear.weight``, ``config.json`` with
        ``architectures: ["HF_ColBERT"]``, and ``artifact.metadata`` (the ColBERTConfig).

    Args:
        out_dir: Output folder (created).
        texts: Tokenizer training texts; ``DEFAULT_TEXTS`` when None.
        hidden / layers / heads: BERT sizes.
        dim: ColBERT embedding dimension (projection output).
        seed: Seed of the random initialisation (backbone and projection).
        layout: ``distillrank`` or ``stanford``.
        query_max_length / passage_max_length: the saved lengths (``query_maxlen`` / ``doc_maxlen``).

    Returns:
        ``out_dir``.
    """
    if layout not in COLBERT_LAYOUTS:
        raise ValueError(f"layout must be one of {COLBERT_LAYOUTS}, got {layout!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(DEFAULT_TEXTS if texts is None else texts, out_dir)
    tokenizer.add_tokens(list(COLBERT_MARKERS), special_tokens=True)
    tokenizer.save_pretrained(str(out_dir))
    _set_model_max_length(out_dir, passage_max_length)
    config = _bert_config(len(tokenizer), hidden, layers, heads, initializer_range=COLBERT_INIT_RANGE)
    backbone = _init_model(BertModel, config, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        weight = torch.randn(dim, hidden) * COLBERT_INIT_RANGE
    if layout == "stanford":
        from safetensors.torch import save_file

        state = {f"bert.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
        state["linear.weight"] = weight
        save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        config.architectures = ["HF_ColBERT"]
        config.save_pretrained(str(out_dir))
        _write_json(
            out_dir / "artifact.metadata",
            {
                "query_maxlen": query_max_length,
                "doc_maxlen": passage_max_length,
                "dim": dim,
                "similarity": "cosine",
                "attend_to_mask_tokens": False,
                "mask_punctuation": True,
                "checkpoint": "tiny",
            },
        )
        return out_dir
    from distillrank.models.colbert import ColBERTModel

    projection = torch.nn.Linear(hidden, dim, bias=False)
    with torch.no_grad():
        projection.weight.copy_(weight)
    model = ColBERTModel(
        backbone,
        AutoTokenizer.from_pretrained(str(out_dir)),
        projection,
        query_prefix=COLBERT_MARKERS[0],
        passage_prefix=COLBERT_MARKERS[1],
        query_max_length=query_max_length,
        passage_max_length=passage_max_length,
    )
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save(out_dir)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return out_dir


# --------------------------------------------------------------------------------------------
# Tiny seq2seq (T5) and causal (GPT-2) language models
# --------------------------------------------------------------------------------------------

# T5's conventions: pad 0 (also the decoder start), eos 1, unk 2.
LM_SPECIAL_TOKENS: list[str] = ["<pad>", "</s>", "<unk>"]
# Words a tiny LM's vocabulary always holds: monoT5's answer words and the default prompts' words.
LM_REQUIRED_WORDS: list[str] = ["true", "false", "query", "document", "relevant", "passage", ":"]
# The tiny T5's output layer is initialised at half T5's usual scale: logits then spread over a few
# units, so sampling gives varied words and monoT5 scores of different pairs differ by ~1.
T5_LM_HEAD_SCALE: float = 0.5


def build_word_tokenizer(
    texts: Iterable[str], out_dir: Path, vocab_size: int = 1000, append_eos: bool = True
) -> PreTrainedTokenizerFast:
    """Build a lower-casing word-level tokenizer for ``texts`` (T5-style special tokens), saved.

    Pipeline: ``NFD + Lowercase + StripAccents`` normaliser, ``Whitespace`` pre-tokenizer (words and
    punctuation runs), ``WordLevel`` model; with ``append_eos`` every encoding ends in ``</s>``
    (as T5's does). Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then ``LM_REQUIRED_WORDS`` (so
    ``true`` and ``false`` are single tokens), then the texts' words by decreasing count, ties
    alphabetical: identical for identical texts, across processes.

    Args:
        texts: Training texts.
        out_dir: Folder that receives ``tokenizer.json`` and ``tokenizer_config.json``.
        vocab_size: Upper bound on the vocabulary size.
        append_eos: Append ``</s>`` to every encoding (seq2seq); False for a causal LM.

    Returns:
        The tokenizer, a ``PreTrainedTokenizerFast`` (``AutoTokenizer`` loads the folder).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    pre_tokenizer = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] += 1
    vocab = list(dict.fromkeys(LM_SPECIAL_TOKENS + LM_REQUIRED_WORDS))
    seen = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    ids = {token: i for i, token in enumerate(vocab)}
    backend = Tokenizer(WordLevel(ids, unk_token="<unk>"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    if append_eos:
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", ids["</s>"])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def _generative_folder(
    out_dir: Path, texts: Iterable[str] | None, hidden: int, heads: int, append_eos: bool, max_length: int
) -> tuple[Path, PreTrainedTokenizerFast]:
    """The output folder of a tiny generative model, with its word-level tokenizer saved in it."""
    if hidden % heads:
        raise ValueError(f"the hidden size ({hidden}) must be divisible by heads ({heads})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_word_tokenizer(DEFAULT_TEXTS if texts is None else texts, out_dir, append_eos=append_eos)
    _set_model_max_length(out_dir, max_length)
    return out_dir, tokenizer


def make_tiny_t5(
    out_dir: Path,
    texts: Iterable[str] | None = None,
    d_model: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    max_length: int = 256,
) -> Path:
    """Save a random-init ``T5ForConditionalGeneration`` with a word-level tokenizer (no download).

    The folder loads with ``AutoModelForSeq2SeqLM`` / ``AutoTokenizer``; ``true`` and ``false``
    are single tokens, so it stands in for a monoT5 re-ranker and a docT5query generator.

    Args:
        out_dir: Output folder (created).
        texts: Tokenizer training texts; ``DEFAULT_TEXTS`` when None.
        d_model: Hidden size (feed-forward ``2 * d_model``, ``d_kv = d_model // heads``).
        layers: Encoder and decoder layers each.
        heads: Attention heads.
        seed: Seed of the random initialisation.
        max_length: Tokenizer ``model_max_length``.

    Returns:
        ``out_dir``.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    out_dir, tokenizer = _generative_folder(out_dir, texts, d_model, heads, append_eos=True, max_length=max_length)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=2 * d_model,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    # Untied output layer (transformers >= 5 ignores the constructor argument): a tied T5 scores
    # the last input token highest and so repeats it forever when generating.
    config.tie_word_embeddings = False
    model = _init_model(T5ForConditionalGeneration, config, seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(T5_LM_HEAD_SCALE)
    _save_model(model, out_dir)
    return out_dir


def make_tiny_causal_lm(
    out_dir: Path,
    texts: Iterable[str] | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    max_length: int = 512,
) -> Path:
    """Save a random-init ``GPT2LMHeadModel`` with a word-level tokenizer (no download).

    The tokenizer appends nothing (a causal LM continues the text); ``</s>`` is its eos and
    ``<pad>`` its pad token. Loads with ``AutoModelForCausalLM`` / ``AutoTokenizer``.

    Args:
        out_dir: Output folder (created).
        texts: Tokenizer training texts; ``DEFAULT_TEXTS`` when None.
        hidden: Hidden size.
        layers: Transformer layers.
        heads: Attention heads.
        seed: Seed of the random initialisation.
        max_length: Positions (and tokenizer ``model_max_length``).

    Returns:
        ``out_dir``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    out_dir, tokenizer = _generative_folder(out_dir, texts, hidden, heads, append_eos=False, max_length=max_length)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_length,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    _save_model(_init_model(GPT2LMHeadModel, config, seed), out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------
# Tiny BEIR collection
# --------------------------------------------------------------------------------------------


def make_tiny_beir(out_dir: Path, n_docs: int = 60, n_queries: int = 24, seed: int = 0) -> Path:
    """Write a small synthetic, lexically learnable BEIR collection.

    Documents belong to topics; each topic owns a few rare topic words, and each document also
    gets a few "specific" modifier words of its own. A query is built from two topic words of its
    target document(s) plus one specific word from each target, so BM25 ranks the relevant
    documents (1 or 2 per query, score 1) high while same-topic siblings act as hard negatives.
    Every document also carries a distractor word from another topic and some filler words.

    Files: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
    ``text``), ``qrels/train.tsv`` and ``qrels/test.tsv`` (header ``query-id\\tcorpus-id\\tscore``).
    The first two thirds of the (shuffled) queries are train, the rest test; the sets are
    disjoint.

    Args:
        out_dir: Output folder (created).
        n_docs: Number of documents (at least 6).
        n_queries: Number of queries (at least 3, at most ``n_docs``).
        seed: Seed of the generator.

    Returns:
        ``out_dir``.
    """
    if n_docs < 6 or not 3 <= n_queries <= n_docs:
        raise ValueError(f"need n_docs >= 6 and 3 <= n_queries <= n_docs, got {n_docs=} {n_queries=}")
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    (out_dir / "qrels").mkdir(parents=True, exist_ok=True)

    n_topics = max(2, n_docs // 3)
    words_per_topic = 5
    pool = list(TOPIC_WORDS)
    rng.shuffle(pool)
    # Disjoint topic vocabularies while the pool lasts, then reuse words (only for huge n_docs).
    topics = [
        [pool[(t * words_per_topic + k) % len(pool)] for k in range(words_per_topic)] for t in range(n_topics)
    ]
    doc_topic = [i % n_topics for i in range(n_docs)]
    members: dict[int, list[int]] = {t: [] for t in range(n_topics)}
    for i, t in enumerate(doc_topic):
        members[t].append(i)

    # Siblings in a topic get disjoint pairs of specific words (while SPECIFIC_WORDS lasts).
    topic_specific: dict[int, list[list[str]]] = {}
    for t, ids in members.items():
        if 2 * len(ids) <= len(SPECIFIC_WORDS):
            picked = rng.sample(SPECIFIC_WORDS, 2 * len(ids))
        else:
            picked = [rng.choice(SPECIFIC_WORDS) for _ in range(2 * len(ids))]
        topic_specific[t] = [picked[2 * k : 2 * k + 2] for k in range(len(ids))]

    docs: list[dict[str, str]] = []
    doc_topic_words: list[list[str]] = []
    doc_specific: list[list[str]] = []
    for i in range(n_docs):
        t = doc_topic[i]
        tw = rng.sample(topics[t], 4)
        spec = topic_specific[t][members[t].index(i)]
        other_topic = (t + rng.randrange(1, n_topics)) % n_topics
        other = rng.choice(topics[other_topic])
        filler = rng.sample(FILLER_WORDS, 6)
        body = [
            tw[0],
            tw[1],
            spec[0],
            filler[0],
            filler[1],
            tw[2],
            spec[1],
            filler[2],
            other,
            tw[3],
            filler[3],
        ]
        rng.shuffle(body)
        text = (
            f"The {spec[0]} {tw[0]} {rng.choice(GENERAL_WORDS[56:])} {filler[4]} {tw[1]}. "
            + " ".join(body).capitalize()
            + f" {filler[5]} {rng.choice(GENERAL_WORDS[:40])}."
        )
        docs.append({"_id": f"d{i}", "title": f"{spec[1]} {tw[2]}".title(), "text": text})
        doc_topic_words.append(tw)
        doc_specific.append(spec)

    targets = rng.sample(range(n_docs), n_queries)
    queries: list[dict[str, str]] = []
    qrels: list[tuple[str, str, int]] = []
    for q, d in enumerate(targets):
        qid = f"q{q}"
        relevant = [d]
        siblings = [s for s in members[doc_topic[d]] if s != d]
        if siblings and rng.random() < 0.4:
            relevant.append(rng.choice(siblings))
        # Topic words the relevant docs share (if any), then one specific word per relevant doc.
        shared = [w for w in doc_topic_words[d] if all(w in doc_topic_words[r] for r in relevant)]
        topic_terms = rng.sample(shared, min(2, len(shared))) if shared else [doc_topic_words[d][0]]
        spec_terms = [rng.choice(doc_specific[r]) for r in relevant]
        words = [rng.choice(QUERY_WORDS), *topic_terms, *spec_terms]
        if rng.random() < 0.5:
            words.insert(1, rng.choice(FILLER_WORDS))
        queries.append({"_id": qid, "text": " ".join(words).capitalize() + "?"})
        qrels.extend((qid, f"d{r}", 1) for r in dict.fromkeys(relevant))

    qids = [q["_id"] for q in queries]
    rng.shuffle(qids)
    n_train = (2 * n_queries) // 3
    split_of = {qid: ("train" if k < n_train else "test") for k, qid in enumerate(qids)}

    with open(out_dir / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    with open(out_dir / "queries.jsonl", "w", encoding="utf-8") as f:
        for query in queries:
            f.write(json.dumps(query) + "\n")
    for split in ("train", "test"):
        with open(out_dir / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, did, score in qrels:
                if split_of[qid] == split:
                    f.write(f"{qid}\t{did}\t{score}\n")
    return out_dir


def beir_texts(beir_dir: Path) -> list[str]:
    """All titles, document texts and query texts of a (plain-JSONL) BEIR folder.

    Args:
        beir_dir: Folder holding ``corpus.jsonl`` and ``queries.jsonl``.

    Returns:
        The texts, in file order (useful as extra tokenizer training texts).
    """
    beir_dir = Path(beir_dir)
    texts: list[str] = []
    with open(beir_dir / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            texts.extend(t for t in (doc.get("title", ""), doc.get("text", "")) if t)
    with open(beir_dir / "queries.jsonl", encoding="utf-8") as f:
        texts.extend(json.loads(line)["text"] for line in f)
    return texts


def main(argv: list[str] | None = None) -> None:
    """CLI: write ``OUT_DIR/beir``, ``OUT_DIR/bi_encoder`` and ``OUT_DIR/cross_encoder``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    args = parser.parse_args(argv)
    beir = make_tiny_beir(args.out_dir / "beir", seed=args.seed)
    texts = DEFAULT_TEXTS + beir_texts(beir)
    bi = make_tiny_bi_encoder(args.out_dir / "bi_encoder", texts=texts, seed=args.seed)
    ce = make_tiny_cross_encoder(args.out_dir / "cross_encoder", texts=texts, seed=args.seed)
    for path in (bi, ce, beir):
        print(path)


if __name__ == "__main__":
    main()
