"""Batch jobs on Ray Data: decisions for files of prompts or chat requests, with a router
artifact loaded once per worker (``bestroute batch route``), and the feature vectors of training
prompts (``bestroute batch features``); the ``scale`` extra installs Ray."""

from ._features import FeatureMaker, FeaturesReport, features_batch, read_features
from ._pipeline import BLOCK_BYTES, start_ray
from ._route import RESULT_SCHEMA, BatchReport, BatchRouter, read_rows, route_batch

__all__ = [
    "BLOCK_BYTES",
    "RESULT_SCHEMA",
    "BatchReport",
    "BatchRouter",
    "FeatureMaker",
    "FeaturesReport",
    "features_batch",
    "read_features",
    "read_rows",
    "route_batch",
    "start_ray",
]
