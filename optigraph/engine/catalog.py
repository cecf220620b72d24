"""Describes approaches for people: a Markdown page per approach (docs/approaches.md is generated
from this, so the docs cannot drift from the code)."""

from __future__ import annotations

import inspect

from optigraph.core.spec import ApproachSpec, PluginSpec
from optigraph.engine.registry import Registry


def mermaid(spec: ApproachSpec) -> str:
    """The approach's graph as a Mermaid flowchart, drawn from the graph itself."""
    return spec.build().compile().get_graph().draw_mermaid()


def params_table(spec: ApproachSpec | PluginSpec) -> str:
    fields = spec.params.model_fields
    if not fields:
        return "No parameters."
    rows = ["| parameter | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    for name, f in fields.items():
        bounds = ", ".join(_bound(m) for m in f.metadata)
        kind = getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", "").replace(" | ", " or ")
        rows.append(f"| `{name}` | {kind} | `{f.default!r}` | {bounds} | {f.description or ''} |")
    return "\n".join(rows)


def _bound(constraint: object) -> str:
    """`ge 1` for annotated_types.Ge(ge=1) and the like."""
    symbols = {"ge": ">=", "le": "<=", "gt": ">", "lt": "<"}
    for attr, symbol in symbols.items():
        if hasattr(constraint, attr):
            return f"{symbol} {getattr(constraint, attr)}"
    return str(constraint)


def _section(spec: ApproachSpec | PluginSpec, defined_by: object, facts: list[str], extra: list[str]) -> str:
    """A spec's Markdown section: heading, description, its module's docstring, facts, then `extra`."""
    module = inspect.getmodule(defined_by)
    doc = inspect.cleandoc(module.__doc__ or "") if module else ""
    return "\n".join(
        [f"## `{spec.name}`", "", spec.description, "", doc, "", *facts, "", *extra, params_table(spec), ""]
    )


def approach_markdown(spec: ApproachSpec) -> str:
    papers = ", ".join(spec.papers) if spec.papers else "none cited"
    return _section(
        spec,
        spec.build,
        [
            f"- Upstream calls: `{spec.calls}`{_expected(spec)}; dependent rounds: `{spec.rounds}`.",
            f"- Needs from a backend: {', '.join(sorted(spec.needs))}. Streams its final stage: {'yes' if spec.streams_final else 'no'}.",
            f"- Papers: {papers}.",
        ],
        ["```mermaid", mermaid(spec).strip(), "```", ""],
    )


def _expected(spec: ApproachSpec) -> str:
    """How many calls it makes when nothing fails, where early stopping makes that fewer."""
    return f" at most, `{spec.expected_calls}` expected" if spec.expected_calls else ""


def plugin_markdown(spec: PluginSpec) -> str:
    streaming = (
        "streams through its rewriter"
        if spec.stream is not None
        else "the wrapped part answers whole"
        if spec.post is not None
        else "the wrapped part streams as usual"
    )
    routes = " Chooses at run time what runs inside it." if spec.routes else ""
    return _section(
        spec,
        spec.pre or spec.post,
        [
            f"- Stages: {' and '.join(spec.stages)}. Streaming: {streaming}.{routes}",
            f"- Upstream calls of its own: `{spec.calls}`; dependent rounds: `{spec.rounds}`.",
            f"- Needs: {', '.join(sorted(spec.needs)) or 'nothing'}.",
        ],
        [],
    )


def catalog_markdown(registry: Registry) -> str:
    rows = ["| approach | calls | rounds | needs | streams |", "|---|---|---|---|---|"]
    for spec in registry.approaches():
        calls = f"`{spec.calls}`" + (f" (expected `{spec.expected_calls}`)" if spec.expected_calls else "")
        rows.append(
            f"| [`{spec.name}`](#{spec.name}) | {calls} | `{spec.rounds}` | "
            f"{', '.join(sorted(spec.needs))} | {'yes' if spec.streams_final else 'no'} |"
        )
    plugin_rows = ["| plugin | stages | own calls | needs |", "|---|---|---|---|"]
    for plugin in registry.plugins():
        plugin_rows.append(
            f"| [`{plugin.name}`](#{plugin.name}) | {'+'.join(plugin.stages)} | `{plugin.calls}` | "
            f"{', '.join(sorted(plugin.needs)) or '-'} |"
        )
    header = [
        "# Approaches and plugins",
        "",
        "Generated from the code by `python scripts/approach_docs.py`; do not edit by hand.",
        "",
        "Select one with a model prefix (`bon-gpt-4o-mini`), `optillm_approach` in the body, an",
        "`<optillm_approach>` tag, or the server's `--approach`; combine them with `&` (pipeline) and `|`",
        '(parallel). Parameters go in `optillm_params: {"<approach>": {...}}`. Calls count upstream requests',
        "(one request may return n completions); rounds count the calls that must wait for earlier ones, which",
        "is what wall time follows, since independent calls are made concurrently. Both are the most the",
        "approach makes; where it stops early (enough attempts succeeded), the expected calls say what a",
        "run makes when nothing fails.",
        "",
        "A plugin wraps what follows it in a pipeline (`privacy&readurls&moa`: privacy.pre, readurls.pre,",
        "moa, readurls.post, privacy.post), or the server's default approach when nothing follows it",
        "(docs/plugins.md).",
        "",
        *rows,
        "",
        *plugin_rows,
        "",
    ]
    body = [approach_markdown(s) for s in registry.approaches()]
    plugins = ["# Plugins", "", *[plugin_markdown(s) for s in registry.plugins()]]
    return "\n".join(header + body + plugins)
