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
    position = np.array(
        [int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:8], "big") / 2**64 for pid in prompt_ids]
    )
    cut_train, cut_val = fractions[0], fractions[0] + fractions[1]
    return Split(
        train=np.flatnonzero(position < cut_train),
        val=np.flatnonzero((position >= cut_train) & (position < cut_val)),
        test=np.flatnonzero(position >= cut_val),
    )
