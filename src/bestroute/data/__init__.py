"""Routing data: schema, readers and the split."""

from ._dataset import RoutingDataset
from ._demo import demo_data_path, zeroeval_slice_path
from ._readers import (
    find_table,
    iter_rows,
    load_dataset,
    read_models,
    read_native,
    read_reference,
    read_routerbench,
    validate_record,
)
from ._schema import ARM_SEPARATOR, STRATEGY_NAME, ModelPrice, PromptRecord, ResponseRecord, arm_name, arm_parts
from ._split import Split, in_sample, split_prompts
from ._writer import ResponseAppender, RoutingDataWriter, write_catalog, write_prompts, write_routing_data

__all__ = [
    "ARM_SEPARATOR",
    "STRATEGY_NAME",
    "ModelPrice",
    "PromptRecord",
    "ResponseAppender",
    "ResponseRecord",
    "RoutingDataWriter",
    "RoutingDataset",
    "Split",
    "arm_name",
    "arm_parts",
    "demo_data_path",
    "find_table",
    "in_sample",
    "iter_rows",
    "load_dataset",
    "read_models",
    "read_native",
    "read_reference",
    "read_routerbench",
    "split_prompts",
    "validate_record",
    "write_catalog",
    "write_prompts",
    "write_routing_data",
    "zeroeval_slice_path",
]
