"""`optigraph serve`'s local-model flags: the help names every accepted value, and the switch that lets
clients reach local models beside an upstream is off unless given."""

from __future__ import annotations

import re
import typing

import pytest

from optigraph.cli import parser
from optigraph.config import Settings


def serve_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        parser().parse_args(["serve", "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_the_dtype_help_lists_every_accepted_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    accepted = typing.get_args(Settings.model_fields["local_dtype"].annotation)
    assert "float16" in accepted
    line = serve_help(capsys).rsplit("--local-dtype LOCAL_DTYPE", 1)[1].split(" --", 1)[0]
    assert all(re.search(rf"\b{dtype}\b", line) for dtype in accepted), line  # float16, not only bfloat16


def test_local_models_beside_an_upstream_are_off_unless_enabled(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "--local-models-with-upstream" in serve_help(capsys)
    assert parser().parse_args(["serve"]).local_models_with_upstream is None  # the setting's default applies
    assert parser().parse_args(["serve", "--local-models-with-upstream"]).local_models_with_upstream is True
    assert Settings().local_models_with_upstream is False
    monkeypatch.setenv("OPTIGRAPH_LOCAL_MODELS_WITH_UPSTREAM", "1")
    assert Settings().local_models_with_upstream is True
