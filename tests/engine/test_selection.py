"""Approach selection: model prefix, body field, message tag, default; tags never go upstream."""

from __future__ import annotations

import copy

import pytest

from optigraph.engine.selection import Selection, select, split_model, strip_tags
from optigraph.errors import ExpressionError, InvalidRequest, UnknownApproach

KNOWN = {"none", "bon", "moa", "re2", "self_consistency", "cot_reflection", "mcts"}
TAG = "<optillm_approach>{}</optillm_approach>"


def run(body: dict, default: str = "none") -> Selection:
    return select(body, known=KNOWN, default=default)


def chat(*messages: dict, **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": list(messages), **extra}


# -- model prefix -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, expression, upstream",
    [
        ("moa-gpt-4o-mini", "moa", "gpt-4o-mini"),
        ("self_consistency-gpt-4o", "self_consistency", "gpt-4o"),
        ("re2-llama3.1:8b", "re2", "llama3.1:8b"),
        ("bon&re2-gpt-4o", "bon&re2", "gpt-4o"),
        ("moa|bon-gpt-4o", "moa|bon", "gpt-4o"),
        ("(moa|bon)&re2-gpt-4o", "(moa|bon)&re2", "gpt-4o"),
        ("bon-moa-gpt-4o", "bon&moa", "gpt-4o"),  # documented: OptILLM would run only bon
        ("moa|bon-re2-gpt-4o", "(moa|bon)&re2", "gpt-4o"),
        ("mcts-openai/gpt-4o", "mcts", "openai/gpt-4o"),
        ("bon", "bon", None),
        ("bon&re2", "bon&re2", None),
        ("bon-moa", "bon&moa", None),
    ],
)
def test_model_prefix(model, expression, upstream):
    sel = run({"model": model, "messages": []})
    assert (sel.expression, sel.model, sel.source) == (expression, upstream, "model")


@pytest.mark.parametrize(
    "model", ["gpt-4o", "gpt-4o-mini", "openai/gpt-4o", "llama3", "claude-3-5-sonnet", "bonsai-7b", "4o-bon"]
)
def test_plain_models_select_nothing(model):
    assert split_model(model, KNOWN) is None
    sel = run({"model": model, "messages": []}, default="mcts")
    assert (sel.expression, sel.model, sel.source) == ("mcts", model, "default")


def test_bad_expression_in_model_reports_position_in_model():
    with pytest.raises(ExpressionError) as info:
        run({"model": "moa-bon&&re2-gpt-4o", "messages": []})
    assert info.value.position == 8
    assert info.value.expression == "moa-bon&&re2-gpt-4o"
    assert info.value.param == "model"


def test_unknown_slug_in_model_expression():
    with pytest.raises(UnknownApproach) as info:
        run({"model": "bon&nope-gpt-4o", "messages": []})
    assert "'nope'" in info.value.message


# -- precedence -------------------------------------------------------------------------------


def test_model_prefix_beats_body_and_tag():
    body = chat({"role": "system", "content": TAG.format("mcts")}, optillm_approach="re2")
    body["model"] = "moa-gpt-4o"
    sel = run(body)
    assert (sel.expression, sel.model, sel.source) == ("moa", "gpt-4o", "model")
    assert sel.messages == [{"role": "system", "content": ""}]  # the losing tag is still removed


def test_body_beats_tag_and_default():
    body = chat({"role": "user", "content": "hi " + TAG.format("mcts")}, optillm_approach="bon & re2")
    sel = run(body)
    assert (sel.expression, sel.model, sel.source) == ("bon&re2", "gpt-4o-mini", "body")
    assert sel.messages == [{"role": "user", "content": "hi"}]


def test_body_errors_name_the_field():
    with pytest.raises(ExpressionError) as info:
        run(chat(optillm_approach="bon|"))
    assert (info.value.position, info.value.param) == (4, "optillm_approach")
    with pytest.raises(UnknownApproach) as info2:
        run(chat(optillm_approach="nope"))
    assert info2.value.param == "optillm_approach"
    with pytest.raises(InvalidRequest):
        run(chat(optillm_approach=["bon"]))


def test_default_when_nothing_else():
    sel = run(chat({"role": "user", "content": "hi"}), default="auto")
    assert (sel.expression, sel.model, sel.source) == ("auto", "gpt-4o-mini", "default")


def test_missing_model_and_messages():
    sel = run({}, default="none")
    assert sel == Selection("none", None, "default", [])


# -- tags -------------------------------------------------------------------------------------


def test_system_tag_beats_user_tag_and_both_are_removed():
    body = chat(
        {"role": "system", "content": "You are terse.\n" + TAG.format("moa")},
        {"role": "user", "content": TAG.format("bon") + " What is 2+2?"},
    )
    sel = run(body)
    assert (sel.expression, sel.source) == ("moa", "tag")
    assert sel.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ]


def test_user_tag_when_no_system_tag():
    body = chat(
        {"role": "system", "content": "plain"},
        {"role": "user", "content": "Solve this " + TAG.format(" cot_reflection ") + " carefully"},
    )
    sel = run(body)
    assert (sel.expression, sel.source, sel.model) == ("cot_reflection", "tag", "gpt-4o-mini")
    assert sel.messages[1]["content"] == "Solve this carefully"
    assert sel.messages[0] is body["messages"][0]  # untouched messages are not copied


def test_tag_in_list_content():
    image = {"type": "image_url", "image_url": {"url": "data:x"}}
    body = chat(
        {
            "role": "user",
            "content": [image, {"type": "text", "text": TAG.format("re2|bon") + "\nDescribe it."}],
        }
    )
    sel = run(body)
    assert (sel.expression, sel.source) == ("re2|bon", "tag")
    parts = sel.messages[0]["content"]
    assert parts[0] is image
    assert parts[1] == {"type": "text", "text": "Describe it."}


def test_tags_removed_from_every_role():
    body = chat(
        {"role": "assistant", "content": "ok " + TAG.format("mcts")},
        {"role": "user", "content": "next"},
    )
    sel = run(body)
    assert sel.source == "default"  # an assistant tag does not select
    assert sel.messages[0]["content"] == "ok"


def test_bad_tag_is_an_error_only_when_it_wins():
    body = chat({"role": "user", "content": TAG.format("bon&&x")})
    with pytest.raises(ExpressionError) as info:
        run(body)
    assert (info.value.position, info.value.param) == (4, "messages")
    sel = run({**body, "optillm_approach": "moa"})
    assert sel.expression == "moa" and sel.messages[0]["content"] == ""


def test_unclosed_tag_is_left_alone():
    body = chat({"role": "user", "content": "<optillm_approach>bon"})
    sel = run(body)
    assert sel.source == "default"
    assert sel.messages[0] is body["messages"][0]


@pytest.mark.parametrize(
    "text, cleaned",
    [
        (TAG.format("bon") + " Hello", "Hello"),
        ("Hello " + TAG.format("bon"), "Hello"),
        ("Hello " + TAG.format("bon") + " world", "Hello world"),
        ("Hello\n" + TAG.format("bon") + "\nworld", "Hello\nworld"),
        ("Hello\n\n" + TAG.format("bon") + "\nworld", "Hello\n\nworld"),
        ("a " + TAG.format("bon") + TAG.format("moa") + " b", "a b"),
        (TAG.format("bon"), ""),
    ],
)
def test_strip_tags_tidies_whitespace(text, cleaned):
    assert strip_tags(text) == (cleaned, "bon")


def test_input_is_not_mutated():
    body = chat(
        {"role": "system", "content": TAG.format("moa") + " sys"},
        {"role": "user", "content": [{"type": "text", "text": "q " + TAG.format("bon")}]},
        optillm_approach="re2",
    )
    before = copy.deepcopy(body)
    sel = run(body)
    assert body == before
    assert sel.messages is not body["messages"]
    assert sel.messages[0]["content"] == "sys"
    assert sel.messages[1]["content"] == [{"type": "text", "text": "q"}]


def test_fast_path_keeps_messages_uncopied():
    messages = [{"role": "user", "content": "hi"}, {"role": "user", "content": [{"type": "text", "text": "x"}]}]
    sel = run({"model": "gpt-4o", "messages": messages})
    assert sel.messages == messages and sel.messages is not messages
    assert all(x is y for x, y in zip(sel.messages, messages))
