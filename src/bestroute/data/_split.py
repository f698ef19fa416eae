"""Deterministic train / validation / test split by prompt id."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._exceptions import DataError


@dataclass(frozen=True)
class Split:
    """Indices of the prompts in each part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_prompts(
    prompt_ids: Sequence[str], *, seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
) -> Split:
    """Assign each prompt by a hash of ``(seed, prompt_id)``.

    A prompt's part depends only on its id and the seed, so adding prompts to a dataset never
    moves the others between parts.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    position = np.array([_position(f"{seed}:{pid}") for pid in prompt_ids])
    cut_train, cut_val = fractions[0], fractions[0] + fractions[1]
    return Split(
        train=np.flatnonzero(position < cut_train),
        val=np.flatnonzero((position >= cut_train) & (position < cut_val)),
        test=np.flatnonzero(position >= cut_val),
    )


def in_sample(prompt_id: str, fraction: float, *, seed: int = 0) -> bool:
    """Whether ``prompt_id`` is in a deterministic sample of about ``fraction`` of all prompts:
    by a hash of its own (independent of the split's), so a sample keeps the split's proportions,
    a larger fraction holds every prompt of a smaller one, and it can be drawn while reading."""
    if not 0 < fraction <= 1:
        raise DataError(f"a sample is a fraction in (0, 1], got {fraction}")
    return _position(f"sample:{seed}:{prompt_id}") < fraction


def _position(key: str) -> float:
    """A uniform number in [0, 1) from the hash of ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
