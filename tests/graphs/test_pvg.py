import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from scripted import ScriptedBackend, last_user, run_approach  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.errors import BudgetExceeded, InvalidRequest, UpstreamError  # noqa: E402
from optigraph.graphs.pvg import HELPFUL_INSTRUCTIONS, SNEAKY_INSTRUCTIONS, SPEC  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402

QUESTION = [{"role": "system", "content": "Answer in English."}, {"role": "user", "content": "What is 17 x 3?"}]
REWRITTEN = "What is 17 x 3? Multiply; do not add."


def is_check(body):
    return last_user(body).startswith("Check the proposed solution")


def is_rewrite(body):
    return last_user(body).startswith("Here is a question")


def role(body):
    system = body["messages"][0]["content"]
    return "helpful" if HELPFUL_INSTRUCTIONS in system else "sneaky" if SNEAKY_INSTRUCTIONS in system else None


def checked(body):
    return last_user(body).split("Proposed solution:\n", 1)[1].split("\n\nGo through", 1)[0]


def game(verdicts=None, solutions=None, rewrite=f"<query>{REWRITTEN}</query>"):
    """Solutions "<role> r<round> <k>" (round told by the question asked); checks by solution text."""
    verdicts = verdicts or {}

    def respond(body):
        if is_check(body):
            text = checked(body)
            reply = verdicts.get(text)
            if reply is None:
                reply = (
                    "Issues: none\nScore: 7\nVerdict: CORRECT"
                    if text.startswith("helpful")
                    else "Issues: 17 x 3 is not 54\nScore: 2\nVerdict: INCORRECT"
                )
            return reply
        if is_rewrite(body):
            return rewrite
        r = 2 if last_user(body) == REWRITTEN else 1
        text = f"{role(body)} r{r} {body['choice_index']}"
        return (solutions or {}).get(text, text)

    return respond


async def test_full_path_matches_the_formula_and_returns_the_best_helpful_solution():
    verdicts = {
        "helpful r2 1": "Issues: none\nScore: 9\nVerdict: CORRECT",
        "sneaky r1 0": "Issues: none\nScore: 10\nVerdict: CORRECT",
    }  # a fooled verifier
    backend = ScriptedBackend(game(verdicts))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    params = SPEC.validate_params(None)
    assert len(backend.calls) == evaluate(SPEC.calls, params) == 17
    assert state["answers"][0]["message"]["content"] == "helpful r2 1"  # never the sneaky one
    assert state["usage"]["calls"] == 17

    provers = [b for b in backend.calls if role(b)]
    assert len(provers) == 4 and all(b["n"] == 3 for b in provers)
    assert sorted((role(b), b["temperature"], last_user(b)) for b in provers) == [
        ("helpful", 0.6, REWRITTEN),
        ("helpful", 0.7, "What is 17 x 3?"),
        ("sneaky", 0.6, REWRITTEN),
        ("sneaky", 0.7, "What is 17 x 3?"),
    ]
    for b in provers:
        assert b["messages"][0]["content"].startswith("Answer in English.")  # the client's system prompt kept
    checks = [b for b in backend.calls if is_check(b)]
    assert len(checks) == 12
    assert all("What is 17 x 3?" in last_user(b) and REWRITTEN not in last_user(b) for b in checks)
    assert all(b["temperature"] == 0.2 and b["max_tokens"] == 1024 for b in checks)
    (rewrite,) = [b for b in backend.calls if is_rewrite(b)]
    assert "17 x 3 is not 54" in last_user(rewrite) and "sneaky" not in last_user(rewrite)
    assert rewrite["temperature"] == 0.5
    assert any("round 1 mean verifier scores: helpful 7.0 over 3, sneaky 4.7 over 3" in n for n in state["notes"])


@pytest.mark.parametrize("params", [{"num_rounds": 1}, {"num_rounds": 3, "num_solutions": 2}, {"num_solutions": 1}])
async def test_call_count_formula(params):
    backend = ScriptedBackend(game())
    await run_approach(SPEC, QUESTION, backend, params=params)
    assert len(backend.calls) == evaluate(SPEC.calls, SPEC.validate_params(params))
    assert sum(is_rewrite(b) for b in backend.calls) == SPEC.validate_params(params)["num_rounds"] - 1


async def test_a_passing_verdict_outranks_a_higher_score():
    verdicts = {
        "helpful r1 0": "Issues: a gap\nScore: 9\nVerdict: INCORRECT",
        "helpful r1 2": "Score: 6\nThe solution is correct.",
    }
    for k in range(3):
        verdicts[f"helpful r2 {k}"] = "Score: 5\nVerdict: INCORRECT"
    verdicts["helpful r1 1"] = "Score: 5\nVerdict: INCORRECT"
    state, _ = await run_approach(SPEC, QUESTION, ScriptedBackend(game(verdicts)))
    assert state["answers"][0]["message"]["content"] == "helpful r1 2"


async def test_rounds_run_concurrently_without_n_support():
    # one wave per dependent round: both provers' samples, their checks, the refinement, again
    waves = [6, 6, 1, 6, 6]
    backend = ScriptedBackend(game(), capabilities={"n_sampling": False}, waves=waves)
    state, _ = await run_approach(SPEC, QUESTION, backend)
    rounds = evaluate(SPEC.rounds, SPEC.validate_params(None))
    assert backend.wave_errors == []
    assert rounds == len(waves) == 5
    assert len(backend.calls) == sum(waves) == 25  # each n=3 prover call served by 3 concurrent calls
    assert state["answers"][0]["message"]["content"].startswith("helpful")


async def test_temperatures_follow_the_client_and_floor():
    backend = ScriptedBackend(game())
    await run_approach(SPEC, QUESTION, backend, request={"temperature": 0.25}, params={"num_rounds": 3})
    temps = sorted({b["temperature"] for b in backend.calls if role(b) == "helpful"})
    assert temps == [0.2, 0.25]  # 0.25, then max(0.2, 0.15), max(0.2, 0.05)
    backend = ScriptedBackend(game())
    await run_approach(SPEC, QUESTION, backend, request={"temperature": 0.0})
    assert {b["temperature"] for b in backend.calls if role(b)} == {0.0}


async def test_a_failed_helpful_prover_leaves_the_next_round():
    def respond(body):
        if role(body) == "helpful" and last_user(body) != REWRITTEN:
            return UpstreamError("prover down")
        return game()(body)

    backend = ScriptedBackend(respond)
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert state["answers"][0]["message"]["content"] == "helpful r2 0"
    assert any("helpful prover failed in round 0: prover down" in n for n in state["notes"])


async def test_no_helpful_solution_at_all_is_an_error_not_a_sneaky_answer():
    def respond(body):
        return UpstreamError("prover down") if role(body) == "helpful" else game()(body)

    with pytest.raises(UpstreamError, match="no helpful prover produced a solution"):
        await run_approach(SPEC, QUESTION, ScriptedBackend(respond))


async def test_empty_and_failed_samples_and_checks():
    def respond(body):
        if is_check(body) and checked(body).startswith("helpful"):
            return UpstreamError("verifier down")
        if role(body) == "helpful" and body["call_index"] % 3 == 0:
            return ""
        return game()(body)

    backend = ScriptedBackend(respond, capabilities={"n_sampling": False})
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"num_rounds": 1})
    assert state["answers"][0]["message"]["content"].startswith("helpful r1")
    notes = "\n".join(state["notes"])
    assert "helpful solutions failed or came back empty" in notes
    assert "failed: verifier down" in notes


async def test_a_failed_rewrite_keeps_the_question():
    backend = ScriptedBackend(game(rewrite=UpstreamError("rewrite down")))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    provers = [b for b in backend.calls if role(b)]
    assert len(provers) == 4 and all(last_user(b) == "What is 17 x 3?" for b in provers)
    assert any("rewriting query 0 failed" in n for n in state["notes"])


async def test_budget_exceeded_propagates():
    llm = LLM(
        backend=ScriptedBackend(game()), model="m", run_id="t", recorder=NullRecorder(), budget=Budget(max_calls=5)
    )
    graph = SPEC.build().compile()
    with pytest.raises(BudgetExceeded):
        await graph.ainvoke(
            {"messages": QUESTION, "request": {}, "params": SPEC.validate_params(None)},
            context=RunContext(run_id="t", llm=llm),
        )


def test_graph_structure_and_params():
    graph = SPEC.build().compile().get_graph()
    assert set(graph.nodes) >= {"prove", "review", "verify", "score", "refine", "next_round", "select"}
    edges = {(e.source, e.target) for e in graph.edges}
    assert {
        ("__start__", "prove"),
        ("prove", "review"),
        ("review", "verify"),
        ("verify", "score"),
        ("score", "refine"),
        ("refine", "next_round"),
        ("next_round", "prove"),
        ("score", "select"),
    } <= edges
    params = SPEC.validate_params(None)
    assert (params["num_solutions"], params["num_rounds"]) == (3, 2)
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"num_rounds": 0})
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"rounds": 2})
    assert evaluate(SPEC.calls, params) == 17 and evaluate(SPEC.rounds, params) == 5
