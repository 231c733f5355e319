"""A persistent embedding cache on SQLite (WAL), keyed by ``(embedding_version, sha256(text))``.

Process safety comes from SQLite itself: WAL lets readers run beside one writer, and
``busy_timeout`` makes concurrent writers wait instead of failing. Each ``put_many`` is one
committed transaction; in WAL mode with ``synchronous=NORMAL`` a committed transaction survives a
crash (even ``kill -9``) of the writing process; only an OS crash or power loss may lose the last
transactions.

Thread safety: one connection per cache object, shared by all threads and guarded by a lock.
Queries are short (the slow part, encoding, happens outside the lock), so a lock is simpler than a
connection per thread and lets ``close()`` close everything.

A retrained encoder has a new ``embedding_version``, so it can never read vectors of the old one.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from embedder.errors import ArtifactError, InvalidInputError, VersionMismatchError
from embedder.profile import Profile, text_hash

logger = logging.getLogger(__name__)

#: Parameters per ``IN (...)`` query (SQLite's historical limit is 999 variables).
_CHUNK = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    embedding_version TEXT NOT NULL,
    text_hash BLOB NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (embedding_version, text_hash)
) WITHOUT ROWID
"""


class EmbeddingCache:
    """Vectors of one ``embedding_version``, stored in a shared SQLite file.

    Args:
        path: the SQLite file (created with its parent folders).
        embedding_version: only rows of this version are read or written.
        dim: vector dimension; rows of another size are treated as misses and overwritten.
        busy_timeout_ms: how long to wait for another process's write lock.
    """

    def __init__(
        self, path: str | Path, *, embedding_version: str, dim: int, busy_timeout_ms: int = 30_000
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.path = Path(path)
        self.embedding_version = embedding_version
        self.dim = dim
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ArtifactError(f"cannot open the embedding cache {self.path}: {err}") from err
        if str(mode).lower() != "wal":
            logger.warning(
                "cache %s: journal_mode is %s, not wal (file system without shm?)", self.path, mode
            )
        self._conn: sqlite3.Connection | None = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ArtifactError(f"the embedding cache {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; a damaged file (pages past its header, which open
        fine) becomes an ArtifactError naming it, not a raw sqlite3 error with no path."""
        with self._lock:
            try:
                yield self._connection()
            except sqlite3.DatabaseError as err:
                raise ArtifactError(
                    f"the embedding cache {self.path} cannot be used ({err}); delete the file "
                    "(it is rebuilt as profiles are embedded) or start without --cache"
                ) from None

    def get_many(self, hashes: Sequence[bytes]) -> list[np.ndarray | None]:
        """Look up vectors by text hash.

        Args:
            hashes: SHA-256 digests (``embedder.profile.text_hash``).

        Returns:
            One entry per hash, in order: a float32 ``(dim,)`` vector or None on a miss.
        """
        keys = [bytes(h) for h in hashes]
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._reading() as conn:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT text_hash, vector FROM embeddings "
                    f"WHERE embedding_version = ? AND text_hash IN ({marks})",
                    [self.embedding_version, *chunk],
                ).fetchall()
                for key, blob in rows:
                    if len(blob) == 4 * self.dim:
                        found[bytes(key)] = np.frombuffer(blob, dtype=np.float32).copy()
            result = [found.get(k) for k in keys]
            n_hit = sum(v is not None for v in result)
            self.hits += n_hit
            self.misses += len(result) - n_hit
        return result

    def put_many(self, hashes: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store vectors (replacing existing rows) in one committed transaction.

        Args:
            hashes: SHA-256 digests, one per row of ``vectors``.
            vectors: ``(n, dim)`` array.

        Raises:
            InvalidInputError: on a shape mismatch.
        """
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.dim or arr.shape[0] != len(hashes):
            raise InvalidInputError(
                f"put_many needs ({len(hashes)}, {self.dim}) vectors for {len(hashes)} hashes, "
                f"got shape {arr.shape}"
            )
        rows = [(self.embedding_version, bytes(h), arr[i].tobytes()) for i, h in enumerate(hashes)]
        if not rows:
            return
        with self._reading() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO embeddings (embedding_version, text_hash, vector) "
                    "VALUES (?, ?, ?)",
                    rows,
                )
            except BaseException:
                with contextlib.suppress(sqlite3.DatabaseError):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def __len__(self) -> int:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM embeddings WHERE embedding_version = ?",
                (self.embedding_version,),
            ).fetchone()
        return int(row[0])

    def stats(self) -> dict[str, Any]:
        """Counters since opening plus the number of stored rows of this version."""
        total = self.hits + self.misses
        return {
            "path": str(self.path),
            "embedding_version": self.embedding_version,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
            "rows": len(self),
        }

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class CachedEncoder:
    """The one cache path: texts -> cache lookup -> encode the misses -> write back -> vectors.

    Every entry point embeds through it: ``profile-embed embed`` and ``train-head`` directly,
    ``profile-embed predict``, the server and the batch job through ``heads.model.ProfileModel``.
    :meth:`encode_texts` runs the steps in one call; the server runs :meth:`lookup` and
    :meth:`encode_misses` apart, with its dynamic batcher in between.

    Args:
        encoder: a ``ProfileEncoder`` (anything with ``assemble``, ``encode_texts``,
            ``embedding_version`` and ``dim``).
        cache: an ``EmbeddingCache`` of the same version, or None to always encode.

    Raises:
        VersionMismatchError: when the cache belongs to another ``embedding_version`` or dim.
    """

    def __init__(self, encoder: Any, cache: EmbeddingCache | None) -> None:
        if cache is not None and (
            cache.embedding_version != encoder.embedding_version or cache.dim != encoder.dim
        ):
            raise VersionMismatchError(
                f"cache {cache.path} is opened for {cache.embedding_version} (dim {cache.dim}) "
                f"but the encoder is {encoder.embedding_version} (dim {encoder.dim})"
            )
        self._encoder = encoder
        self._cache = cache

    # Read-only: the pair was checked above, and a swapped half would serve another version's
    # vectors under this one's keys.
    @property
    def encoder(self) -> Any:
        """The encoder the misses go to (fixed at construction)."""
        return self._encoder

    @property
    def cache(self) -> EmbeddingCache | None:
        """The cache of the encoder's version, or None (fixed at construction)."""
        return self._cache

    @property
    def embedding_version(self) -> str:
        """The encoder's version."""
        return str(self.encoder.embedding_version)

    @property
    def dim(self) -> int:
        """The encoder's output dimension."""
        return int(self.encoder.dim)

    def encode(
        self, profiles: Sequence[Profile], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Embed profiles, reading hits from the cache and writing misses back.

        Args:
            profiles: the profiles, in order.
            batch_size: passed to the encoder for the misses.
            show_progress: progress bar over the misses.

        Returns:
            ``(n, dim)`` float32 in input order.
        """
        return self.encode_texts(
            self.encoder.assemble(profiles), batch_size=batch_size, show_progress=show_progress
        )

    def encode_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        show_progress: bool = False,
        hashes: Sequence[bytes] | None = None,
    ) -> np.ndarray:
        """Like :meth:`encode` for already assembled texts (``hashes``: their ``text_hash``)."""
        if self.cache is None:
            return self.encoder.encode_texts(
                texts, batch_size=batch_size, show_progress=show_progress
            )
        cached = self.lookup(texts, hashes=hashes)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        miss = [i for i, vec in enumerate(cached) if vec is None]
        for i, vec in enumerate(cached):
            if vec is not None:
                out[i] = vec
        if miss:
            out[miss] = self.encode_misses(
                [texts[i] for i in miss], batch_size=batch_size, show_progress=show_progress
            )
        logger.debug("cache: %d texts, %d missed", len(texts), len(miss))
        return out

    def lookup(
        self, texts: Sequence[str], *, hashes: Sequence[bytes] | None = None
    ) -> list[np.ndarray | None]:
        """Read the stored vectors of texts.

        Args:
            texts: assembled texts.
            hashes: their ``text_hash`` when the caller already has them.

        Returns:
            One entry per text: its float32 ``(dim,)`` vector, or None on a miss (always None
            without a cache).
        """
        if self.cache is None:
            return [None] * len(texts)
        return self.cache.get_many(list(hashes) if hashes is not None else text_hashes(texts))

    def encode_misses(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = 64,
        show_progress: bool = False,
        pass_overhead_tokens: int | None = None,
    ) -> np.ndarray:
        """Encode texts (each distinct text once) and write them to the cache before returning.

        Args:
            texts: assembled texts the cache does not hold.
            batch_size: most texts per forward pass; None: all distinct texts may share one.
            show_progress: progress bar.
            pass_overhead_tokens: ``ProfileEncoder.encode_texts``'s pass cut (None: the default).

        Returns:
            ``(n, dim)`` float32 in input order.
        """
        unique = list(dict.fromkeys(texts))
        options: dict[str, Any] = {}
        if pass_overhead_tokens is not None:
            options["pass_overhead_tokens"] = pass_overhead_tokens
        vectors = self.encoder.encode_texts(
            unique,
            batch_size=batch_size or max(1, len(unique)),
            show_progress=show_progress,
            **options,
        )
        if self.cache is not None and unique:
            self.cache.put_many(text_hashes(unique), vectors)
        if len(unique) == len(texts):
            return np.asarray(vectors)
        row = {t: i for i, t in enumerate(unique)}
        return np.asarray(vectors)[[row[t] for t in texts]]


def text_hashes(texts: Sequence[str]) -> list[bytes]:
    """``text_hash`` of each text, in order (the cache's keys)."""
    return [text_hash(t) for t in texts]
