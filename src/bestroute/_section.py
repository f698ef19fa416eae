"""The base of every configuration section (a backend, a selector, the gateway's): unknown keys
are errors, values are frozen. It sits below every package so that any layer may declare one."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A configuration section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
