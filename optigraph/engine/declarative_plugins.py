"""Plugins written as YAML or JSON: small conversation and answer rewrites, no Python.

    plugin: house_style                      # the name used in expressions
    description: British spelling, signed answers.
    parameters:                              # optional; each {type: str|int|float|bool, default, description}
      signature: {type: str, default: "-- the team"}
    pre:                                     # optional
      system: "Use British spelling."        # added as the first system message (or to the existing one)
      append_to_user: "Be brief."            # appended to the last user turn's text
    post:                                    # optional
      replace: [{pattern: "\\\\bcolor\\\\b", with: "colour"}]   # regular-expression substitutions, in order
      prepend: ""                            # text put before each answer
      append: "\\n\\n{signature}"             # text put after each answer; {name} is a parameter's value

Everything is checked at load: unknown keys, wrong types and bad patterns are start-up errors that
name the file and the key. A plugin with a `post` stage rewrites streamed text as it arrives when it
only appends (its `append` text is sent when the answer ends); `replace` and `prepend` make the
wrapped part answer whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from langgraph.runtime import Runtime
from pydantic import Field, create_model

from optigraph.core.context import RunContext
from optigraph.core.messages import message_text
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import PluginState
from optigraph.errors import ApproachLoadError

_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
_TOP = {"plugin", "description", "parameters", "pre", "post"}
_PRE = {"system", "append_to_user"}
_POST = {"replace", "prepend", "append"}


def _read(path: Path) -> Any:
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ApproachLoadError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None


def is_plugin_document(path: Path) -> bool:
    """Whether a declarative file describes a plugin (its top-level key `plugin`)."""
    data = _read(path)
    return isinstance(data, dict) and "plugin" in data


def _check_keys(path: Path, where: str, data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApproachLoadError(f"{path}: {where} must be a mapping")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApproachLoadError(f"{path}: {where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return data


def _params(path: Path, name: str, raw: Any) -> type[ApproachParams]:
    fields: dict[str, Any] = {}
    for key, decl in _check_keys(path, "parameters", raw or {}, set(raw or {})).items():
        decl = _check_keys(path, f"parameters.{key}", decl, {"type", "default", "description"})
        kind = _TYPES.get(str(decl.get("type", "str")))
        if kind is None:
            raise ApproachLoadError(f"{path}: parameters.{key}.type must be one of {', '.join(_TYPES)}")
        default = decl.get("default")
        if default is not None and not isinstance(default, kind):
            raise ApproachLoadError(f"{path}: parameters.{key}.default must be a {decl.get('type', 'str')}")
        fields[key] = (kind | None, Field(default, description=decl.get("description")))
    return create_model(f"{name.title().replace('_', '')}Params", __base__=ApproachParams, **fields)


def _text(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ApproachLoadError(f"{path}: {where} must be text")
    return value


def _replacements(path: Path, raw: Any) -> list[tuple[re.Pattern[str], str]]:
    if not isinstance(raw, list):
        raise ApproachLoadError(f"{path}: post.replace must be a list of {{pattern, with}}")
    out = []
    for i, item in enumerate(raw):
        item = _check_keys(path, f"post.replace[{i}]", item, {"pattern", "with"})
        try:
            out.append(
                (
                    re.compile(_text(path, f"post.replace[{i}].pattern", item.get("pattern"))),
                    _text(path, f"post.replace[{i}].with", item.get("with", "")),
                )
            )
        except re.error as exc:
            raise ApproachLoadError(f"{path}: post.replace[{i}].pattern: {exc}") from None
    return out


def _fill(template: str, params: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(params.get(m.group(1), m.group(0))), template)


def _pre_stage(system: str | None, append: str | None):
    async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        params = state.get("params") or {}
        messages = list(state["messages"])
        if system is not None:
            text = _fill(system, params)
            if (
                messages
                and messages[0].get("role") in ("system", "developer")
                and isinstance(messages[0].get("content"), str)
            ):
                messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
            else:
                messages.insert(0, {"role": "system", "content": text})
        if append is not None:
            for i in range(len(messages) - 1, -1, -1):
                if messages[i].get("role") == "user":
                    messages[i] = {**messages[i], "content": f"{message_text(messages[i])}\n\n{_fill(append, params)}"}
                    break
        return {"messages": messages}

    return pre


def _post_stage(replace: list[tuple[re.Pattern[str], str]], prepend: str, append: str):
    async def post(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        params = state.get("params") or {}
        answers = []
        for answer in state.get("answers") or []:
            message = dict(answer.get("message") or {})
            if isinstance(message.get("content"), str):
                text = message["content"]
                for pattern, repl in replace:
                    text = pattern.sub(repl, text)
                message["content"] = _fill(prepend, params) + text + _fill(append, params)
            answers.append({**answer, "message": message})
        return {"answers": answers}

    return post


class _Appender:
    """Streams the wrapped text unchanged and adds the `append` text when the answer ends."""

    def __init__(self, tail: str) -> None:
        self.tail = tail

    def feed(self, text: str) -> str:
        return text

    def flush(self) -> str:
        tail, self.tail = self.tail, ""
        return tail


def load_plugin(path: Path | str) -> PluginSpec:
    """The PluginSpec a declarative file describes (ApproachLoadError naming the file and key if bad)."""
    path = Path(path)
    data = _check_keys(path, "the document", _read(path), _TOP)
    name = _text(path, "plugin", data.get("plugin"))
    pre_raw = _check_keys(path, "pre", data["pre"], _PRE) if "pre" in data else None
    post_raw = _check_keys(path, "post", data["post"], _POST) if "post" in data else None
    if pre_raw is None and post_raw is None:
        raise ApproachLoadError(f"{path}: a plugin needs a pre or a post section")
    pre = post = stream = None
    if pre_raw is not None:
        system = _text(path, "pre.system", pre_raw["system"]) if "system" in pre_raw else None
        append = _text(path, "pre.append_to_user", pre_raw["append_to_user"]) if "append_to_user" in pre_raw else None
        pre = _pre_stage(system, append)
    if post_raw is not None:
        replace = _replacements(path, post_raw.get("replace", []))
        prepend = _text(path, "post.prepend", post_raw.get("prepend", ""))
        tail = _text(path, "post.append", post_raw.get("append", ""))
        post = _post_stage(replace, prepend, tail)
        if not replace and not prepend:

            def stream(request: dict[str, Any], private: dict[str, Any], context: Any, _tail: str = tail) -> _Appender:
                return _Appender(_tail)

    params = _params(path, name, data.get("parameters"))
    if stream is not None and "{" in (post_raw or {}).get("append", ""):
        stream = None  # the tail depends on parameters the rewriter does not see: answer whole
    return PluginSpec(
        name=name,
        description=_text(path, "description", data.get("description", "")),
        pre=pre,
        post=post,
        params=params,
        stream=stream,
    )
