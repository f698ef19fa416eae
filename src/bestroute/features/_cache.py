"""A disk cache of text embeddings keyed by a hash of (extractor id, text)."""

import hashlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """``$BESTROUTE_CACHE_DIR`` or ``~/.cache/bestroute``."""
    return Path(os.environ.get("BESTROUTE_CACHE_DIR", Path.home() / ".cache" / "bestroute"))


class EmbeddingCache:
    """SQLite-backed store of float32 vectors; safe to share between processes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB)")

    def embed(self, namespace: str, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors of ``texts``: cached ones read, the others computed by ``compute`` and stored."""
        keys = [hashlib.sha256(f"{namespace}\0{t}".encode()).hexdigest() for t in texts]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):  # SQLite limits the parameters of one query
            chunk = keys[start : start + 500]
            rows = self._db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        missing = sorted({k: i for i, k in enumerate(keys) if k not in found}.items(), key=lambda kv: kv[1])
        if missing:
            vectors = np.asarray(compute([texts[i] for _, i in missing]), dtype=np.float32)
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                    [(k, v.tobytes()) for (k, _), v in zip(missing, vectors)],
                )
            found.update((k, v) for (k, _), v in zip(missing, vectors))
        return np.stack([found[k] for k in keys])

    def close(self) -> None:
        self._db.close()
