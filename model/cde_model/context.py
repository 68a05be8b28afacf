"""Context policy: which N documents the first stage embeds (numpy only, no torch).

cde-small-v1 wants exactly N = `transductive_corpus_size` context documents, sampled from the
target corpus. `select_context` turns any non-empty document list into exactly N documents;
`default_context` is the built-in context for when no corpus is at hand (the authors report
random strings cost little quality: MTEB 65.0 → 63.8).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_SEED = 42
DEFAULT_CONTEXT_SEED = 20241003  # fixed forever: changing it changes every default context

# Common English words; default-context strings are drawn from them.
_WORD_TEXT = """
the of and to in is was for on that with as by at from his her an were are which this be or
have had not but one all their they there been has when who will more no if out so said what up
its about into than them can only other new some could time these two may then do first any my
now such like our over man me even most made after also did many before must through back years
where much your way well down should because each just those people how too little state good
very make world still own see men work long get here between both life being under never day
same another know while last might us great old year off come since against go came right used
take three states himself few house use during without again place around however home small
found thought went say part once general high upon school every don does got united left number
course war until always away something fact though water less public put think almost hand
enough far took head yet government system better set told nothing night end why called eyes
find going look asked later knew point next program city business give group toward young days
let room president side social given present several order national possible rather second face
per among form important often things looked early white case john become large big need four
within felt along children saw best church ever least power development light thing seemed
family interest want members mind country area others done turned although open god service
certain kind problem began different door thus help sense means whole matter perhaps itself
york times law human line above name example action company hands local show whether five
history gave today either act feet across taken past quite anything having seen death
experience body word half really week free car field yes moment market money level story river
garden music energy
"""
_WORDS = tuple(_WORD_TEXT.split())
_MIN_WORDS, _MAX_WORDS = 6, 16


def select_context(documents: Sequence[str], n: int, seed: int = DEFAULT_SEED) -> list[str]:
    """Exactly `n` context documents drawn from `documents`, deterministically.

    - more than n: a seeded sample without replacement, `default_rng(seed).choice(len, n,
      replace=False)` (the indices mteb's CDE wrapper draws);
    - exactly n: the documents as given;
    - fewer (at least one): every document n // len times, plus a seeded sample without
      replacement for the remainder, so each appears as evenly as possible.
    """
    if n < 1:
        raise ValueError(f"context size must be at least 1, got {n}")
    count = len(documents)
    if count == 0:
        raise ValueError("at least one context document is needed")
    if count == n:
        return list(documents)
    rng = np.random.default_rng(seed)
    if count > n:
        indices = rng.choice(count, size=n, replace=False)
        return [documents[int(i)] for i in indices]
    repeats, remainder = divmod(n, count)
    extra = sorted(rng.choice(count, size=remainder, replace=False).tolist()) if remainder else []
    return list(documents) * repeats + [documents[i] for i in extra]


def default_context(n: int) -> list[str]:
    """`n` pseudo-random word strings: the built-in context when no corpus is given.

    String i is 6-16 words drawn uniformly from a fixed list of common English words by
    `numpy.random.default_rng(DEFAULT_CONTEXT_SEED)`, in order, so `default_context(k)` is a
    prefix of `default_context(n)` for k < n and the result never changes between releases.
    """
    if n < 0:
        raise ValueError(f"context size must not be negative, got {n}")
    rng = np.random.default_rng(DEFAULT_CONTEXT_SEED)
    strings = []
    for _ in range(n):
        length = int(rng.integers(_MIN_WORDS, _MAX_WORDS + 1))
        strings.append(" ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), length)))
    return strings
