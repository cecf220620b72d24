"""What every node of a run can reach that is not state: passed as LangGraph's run context."""

from __future__ import annotations

from dataclasses import dataclass

from optigraph.core.llm import LLM
from optigraph.core.streaming import StreamSink
from optigraph.sandbox import DEFAULT_LEVEL, SandboxLevel


@dataclass
class RunContext:
    """Run-scoped, never checkpointed: the LLM client of this run, the client's stream, if any, and
    the sandbox level the server requires before it runs model-written code (the strictest unless
    the server's settings say otherwise)."""

    run_id: str
    llm: LLM
    sink: StreamSink | None = None
    sandbox_level: SandboxLevel = DEFAULT_LEVEL
