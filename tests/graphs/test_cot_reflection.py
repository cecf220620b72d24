import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, run_approach  # noqa: E402

from optigraph.core.streaming import StreamSink  # noqa: E402
from optigraph.errors import InvalidRequest  # noqa: E402
from optigraph.graphs.cot_reflection import (  # noqa: E402
    REFLECTION_INSTRUCTIONS,
    SPEC,
    reflection_output,
)

MESSAGES = [{"role": "system", "content": "Be precise."}, {"role": "user", "content": "Is 91 prime?"}]
REPLY = (
    "<thinking>91 looks prime.\n<reflection>Check 7: 7 * 13 = 91, so it is not.</reflection>\n"
    "Corrected.</thinking>\n<output>No: 91 = 7 x 13.</output>"
)


async def test_returns_the_output_section():
    backend = ScriptedBackend(lambda body: REPLY)
    state, _ = await run_approach(SPEC, MESSAGES, backend)
    assert state["answers"][0]["message"]["content"] == "No: 91 = 7 x 13."
    assert len(backend.calls) == 1
    sent = backend.calls[0]
    assert sent["messages"][0]["role"] == "system"
    assert sent["messages"][0]["content"].startswith("Be precise.\n\n")
    assert REFLECTION_INSTRUCTIONS in sent["messages"][0]["content"]
    assert sent["messages"][1] == MESSAGES[1]
    assert sent["temperature"] == 0.6
    assert state["notes"] == [REPLY]
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_full_response_on_request_and_streamed():
    sink = StreamSink()
    backend = ScriptedBackend(lambda body: REPLY)
    state, _ = await run_approach(
        SPEC,
        MESSAGES,
        backend,
        params={"return_full_response": True},
        request={"temperature": 0.2},
        sink=sink,
        stream_choice=0,
    )
    assert state["answers"][0]["message"]["content"] == REPLY
    assert backend.calls[0]["temperature"] == 0.2 and backend.calls[0]["stream"] is True
    assert sink.streamed == {0}


async def test_not_streamed_when_only_the_output_is_returned():
    sink = StreamSink()
    backend = ScriptedBackend(lambda body: REPLY)
    await run_approach(SPEC, MESSAGES, backend, sink=sink, stream_choice=0)
    assert "stream" not in backend.calls[0] and not sink.streamed


@pytest.mark.parametrize(
    ("text", "output"),
    [
        (REPLY, "No: 91 = 7 x 13."),
        ("<thinking>x</thinking><output>unclosed answer", "unclosed answer"),
        ("<thinking>x<reflection>y</reflection></thinking>\nThe answer is no.", "The answer is no."),
        ("Just an answer.", "Just an answer."),
    ],
)
def test_reflection_output(text, output):
    assert reflection_output(text) == output


def test_params():
    assert SPEC.validate_params({}) == {"return_full_response": False, "temperature": None}
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"temperature": 5})
