"""`cot_reflection`: chain of thought with self-reflection in one call. The model thinks in
`<thinking>`, checks its reasoning in `<reflection>`, then answers in `<output>`; the client gets
the `<output>` section only (or everything, with `return_full_response`). No paper defines this
exact prompt; related work on self-reflection at inference time: "Self-Refine" (Madaan et al.,
arXiv 2303.17651) and "Reflexion" (Shinn et al., arXiv 2303.11366), which use several calls where
this uses one.

Graph: START -> reflect -> END. One call; it streams only when the full response is returned.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import StateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.answers import tag_content
from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import ApproachState
from optigraph.graphs.chain import chain
from optigraph.nodes.common import answer_of, generation_params, text_answer
from optigraph.nodes.generate import generate_final
from optigraph.nodes.sample import param_or_client
from optigraph.nodes.transform import with_system_instructions

REFLECTION_INSTRUCTIONS = """You are an AI assistant that uses a chain of thought with reflection \
to answer queries. Follow these steps:

1. Think through the problem step by step inside <thinking> tags.
2. Reflect on your thinking inside <reflection> tags, placed within the <thinking> section: check \
for errors, gaps or better approaches, and correct yourself if needed.
3. Give your final, concise answer inside <output> tags, after the </thinking> tag.

The <thinking> and <reflection> sections are for your reasoning only. The <output> section must \
contain the complete answer to the query, since it is the only part the user sees.

Use this format:
<thinking>
[your step-by-step reasoning]
<reflection>
[your reflection on the reasoning, with any corrections]
</reflection>
[further reasoning after the reflection, if needed]
</thinking>
<output>
[your final answer]
</output>"""

DEFAULT_TEMPERATURE = 0.6


class CotReflectionParams(ApproachParams):
    return_full_response: bool = Field(False, description="Return thinking and reflection too, not only <output>.")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE)


def reflection_output(text: str) -> str:
    """The `<output>` section; else what follows `</reflection>` (minus tags); else the whole text."""
    output = tag_content(text, "output")
    if output is not None:
        return output
    lowered = text.lower()
    end = lowered.rfind("</reflection>")
    if end >= 0:
        rest = text[end + len("</reflection>") :]
        rest = rest.replace("</thinking>", "").replace("</THINKING>", "").strip()
        if rest:
            return rest
    return text.strip()


async def reflect(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    full = bool((state.get("params") or {}).get("return_full_response"))
    messages = with_system_instructions(state["messages"], REFLECTION_INSTRUCTIONS)
    call = generation_params(state, temperature=param_or_client(state, "temperature", DEFAULT_TEMPERATURE))
    if full:
        completion = await generate_final(state, runtime, messages, node="reflect", **call)
        return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}
    # Only the <output> section is returned, so the tokens cannot be streamed as they come.
    completion = await runtime.context.llm.chat(messages, node="reflect", **call)
    choice = completion.choices[0]
    return {
        "answers": [text_answer(reflection_output(completion.text), choice.get("finish_reason") or "stop")],
        "notes": [completion.text],
        "usage": completion.usage,
    }


def build() -> StateGraph:
    return chain(("reflect", reflect))


SPEC = ApproachSpec(
    name="cot_reflection",
    description="Chain of thought with reflection: <thinking>, <reflection>, then the <output> answer.",
    build=build,
    params=CotReflectionParams,
    papers=(),
    calls="1",
    rounds="1",
    streams_final=False,
)
