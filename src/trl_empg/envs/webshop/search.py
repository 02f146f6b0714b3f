"""WebShop's product search: BM25 over each product's text with bm25s, built once per catalogue and cached on disk.

WebShop indexes, per product, the lower-cased title, description, first bullet point and option text with Lucene
(pyserini's ``DefaultLuceneDocumentGenerator``) and returns the top 50 hits. This index holds the same text in bm25s
with Lucene's BM25 variant and pyserini's parameters (k1 = 0.9, b = 0.4), English stop words and a light plural
stemmer (Lucene's English analyzer stems with Porter; PyStemmer is not a dependency). Documents that share no term
with the query are not hits, as in Lucene; ties keep catalogue order.

The index is keyed by a hash of every document's text and the analyzer version, stored under
``<cache_dir>/index-<key>/``: it is written to a temporary directory beside it and moved into place with
``os.replace``, so concurrent workers never read a half-written index (the loser of a race drops its copy).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

#: WebShop's ``SEARCH_RETURN_N``: hits per search (shown 10 per page).
SEARCH_RETURN_N = 50
#: Bump when the analyzer or the scoring parameters change, so that cached indexes are rebuilt.
ANALYZER_VERSION = 1
BM25_PARAMS = {"method": "lucene", "k1": 0.9, "b": 0.4}
_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset(STOPWORDS_EN)


def stem(word: str) -> str:
    """Strip English plural endings ("shirts" -> "shirt", "batteries" -> "battery", "boxes" -> "box")."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def analyze(text: str) -> list[str]:
    """Lower-case alphanumeric tokens without stop words, plurals stemmed."""
    return [stem(token) for token in _TOKEN.findall(text.lower()) if token not in _STOP]


class ProductSearch:
    """Top-50 BM25 search over ``documents`` (one text per product, in catalogue order).

    Args:
        documents: the text of each product; hit ``i`` is product ``i``.
        cache_dir: where the index is cached (one subdirectory per distinct document set).
    """

    def __init__(self, documents: Sequence[str], cache_dir: str | os.PathLike[str]) -> None:
        digest = hashlib.sha256(f"v{ANALYZER_VERSION}:{bm25s.__version__}:{BM25_PARAMS}".encode())
        for text in documents:
            digest.update(text.encode())
            digest.update(b"\0")
        self.num_documents = len(documents)
        self.path = Path(cache_dir).expanduser() / f"index-{digest.hexdigest()[:24]}"
        #: Seconds spent building the index here (0.0 when it was loaded from the cache).
        self.build_seconds = 0.0
        if not (self.path / "params.index.json").is_file():
            self.build_seconds = self._build(documents)
        self._retriever = bm25s.BM25.load(str(self.path), show_progress=False)

    def _build(self, documents: Sequence[str]) -> float:
        started = time.perf_counter()
        # bm25s cannot index an empty document list of tokens; give empty texts a token no query can contain.
        corpus = [analyze(text) or ["\0"] for text in documents]
        retriever = bm25s.BM25(**BM25_PARAMS)
        retriever.index(corpus, show_progress=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}-", dir=self.path.parent))
        try:
            retriever.save(str(staging), show_progress=False)
            try:
                os.replace(staging, self.path)
            except OSError:
                if not (self.path / "params.index.json").is_file():
                    raise
                # Another process finished the same index first: keep theirs.
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return time.perf_counter() - started

    def search(self, query: str) -> list[int]:
        """Indices of the products that best match ``query``, best first, at most :data:`SEARCH_RETURN_N`."""
        tokens = [token for token in analyze(query) if token in self._retriever.vocab_dict]
        if not tokens:
            return []
        scores = self._retriever.get_scores(tokens)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > SEARCH_RETURN_N:
            hits = hits[np.argpartition(-scores[hits], SEARCH_RETURN_N - 1)[:SEARCH_RETURN_N]]
        # Best score first, ties in catalogue order (lexsort sorts by its last key first).
        order = np.lexsort((hits, -scores[hits]))
        return hits[order].tolist()
