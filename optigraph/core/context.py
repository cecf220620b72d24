"""What every node of a run can reach that is not state: passed as LangGraph's run context."""

from __future__ import annotations

from dataclasses import dataclass

from optigraph.config import Settings
from optigraph.core.llm import LLM
from optigraph.core.streaming import StreamSink


@dataclass
class RunContext:
    """Run-scoped, never checkpointed: the LLM client of this run and the client's stream, if any."""

    run_id: str
    llm: LLM
    sink: StreamSink | None = None
    settings: Settings | None = None  # the server's settings (plugins read their operator options here)
