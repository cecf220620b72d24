"""What every node of a run can reach that is not state: passed as LangGraph's run context."""

from __future__ import annotations

from dataclasses import dataclass

from optigraph.engine.llm import LLM
from optigraph.engine.streaming import StreamSink


@dataclass
class RunContext:
    """Run-scoped, never checkpointed: the LLM client of this run and the client's stream, if any."""

    run_id: str
    llm: LLM
    sink: StreamSink | None = None
