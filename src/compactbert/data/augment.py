"""Synonym-replacement data augmentation for distillation (TinyBERT / Combining Compressions style).

For every training example we make ``n_aug`` copies in which each content word is replaced, with
probability ``p``, by a WordNet synonym. Stop words, non-alphabetic tokens and words WordNet does not
know are left alone. Labels are kept: the teacher relabels nothing here, the distillation loss uses
the teacher's outputs on the augmented text anyway.

WordNet is read offline from Debian's ``wordnet-base`` package (``/usr/share/wordnet``) with NLTK's
:class:`~nltk.corpus.reader.wordnet.WordNetCorpusReader`; no ``nltk.download``. Debian ships the
``data.*``, ``index.*`` and ``*.exc`` files but not ``lexnames``, which NLTK's reader needs, so our
reader serves that one file from memory (the fixed table of WordNet 3.0's 45 lexicographer files). An NLTK-style WordNet
(``nltk_data/corpora/wordnet``) is used instead when Debian's is absent.

Example:
    >>> from compactbert.data.sources import Example
    >>> out = augment_examples([Example("a quick brown fox", None, 1)], n_aug=2, p=0.5, seed=0)
    >>> len(out)  # the original, then its two copies
    3
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError

DEBIAN_WORDNET_DIR = "/usr/share/wordnet"
_ENV_DIR = "COMPACTBERT_WORDNET_DIR"

# WordNet 3.0 lexicographer files (lexnames(5WN)): number, name, syntactic category.
_LEXNAMES = (
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1",
    "noun.artifact 1", "noun.attribute 1", "noun.body 1", "noun.cognition 1",
    "noun.communication 1", "noun.event 1", "noun.feeling 1", "noun.food 1", "noun.group 1",
    "noun.location 1", "noun.motive 1", "noun.object 1", "noun.person 1", "noun.phenomenon 1",
    "noun.plant 1", "noun.possession 1", "noun.process 1", "noun.quantity 1", "noun.relation 1",
    "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1", "verb.body 2",
    "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2",
    "adj.ppl 3",
)
_REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv"))

# English stop words (function words, auxiliaries, pronouns): never replaced. Written out here
# because NLTK's stopword corpus would need a download.
STOP_WORDS = frozenset(
    """
    a about above after again against all am an and any are aren't as at be because been before being
    below between both but by can cannot could couldn't did didn't do does doesn't doing don't down
    during each few for from further had hadn't has hasn't have haven't having he he'd he'll he's her
    here here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's
    its itself let's me more most mustn't my myself no nor not of off on once only or other ought our
    ours ourselves out over own same shan't she she'd she'll she's should shouldn't so some such than
    that that's the their theirs them themselves then there there's these they they'd they'll they're
    they've this those through to too under until up very was wasn't we we'd we'll we're we've were
    weren't what what's when when's where where's which while who who's whom why why's will with won't
    would wouldn't you you'd you'll you're you've your yours yourself yourselves also just may might
    must shall s t d ll m o re ve y n't 's
    """.split()
)

# Words (letters, inner apostrophes/hyphens) and everything between them, so text is rebuilt exactly.
_WORD_RE = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")

_state: dict[str, Any] = {}


def _reader_class():
    """NLTK's WordNet reader, serving a generated ``lexnames`` where the folder has none."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _OfflineWordNetReader(WordNetCorpusReader):
        def open(self, file):
            if file == "lexnames" and not os.path.isfile(os.path.join(str(self._root), "lexnames")):
                lines = [f"{i:02d}\t{n.split()[0]}\t{n.split()[1]}" for i, n in enumerate(_LEXNAMES)]
                return io.StringIO("\n".join(lines) + "\n")
            return super().open(file)

        def map_wn(self, version="wordnet"):
            # Maps synsets to NLTK's downloadable "wordnet" corpus for multilingual (OMW) look-ups,
            # which we do not use; computing it would need that download.
            return None

    return _OfflineWordNetReader


def wordnet():
    """Return NLTK's WordNet reader over the offline WordNet (cached for the process).

    Raises:
        UserError: if no WordNet is installed.
    """
    if "reader" in _state:
        return _state["reader"]
    import nltk.data

    candidates = [os.environ.get(_ENV_DIR, ""), DEBIAN_WORDNET_DIR]
    src = next((Path(c) for c in candidates if c and all((Path(c) / f).is_file() for f in _REQUIRED)), None)
    if src is None:
        try:
            src = Path(str(nltk.data.find("corpora/wordnet")))
        except LookupError:
            raise UserError(
                f"WordNet (needed for synonym augmentation) was not found in {DEBIAN_WORDNET_DIR} "
                f"or ${_ENV_DIR}: install it with `apt-get install wordnet-base` (Debian/Ubuntu)"
            ) from None
    # NLTK >= 3.9 only opens corpus files under its data path: authorise exactly this folder.
    if str(src) not in nltk.data.path:
        nltk.data.path.append(str(src))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions")  # no OMW: English only
        _state["reader"] = _reader_class()(str(src), None)
    return _state["reader"]


@functools.lru_cache(maxsize=65536)
def synonyms(word: str) -> tuple[str, ...]:
    """Sorted WordNet synonyms of ``word`` (lower case, any part of speech), without the word itself.

    Multi-word lemmas come back with spaces (``"look into"``).
    """
    w = word.lower()
    found = set()
    for synset in wordnet().synsets(w):
        for lemma in synset.lemma_names():
            name = lemma.replace("_", " ").lower()
            if name != w and name.isascii():
                found.add(name)
    return tuple(sorted(found))


def _match_case(src: str, repl: str) -> str:
    if src.isupper() and len(src) > 1:
        return repl.upper()
    if src[:1].isupper():
        return repl[:1].upper() + repl[1:]
    return repl


def augment_text(text: str, p: float, rng: random.Random) -> str:
    """Replace each content word of ``text`` with probability ``p`` by a random WordNet synonym."""
    if p <= 0.0 or not text:
        return text
    pieces: list[str] = []
    last = 0
    for m in _WORD_RE.finditer(text):
        word = m.group(0)
        pieces.append(text[last : m.start()])
        last = m.end()
        if word.lower() in STOP_WORDS:
            pieces.append(word)
            continue
        choices = synonyms(word)
        if choices and rng.random() < p:
            pieces.append(_match_case(word, rng.choice(choices)))
        else:
            pieces.append(word)
    pieces.append(text[last:])
    return "".join(pieces)


def _copy(example: Any, **changes: Any) -> Any:
    if dataclasses.is_dataclass(example):
        return dataclasses.replace(example, **changes)
    return type(example)(**{**vars(example), **changes})


def augment_examples(
    examples: Sequence[Any], n_aug: int, p: float, seed: int = 0, include_original: bool = True
) -> list[Any]:
    """Synonym-replacement augmentation of a list of examples.

    Args:
        examples: objects with ``text_a``, ``text_b`` (or None) and ``label``
            (``compactbert.data.sources.Example``).
        n_aug: augmented copies per example (>= 0).
        p: probability of replacing each content word that has synonyms, in [0, 1].
        seed: the result depends only on ``seed``, the example's position and the copy number.
        include_original: put each original example before its copies.

    Returns:
        ``[orig_0, aug_0_1, ..., aug_0_K, orig_1, ...]`` (originals left out if not
        ``include_original``); labels unchanged.

    Raises:
        UserError: on a bad ``n_aug`` or ``p``, or if WordNet is not installed.
    """
    if isinstance(n_aug, bool) or not isinstance(n_aug, int) or n_aug < 0:
        raise UserError(f"augmentation n_aug={n_aug!r} is invalid: use a whole number >= 0")
    if not 0.0 <= float(p) <= 1.0:
        raise UserError(f"augmentation p={p!r} is invalid: use a probability between 0 and 1")
    if n_aug > 0 and p > 0:
        wordnet()  # fail early, with the install hint
    out: list[Any] = []
    for i, ex in enumerate(examples):
        if include_original:
            out.append(ex)
        for k in range(n_aug):
            # A string seed is hashed with SHA-512 by `random`: stable across processes and runs.
            rng = random.Random(f"{seed}:{i}:{k}")
            text_b = ex.text_b
            changes = {"text_a": augment_text(ex.text_a, p, rng)}
            if text_b is not None:
                changes["text_b"] = augment_text(text_b, p, rng)
            out.append(_copy(ex, **changes))
    return out
