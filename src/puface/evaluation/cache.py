"""A content-keyed store for defended images and embeddings, so experiments never recompute them.

Keys are (namespace, content hash): the namespace names the function (a defense's `cache_key`, an
embedder's fingerprint), the hash is that of the input image's uint8 pixels. One SQLite file
(`$PUFACE_HOME/evaluation/cache.sqlite` by default) holds everything; writes are transactions, so an
interrupted run leaves a consistent cache, and several processes may share it.
"""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from ..utils.paths import cache_dir


class ContentCache:
    """Arrays keyed by (namespace, key) in one SQLite file; `path=":memory:"` keeps them in RAM.

    `get(kind, namespace, keys)` -> {key: array} for the keys present; `put(kind, namespace, items)`.
    `kind` is "images" (uint8, zlib-compressed) or "embeddings" (float32).
    """

    KINDS = ("images", "embeddings")

    def __init__(self, path: str | Path | None = None):
        if path is None:
            path = cache_dir("evaluation") / "cache.sqlite"
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=120)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        for kind in self.KINDS:
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {kind} "
                "(ns TEXT, key TEXT, dtype TEXT, shape TEXT, data BLOB, PRIMARY KEY (ns, key))"
            )
        self._db.commit()

    def _check(self, kind: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown cache kind {kind!r}")

    def get(self, kind: str, namespace: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        self._check(kind)
        keys = list(dict.fromkeys(keys))
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            rows = self._db.execute(
                f"SELECT key, dtype, shape, data FROM {kind} WHERE ns = ? AND key IN ({','.join('?' * len(chunk))})",
                [namespace, *chunk],
            ).fetchall()
            for key, dtype, shape, data in rows:
                raw = zlib.decompress(data) if kind == "images" else data
                out[key] = np.frombuffer(raw, dtype=dtype).reshape(tuple(int(s) for s in shape.split("x") if s)).copy()
        return out

    def put(self, kind: str, namespace: str, items: dict[str, np.ndarray]) -> None:
        self._check(kind)
        rows = []
        for key, a in items.items():
            a = np.ascontiguousarray(a)
            raw = a.tobytes()
            rows.append(
                (
                    namespace,
                    key,
                    a.dtype.str,
                    "x".join(map(str, a.shape)),
                    zlib.compress(raw, 1) if kind == "images" else raw,
                )
            )
        with self._db:
            self._db.executemany(f"INSERT OR REPLACE INTO {kind} VALUES (?, ?, ?, ?, ?)", rows)

    def count(self, kind: str, namespace: str | None = None) -> int:
        self._check(kind)
        if namespace is None:
            return self._db.execute(f"SELECT COUNT(*) FROM {kind}").fetchone()[0]
        return self._db.execute(f"SELECT COUNT(*) FROM {kind} WHERE ns = ?", (namespace,)).fetchone()[0]

    def close(self) -> None:
        self._db.close()


__all__ = ["ContentCache"]
