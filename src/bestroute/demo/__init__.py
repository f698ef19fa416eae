"""The demos that combine the applications: the real loop (replay backends of real routing data
behind the gateway; `bestroute demo`) and the local loop (llama.cpp models; `bestroute demo
--local`)."""

from ._local import LoopSettings, ask, start, train_and_evaluate
from ._processes import Processes, stop_on_sigterm
from ._real import DemoSettings, send, serve, summarize, table, train, write_summary

__all__ = [
    "DemoSettings",
    "LoopSettings",
    "Processes",
    "ask",
    "send",
    "serve",
    "start",
    "stop_on_sigterm",
    "summarize",
    "table",
    "train",
    "train_and_evaluate",
    "write_summary",
]
