"""Top-level body fields that OptILLM reads (`mcts_simulations`, `k`, `num_candidates`, `best_of_n`,
`cepo_*`...) reach the approach they belong to, validated; server-wide defaults apply where a request
gives none; `optillm_params` wins over both. Driven with the official openai client (`extra_body`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from api_stack import Stack, start_stack

HELLO = [{"role": "user", "content": "What is 6 times 7?"}]
DEFAULTS = {"bon": {"n": 2}, "mcts": {"depth": 2}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    db = tmp_path_factory.mktemp("optillm_fields") / "f.db"
    with start_stack(db, default_model="fake-model", approach_params=DEFAULTS) as s:
        yield s


@pytest.fixture
def stack(server: Stack) -> Iterator[Stack]:
    server.reset()
    yield server
    server.reset()


def params_of(stack: Stack, model: str, **extra: Any) -> dict[str, dict[str, Any]]:
    """The validated parameters the run was stored with (what it ran, and what a resume runs again)."""
    raw = stack.client().chat.completions.with_raw_response.create(model=model, messages=HELLO, extra_body=extra)
    run = stack.run(raw.headers["x-optigraph-run-id"])
    assert run["status"] == "completed", run
    spec = json.loads(run["spec"]) if isinstance(run["spec"], str) else run["spec"]
    return {} if spec is None else spec["params"]  # a lone passthrough stores no spec: nothing to resume


def test_server_defaults_apply_where_the_request_gives_none(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(model="bon-fake-model", messages=HELLO)
    run_id = raw.headers["x-optigraph-run-id"]
    stack.run(run_id)  # stored once finished, calls included
    nodes = [c["node"] for c in stack.calls(run_id)]
    assert nodes.count("rate") == 2  # bon rated the two candidates the server's default asked for
    assert params_of(stack, "bon-fake-model")["bon"]["n"] == 2
    assert params_of(stack, "mcts-fake-model")["mcts"]["depth"] == 2


def test_body_fields_reach_their_approach_and_optillm_params_win(stack: Stack) -> None:
    assert params_of(stack, "bon-fake-model", best_of_n=3)["bon"]["n"] == 3
    assert params_of(stack, "bon-fake-model", best_of_n=3, optillm_params={"bon": {"n": 4}})["bon"]["n"] == 4
    got = params_of(stack, "mcts-fake-model", mcts_simulations=1, mcts_exploration=0.5, mcts_depth=1)["mcts"]
    assert (got["simulations"], got["exploration"], got["depth"]) == (1, 0.5, 1)
    assert params_of(stack, "majority_voting-fake-model", k=3)["majority_voting"]["k"] == 3
    assert params_of(stack, "genselect-fake-model", num_candidates=2)["genselect"]["num_candidates"] == 2
    assert params_of(stack, "cot_reflection-fake-model", return_full_response=True)["cot_reflection"][
        "return_full_response"
    ]


def test_fields_for_several_approaches_each_go_to_theirs(stack: Stack) -> None:
    params = params_of(stack, "bon|majority_voting-fake-model", best_of_n=2, k=2, cepo_planning_n=5)
    assert params["bon"]["n"] == 2 and params["majority_voting"]["k"] == 2
    assert "cepo" not in params  # cepo is not in the expression: its field is ignored
    # OptILLM's fields are for the proxy: none of them went upstream
    for body in stack.log.bodies:
        assert not {"best_of_n", "k", "cepo_planning_n"} & set(body), body


def test_fields_for_absent_approaches_are_ignored_and_kept_from_the_upstream(stack: Stack) -> None:
    params_of(stack, "fake-model", mcts_simulations=9, spl_learning=True, rstar_c=2.0, custom_field="kept")
    (body,) = stack.log.bodies
    assert not {"mcts_simulations", "spl_learning", "rstar_c"} & set(body)
    assert body["custom_field"] == "kept"  # an unknown field still goes upstream, as before


def test_k_goes_upstream_unless_majority_voting_takes_it(stack: Stack) -> None:
    params_of(stack, "fake-model", k=5)  # the local decoding strategies read `k` from the body
    assert stack.log.bodies[-1]["k"] == 5


@pytest.mark.parametrize(
    ("model", "field", "value", "says"),
    [
        ("mcts-fake-model", "mcts_simulations", "many", "valid integer"),
        ("bon-fake-model", "best_of_n", 0, "greater than or equal to 1"),
        ("cepo-fake-model", "cepo_no_such_option", 1, "not a parameter of 'cepo'"),
        ("cepo-fake-model", "cepo_bestofn_rating_type", "loudest", "absolute"),
    ],
)
def test_a_bad_body_field_is_a_400_naming_it(stack: Stack, model: str, field: str, value: Any, says: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().chat.completions.create(model=model, messages=HELLO, extra_body={field: value})
    err = info.value.body
    assert err["param"] == field and err["code"] == "invalid_approach_parameter"
    assert says in err["message"]
    assert not stack.log.bodies  # refused before any upstream call


@pytest.fixture(scope="module")
def two_choices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    db = tmp_path_factory.mktemp("optillm_n") / "n.db"
    with start_stack(db, default_model="fake-model", default_n=2) as s:
        yield s


def test_the_server_default_n_applies_where_the_request_gives_none(two_choices: Stack) -> None:
    client = two_choices.client()
    assert len(client.chat.completions.create(model="fake-model", messages=HELLO).choices) == 2
    assert len(client.chat.completions.create(model="re2-fake-model", messages=HELLO).choices) == 2
    assert len(client.chat.completions.create(model="fake-model", messages=HELLO, n=1).choices) == 1
