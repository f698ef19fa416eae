"""Batch jobs on Ray Data: decisions for files of prompts or chat requests, with a router
artifact loaded once per worker (``bestroute batch route``), and the feature vectors of training
prompts (``bestroute batch features``); the ``scale`` extra installs Ray."""

from ._features import FeatureMaker, FeaturesReport, features_batch, read_features
from ._route import RESULT_SCHEMA, BatchReport, BatchRouter, route_batch

__all__ = [
    "RESULT_SCHEMA",
    "BatchReport",
    "BatchRouter",
    "FeatureMaker",
    "FeaturesReport",
    "features_batch",
    "read_features",
    "route_batch",
]
