import itertools
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.core.streaming import StreamSink  # noqa: E402
from optigraph.errors import BudgetExceeded, InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.mars import SPEC, effective_params  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 17 x 3?"}]
# Three agents, nothing but exploring, one check each, one improvement round.
SMALL = {
    "enable_aggregation": False,
    "enable_strategy_network": False,
    "verification_passes_required": 1,
    "max_iterations": 1,
}
FAIL = "Issues: issue in {text}\nScore: 3\nVerdict: INCORRECT"
PASS = "Issues: none\nScore: 8\nVerdict: CORRECT"


def between(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0]


def kind(body):
    prompt = last_user(body)
    if prompt.startswith("Check the proposed solution"):
        return "verify"
    if "describe the strategy of this solution" in prompt:
        return "strategize"
    if "Other solvers approached" in prompt:
        return "enhance"
    if "Feedback on this response:" in prompt:
        return "improve"
    if "candidate responses to the query" in prompt:
        return "synthesize" if body["temperature"] == 0.3 else "aggregate"
    return "explore"


def checked(body):
    return between(last_user(body), "Proposed solution:\n", "\n\nGo through")


def improving(body):
    prompt = last_user(body)
    return (
        between(prompt, "A response to the query:\n", "\n\nFeedback"),
        between(prompt, "Feedback on this response:\n", "\n\nWrite"),
    )


def script(*, explore=None, check=None, improve=None, aggregate="aggregated", synthesis="synthesized"):
    """Explorers answer by temperature; checks by the text checked (default: fail, naming it);
    rewrites by default reach a new answer each (so no two solutions agree)."""
    rewrites = itertools.count(100)

    def respond(body):
        k = kind(body)
        if k == "explore":
            t = body["temperature"]
            return (explore or {}).get(t, f"agent at {t}: \\boxed{{{int(t * 10)}}}")
        if k == "verify":
            text = checked(body)
            return check(text) if check else FAIL.format(text=text)
        if k == "strategize":
            return "strategy of " + between(last_user(body), "A solution to the query:\n", "\n\nIn at most")
        if k in ("improve", "enhance"):
            text, _ = improving(body)
            return improve(text) if improve else f"{text} ({k}d) \\boxed{{{next(rewrites)}}}"
        return aggregate if k == "aggregate" else synthesis

    return respond


def kinds(backend):
    out: dict[str, int] = {}
    for body in backend.calls:
        out[kind(body)] = out.get(kind(body), 0) + 1
    return out


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"num_agents": 2, "aggregation_loops": 1, "aggregation_groups": 1, "population_size": 2, "max_iterations": 1},
        {**SMALL, "verification_passes_required": 2, "max_iterations": 2},
    ],
)
async def test_the_full_path_matches_the_formula(params):
    backend = ScriptedBackend(script())
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params))
    assert state["answers"][0]["message"]["content"] == "synthesized"
    assert kind(backend.calls[-1]) == "synthesize"
    for body in backend.calls:
        assert "reasoning" not in body and "reasoning_effort" not in body
    assert state["usage"]["calls"] == len(backend.calls)


async def test_default_configuration_costs():
    backend = ScriptedBackend(script())
    await run_approach(SPEC, QUESTION, backend)
    params = SPEC.validate_params(None)
    assert evaluate(SPEC.calls, params) == 169 and evaluate(SPEC.rounds, params) == 16
    # 3 agents, RSA 3 x 2, strategies 3 + enhancements 3; 9 solutions x 2 checks, then 5 x (9 + 18)
    assert kinds(backend) == {
        "explore": 3,
        "aggregate": 6,
        "strategize": 3,
        "enhance": 3,
        "verify": 108,
        "improve": 45,
        "synthesize": 1,
    }
    explore_temps = sorted(b["temperature"] for b in backend.calls if kind(b) == "explore")
    assert explore_temps == [0.3, 0.6, 1.0]


async def test_verification_stops_early_when_enough_are_verified():
    backend = ScriptedBackend(script(check=lambda text: PASS))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend) == {"explore": 3, "aggregate": 6, "strategize": 3, "enhance": 3, "verify": 18}
    assert len(backend.calls) < evaluate(SPEC.calls, SPEC.validate_params(None))
    assert any("9 of 9 solutions verified" in n for n in state["notes"])


async def test_a_verified_solution_beats_the_majority():
    explore = {0.3: "17 x 3 = 51. \\boxed{51}", 0.6: "\\boxed{54}", 1.0: "so \\boxed{54}"}
    check = lambda text: PASS if "51" in text else FAIL.format(text=text)  # noqa: E731
    backend = ScriptedBackend(script(explore=explore, check=check))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**SMALL, "max_iterations": 0})
    assert state["answers"][0]["message"]["content"] == "17 x 3 = 51. \\boxed{51}"
    assert "synthesize" not in kinds(backend)


async def test_majority_vote_when_nothing_is_verified():
    explore = {0.3: "\\boxed{51}", 0.6: "\\boxed{54}", 1.0: "so \\boxed{54}"}
    scores = {"\\boxed{51}": 9, "\\boxed{54}": 4, "so \\boxed{54}": 6}
    check = lambda text: f"Issues: x\nScore: {scores[text]}\nVerdict: INCORRECT"  # noqa: E731
    backend = ScriptedBackend(script(explore=explore, check=check))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**SMALL, "max_iterations": 0})
    assert state["answers"][0]["message"]["content"] == "so \\boxed{54}"  # the better-scored of the two
    assert "synthesize" not in kinds(backend)
    assert any("2 of 3 agree on '54'" in n for n in state["notes"])


async def test_synthesis_is_the_streamed_last_resort_over_the_best_scored():
    scores = {0.3: 2, 0.6: 9, 1.0: 5}
    check = lambda text: f"Score: {scores[float(text.split()[2][:-1])]}\nVerdict: INCORRECT"  # noqa: E731
    backend = ScriptedBackend(script(check=check))
    sink = StreamSink()
    params = {**SMALL, "max_iterations": 0, "num_agents": 3}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params, sink=sink, stream_choice=0)
    synthesis = backend.calls[-1]
    assert kind(synthesis) == "synthesize" and synthesis.get("stream") is True
    prompt = last_user(synthesis)
    assert prompt.index("agent at 0.6") < prompt.index("agent at 1.0") < prompt.index("agent at 0.3")
    assert state["answers"][0]["message"]["content"] == "synthesized" and sink.streamed == {0}


async def test_improvements_rewrite_the_solution_that_was_checked():
    check = lambda text: PASS if text == "agent at 0.6: \\boxed{6} (improved)" else FAIL.format(text=text)  # noqa: E731
    backend = ScriptedBackend(script(check=check, improve=lambda text: f"{text} (improved)"))
    params = {**SMALL, "max_iterations": 3, "consensus_threshold": 1}
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    improves = [b for b in backend.calls if kind(b) == "improve"]
    assert len(improves) == 3
    for body in improves:
        text, feedback = improving(body)
        assert feedback == f"- issue in {text}"  # its own report, not another agent's
        assert body["temperature"] == pytest.approx(0.8 * float(text.split()[2][:-1]))
    assert state["answers"][0]["message"]["content"] == "agent at 0.6: \\boxed{6} (improved)"
    # one improvement round was enough: 3 explore + 3 checks + 3 improvements + 3 checks
    assert len(backend.calls) == 12 < evaluate(SPEC.calls, SPEC.validate_params(params))


async def test_aggregated_and_enhanced_solutions_are_checked_and_can_win():
    check = lambda text: PASS if text == "aggregated" else FAIL.format(text=text)  # noqa: E731
    backend = ScriptedBackend(script(check=check))
    params = {
        **SMALL,
        "enable_aggregation": True,
        "aggregation_loops": 1,
        "aggregation_groups": 1,
        "enable_strategy_network": True,
        "max_iterations": 0,
    }
    state, _ = await run_approach(SPEC, QUESTION, backend, params=params)
    assert state["answers"][0]["message"]["content"] == "aggregated"
    checked_texts = sorted(checked(b) for b in backend.calls if kind(b) == "verify")
    assert len(checked_texts) == 7  # 3 explored + 1 aggregate + 3 enhanced
    assert "aggregated" in checked_texts and sum("(enhanced)" in t for t in checked_texts) == 3
    for body in (b for b in backend.calls if kind(b) == "enhance"):
        text, feedback = improving(body)
        assert f"strategy of {text}" not in feedback  # peers' strategies only
        assert feedback.count("strategy of agent at") == 2
        assert body["temperature"] == pytest.approx(0.9 * float(text.split()[2][:-1]))


async def test_rounds_run_concurrently():
    params = {"aggregation_loops": 1, "verification_passes_required": 2, "max_iterations": 1}
    # one wave of concurrent calls per dependent round: explore, verify, aggregate, verify, enhance...
    waves = [3, 5, 3, 16, 8, 16, 1]
    backend = ScriptedBackend(script(), waves=waves)
    await run_approach(SPEC, QUESTION, backend, params=params)
    validated = SPEC.validate_params(params)
    assert backend.wave_errors == []
    assert evaluate(SPEC.rounds, validated) == len(waves) == 7
    assert len(backend.calls) == evaluate(SPEC.calls, validated) == sum(waves)


async def test_the_clients_reasoning_effort_reaches_every_call():
    backend = ScriptedBackend(script())
    await run_approach(
        SPEC,
        QUESTION,
        backend,
        request={"reasoning_effort": "high"},
        params={"aggregation_loops": 1, "max_iterations": 1},
    )
    assert {kind(b) for b in backend.calls} == {
        "explore",
        "aggregate",
        "strategize",
        "enhance",
        "verify",
        "improve",
        "synthesize",
    }
    for body in backend.calls:
        assert body["reasoning_effort"] == "high" and "reasoning" not in body


async def test_lightweight_configuration_for_small_max_tokens():
    request = {"max_tokens": 1000}
    light = effective_params(SPEC.validate_params(None), request)
    keys = (
        "num_agents",
        "max_iterations",
        "verification_passes_required",
        "consensus_threshold",
        "enable_aggregation",
        "enable_strategy_network",
    )
    assert [light[k] for k in keys] == [2, 2, 1, 1, False, False]
    backend = ScriptedBackend(script())
    await run_approach(SPEC, QUESTION, backend, request=request)
    assert kinds(backend) == {"explore": 2, "verify": 6, "improve": 4, "synthesize": 1}
    assert len(backend.calls) == evaluate(SPEC.calls, light)
    assert all(b["max_tokens"] == 1000 for b in backend.calls if kind(b) == "explore")

    backend = ScriptedBackend(script())
    await run_approach(SPEC, QUESTION, backend, request=request, params={"lightweight": False, **SMALL})
    assert kinds(backend)["explore"] == 3
    backend = ScriptedBackend(script())
    await run_approach(SPEC, QUESTION, backend, request=request, params={"num_agents": 4})
    assert kinds(backend)["explore"] == 4  # an explicit value is kept
    assert effective_params(SPEC.validate_params(None), {"max_tokens": 8000}) == SPEC.validate_params(None)


async def test_failed_and_empty_agents_leave_the_survivors():
    explore = {0.3: UpstreamError("agent down"), 0.6: "", 1.0: "\\boxed{51}"}
    backend = ScriptedBackend(script(explore=explore, check=lambda text: PASS))
    state, _ = await run_approach(SPEC, QUESTION, backend, params=SMALL)
    assert state["answers"][0]["message"]["content"] == "\\boxed{51}"
    notes = "\n".join(state["notes"])
    assert "agent 0 failed: agent down" in notes and "agent 1 came back empty" in notes


async def test_every_agent_failing_is_an_error():
    backend = ScriptedBackend(script(explore={t: UpstreamError("down") for t in (0.3, 0.6, 1.0)}))
    with pytest.raises(UpstreamError, match="every agent failed"):
        await run_approach(SPEC, QUESTION, backend, params=SMALL)


async def test_a_failed_check_is_not_a_pass():
    check = lambda text: UpstreamError("verifier down") if "0.3" in text else PASS  # noqa: E731
    backend = ScriptedBackend(script(check=check))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={**SMALL, "consensus_threshold": 3})
    assert any("failed: verifier down" in n for n in state["notes"])
    improved = [improving(b)[0] for b in backend.calls if kind(b) == "improve"]
    assert improved == ["agent at 0.3: \\boxed{3}"]  # only the unverified one is improved
    assert state["answers"][0]["message"]["content"] in ("agent at 0.6: \\boxed{6}", "agent at 1.0: \\boxed{10}")


async def test_budget_exceeded_propagates():
    llm = LLM(
        backend=ScriptedBackend(script()), model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=8)
    )
    with pytest.raises(BudgetExceeded):
        await (
            SPEC.build()
            .compile()
            .ainvoke(
                {"messages": QUESTION, "request": {}, "params": SPEC.validate_params(None)},
                context=RunContext(run_id="t", llm=llm),
            )
        )


def test_graph_structure_and_params():
    graph = SPEC.build().compile().get_graph()
    assert set(graph.nodes) >= {
        "setup",
        "explore",
        "evolve",
        "aggregate",
        "strategize",
        "enhance",
        "check",
        "verify",
        "judge",
        "improve",
        "finalize",
        "synthesize",
    }
    edges = {(e.source, e.target) for e in graph.edges}
    assert {
        ("setup", "explore"),
        ("explore", "evolve"),
        ("evolve", "aggregate"),
        ("evolve", "strategize"),
        ("evolve", "enhance"),
        ("evolve", "check"),
        ("check", "verify"),
        ("verify", "judge"),
        ("judge", "improve"),
        ("improve", "check"),
        ("judge", "finalize"),
        ("finalize", "synthesize"),
    } <= edges
    params = SPEC.validate_params(None)
    assert (
        params["num_agents"],
        params["verification_passes_required"],
        params["max_iterations"],
        params["consensus_threshold"],
        params["population_size"],
        params["aggregation_loops"],
    ) == (3, 2, 5, 2, 6, 3)
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"num_agents": 0})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"agent_temperatures": [3.0]})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"mars_config": {}})
