"""Prompt strategies: how a request is put to a model and how its reply becomes an answer, with
the program-of-thought sandbox. An option's model may be an arm, ``model@strategy``."""

from ._sandbox import ProgramResult, SandboxLimits, program_text, run_program
from ._strategy import SAMPLING_FIELDS, Strategy

__all__ = ["SAMPLING_FIELDS", "ProgramResult", "SandboxLimits", "Strategy", "program_text", "run_program"]
