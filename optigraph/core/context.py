"""What every node of a run can reach that is not state: passed as LangGraph's run context."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from optigraph.config import Settings
from optigraph.core.backend import Backend
from optigraph.core.llm import LLM
from optigraph.core.streaming import StreamSink
from optigraph.errors import InvalidRequest
from optigraph.memory.conversations import ConversationStore
from optigraph.sandbox import DEFAULT_LEVEL, SandboxLevel


@dataclass
class RunContext:
    """Run-scoped, never checkpointed: the LLM client of this run, the client's stream, if any, and
    the sandbox level the server requires before it runs model-written code (the strictest unless
    the server's settings say otherwise), and the server's conversation store (None where the run
    has no database, e.g. a Runner built without one)."""

    run_id: str
    llm: LLM
    sink: StreamSink | None = None
    sandbox_level: SandboxLevel = DEFAULT_LEVEL
    settings: Settings | None = None  # the server's settings (plugins read their operator options here)
    upstreams: Mapping[str, Backend] = field(default_factory=dict)  # the server's named upstreams
    store: ConversationStore | None = None  # conversation memory on the server's database
    tenant: str | None = None  # whose run this is: conversation memory is kept per tenant

    def llm_for(self, upstream: str, model: str | None = None) -> LLM:
        """A client of this run on the named upstream (its own key and capabilities; same budget,
        same run record, its calls counted in the run's usage). `model` defaults to the run's."""
        backend = self.upstreams.get(upstream)
        if backend is None:
            raise InvalidRequest(
                f"no upstream named {upstream!r}; configured: {', '.join(sorted(self.upstreams)) or 'none'}",
                code="unknown_upstream",
            )
        return self.llm.sibling(backend, model)
