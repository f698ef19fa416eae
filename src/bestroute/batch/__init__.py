"""Batch routing on Ray Data: decisions for files of prompts or chat requests, with a router
artifact loaded once per worker (``bestroute batch route``; the ``scale`` extra installs Ray)."""

from ._route import RESULT_SCHEMA, BatchReport, BatchRouter, route_batch

__all__ = ["RESULT_SCHEMA", "BatchReport", "BatchRouter", "route_batch"]
