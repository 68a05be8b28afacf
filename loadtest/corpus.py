"""Generated load-test texts: deterministic, varied, of a chosen length in BERT tokens.

Every word in the bank below is a single token of the BERT-uncased WordPiece vocabulary, and so
is each punctuation mark, so a text's token count (before the prompt prefix and [CLS]/[SEP]) is
known exactly without a tokenizer. Text `i` of a kind depends only on (seed, kind, i): any
process (locust workers, benchmarks, tests) regenerates the same texts. Topics, sentence lengths
and word choice vary from text to text, so caches and batching see realistic variety rather
than one repeated string.

    from corpus import queries, documents
    queries(100)                                  # 4-12 tokens each
    documents(20, min_tokens=200, max_tokens=500)
"""

from __future__ import annotations

import random
from collections.abc import Sequence

TOPICS: dict[str, tuple[str, ...]] = {
    "search": (
        "search", "index", "query", "ranking", "retrieval", "document", "corpus", "relevance",
        "score", "vector", "text", "result", "engine", "match", "filter", "term",
        "page", "user", "click", "recall", "precision", "similarity", "distance", "cluster",
    ),
    "cooking": (
        "recipe", "bread", "flour", "sugar", "butter", "oven", "kitchen", "soup", "salt",
        "pepper", "garlic", "onion", "cheese", "rice", "chicken", "sauce", "dinner", "lunch",
        "breakfast", "cake", "fruit", "apple", "lemon", "cook",
    ),
    "travel": (
        "train", "flight", "airport", "hotel", "city", "island", "beach", "mountain", "river",
        "ticket", "station", "journey", "map", "road", "bridge", "village", "coast", "border",
        "passport", "museum", "harbor", "valley", "lake", "tour",
    ),
    "health": (
        "doctor", "patient", "hospital", "heart", "blood", "sleep", "exercise", "diet",
        "muscle", "brain", "pain", "treatment", "disease", "vaccine", "nurse", "clinic",
        "therapy", "symptoms", "health", "medicine", "virus", "care", "body", "skin",
    ),
    "finance": (
        "bank", "money", "loan", "interest", "market", "stock", "price", "tax", "budget",
        "income", "debt", "credit", "fund", "trade", "profit", "cost", "insurance", "payment",
        "rate", "account", "investment", "economy", "salary", "cash",
    ),
    "computing": (
        "server", "network", "memory", "disk", "cache", "thread", "process", "kernel", "file",
        "database", "software", "code", "compiler", "program", "data", "model", "speed",
        "cloud", "machine", "computer", "battery", "screen", "system", "driver",
    ),
    "nature": (
        "forest", "tree", "bird", "flower", "rain", "snow", "wind", "ocean", "animal", "fish",
        "garden", "soil", "leaf", "winter", "summer", "spring", "storm", "desert", "wolf",
        "insect", "plant", "seed", "sun", "moon",
    ),
    "sports": (
        "football", "team", "player", "coach", "game", "season", "league", "goal", "match",
        "ball", "race", "runner", "tennis", "golf", "swimming", "stadium", "champion", "score",
        "training", "fans", "victory", "defeat", "referee", "cup",
    ),
}  # fmt: skip

COMMON: tuple[str, ...] = (
    "the", "a", "of", "and", "to", "in", "is", "for", "with", "on", "that", "this", "it",
    "from", "by", "at", "as", "new", "good", "best", "small", "large", "old", "first", "last",
    "many", "more", "most", "some", "every", "other", "local", "public", "simple", "common",
    "early", "late", "fast", "slow", "high", "low", "long", "short", "better", "often",
    "usually", "also", "very", "after", "before", "during", "between", "about", "without",
    "people", "time", "year", "day", "way", "part", "place", "work", "life", "world", "group",
    "number", "problem", "question", "example", "method", "change", "report", "study",
    "use", "make", "find", "help", "need", "show", "keep", "start", "run", "build", "choose",
    "compare", "improve", "reduce", "explain", "describe", "measure", "support", "plan",
)  # fmt: skip

QUESTION_STARTS: tuple[tuple[str, ...], ...] = (
    ("how", "to"), ("what", "is"), ("why", "does"), ("where", "can"), ("best",), ("which",),
    ("when", "should"), ("who", "makes"), ("how", "many"), ("is", "it"),
)  # fmt: skip

SENTENCE_TOKENS = (6, 18)
"""Sentence length range in documents (the final period included)."""


def _rng(seed: int, kind: str, index: int) -> random.Random:
    return random.Random(f"cde-loadtest:{seed}:{kind}:{index}")


def _words(rng: random.Random, topic: Sequence[str], count: int) -> list[str]:
    """`count` single-token words, mostly from `topic`."""
    return [rng.choice(topic) if rng.random() < 0.6 else rng.choice(COMMON) for _ in range(count)]


def query(index: int, *, min_tokens: int = 4, max_tokens: int = 12, seed: int = 0) -> str:
    """Short search query `index`: between min_tokens and max_tokens tokens."""
    _check_range(min_tokens, max_tokens, least=2)
    rng = _rng(seed, "query", index)
    topic = TOPICS[rng.choice(sorted(TOPICS))]
    length = rng.randint(min_tokens, max_tokens)
    start = list(rng.choice(QUESTION_STARTS))[: length - 1]
    mark = "?" if rng.random() < 0.5 else ""  # "?" is one more token
    body = _words(rng, topic, length - len(start) - len(mark))
    return " ".join([*start, *body]) + mark


def document(index: int, *, min_tokens: int = 200, max_tokens: int = 500, seed: int = 0) -> str:
    """Document `index`: sentences on one or two topics, between min_tokens and max_tokens."""
    _check_range(min_tokens, max_tokens, least=2)
    rng = _rng(seed, "document", index)
    names = rng.sample(sorted(TOPICS), 2)
    topics = [TOPICS[names[0]]] * 3 + [TOPICS[names[1]]]  # a main topic and a side topic
    remaining = rng.randint(min_tokens, max_tokens)
    sentences = []
    while remaining > 0:
        size = min(remaining, rng.randint(*SENTENCE_TOKENS))
        words = _words(rng, rng.choice(topics), size - 1) if size > 1 else []
        if words:
            words[0] = words[0].capitalize()  # tokenizes the same (uncased), reads better
        sentences.append(" ".join(words) + ".")
        remaining -= size
    return " ".join(sentences)


def queries(count: int, *, min_tokens: int = 4, max_tokens: int = 12, seed: int = 0) -> list[str]:
    """Queries 0..count-1."""
    return [query(i, min_tokens=min_tokens, max_tokens=max_tokens, seed=seed) for i in range(count)]


def documents(
    count: int, *, min_tokens: int = 200, max_tokens: int = 500, seed: int = 0, start: int = 0
) -> list[str]:
    """Documents start..start+count-1."""
    return [
        document(i, min_tokens=min_tokens, max_tokens=max_tokens, seed=seed)
        for i in range(start, start + count)
    ]


def context_documents(count: int, *, seed: int = 0) -> list[str]:
    """Short (16-48 token) documents for building context sets cheaply."""
    return documents(count, min_tokens=16, max_tokens=48, seed=seed + 1_000_003)


def token_count(text: str) -> int:
    """Tokens of a generated text (words and punctuation marks; no [CLS]/[SEP])."""
    return len(text.replace(".", " .").replace("?", " ?").split())


def parse_range(value: str) -> tuple[int, int]:
    """ "200-500" or "8" → (low, high)."""
    low, _, high = value.partition("-")
    pair = (int(low), int(high or low))
    _check_range(*pair, least=1)
    return pair


def _check_range(low: int, high: int, *, least: int) -> None:
    if not least <= low <= high:
        raise ValueError(f"token range {low}-{high} must satisfy {least} <= low <= high")
