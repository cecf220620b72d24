"""Loading approaches from outside optigraph: a directory of Python modules and YAML/JSON specs,
the `optigraph.approaches` entry points (a real dist-info directory on sys.path), declarative spec
validation with file:line errors, and name clashes."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

import optigraph
from optigraph.core.cost import evaluate
from optigraph.core.spec import ApproachSpec
from optigraph.engine.authoring import (
    NODE_KINDS,
    DeclarativeSpecError,
    load_declarative,
    parse_declarative,
)
from optigraph.engine.compiler import Compiler
from optigraph.engine.expression import parse
from optigraph.engine.loading import (
    ENTRY_POINT_GROUP,
    load_directory,
    load_registry,
)
from optigraph.engine.registry import builtin_registry
from optigraph.errors import ApproachLoadError, InvalidRequest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = re.compile(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", re.DOTALL)


def doc_examples() -> dict[str, str]:
    """The worked examples of docs/authoring.md, by file name (so the docs are what is tested)."""
    return dict(EXAMPLE.findall((ROOT / "docs" / "authoring.md").read_text()))


def write_examples(directory: Path) -> Path:
    for name, text in doc_examples().items():
        (directory / name).write_text(text)
    return directory


def test_docs_have_both_examples() -> None:
    assert set(doc_examples()) == {"shout.py", "my_bon.yaml"}


def test_directory_loads_python_module_and_yaml(tmp_path: Path) -> None:
    loaded = {spec.name: (spec, source) for spec, source in load_directory(write_examples(tmp_path))}
    assert set(loaded) == {"shout", "my_bon"}
    shout, source = loaded["shout"]
    assert source.endswith("shout.py") and shout.streams_final and shout.calls == "1"
    assert shout.validate_params({}) == {"style": "in capital letters"}
    my_bon, source = loaded["my_bon"]
    assert source.endswith("my_bon.yaml")
    assert my_bon.calls == "1 + k" and my_bon.rounds == "2" and not my_bon.streams_final
    assert my_bon.validate_params({"k": 2}) == {"k": 2, "temperature": None}
    assert evaluate(my_bon.calls, my_bon.validate_params({})) == 5
    with pytest.raises(InvalidRequest, match="k"):
        my_bon.validate_params({"k": 17})
    with pytest.raises(InvalidRequest):
        my_bon.validate_params({"n": 3})
    schema = my_bon.params.model_json_schema()["properties"]["k"]
    assert schema["minimum"] == 1 and schema["maximum"] == 16 and schema["description"] == "Candidates to sample."


def test_loaded_approaches_compile_in_expressions(tmp_path: Path) -> None:
    registry = load_registry(approaches_dir=write_examples(tmp_path), entry_points=False)
    assert {"shout", "my_bon", "bon"} <= set(registry.names())
    compiled = Compiler(registry, None).compile(parse("my_bon&shout|re2"))
    assert compiled.choices == 2 and set(compiled.names) == {"my_bon", "shout", "re2"}
    drawing = Compiler(registry, None).compile(parse("my_bon")).mermaid()
    for node in ("draft", "judge", "best"):
        assert node in drawing


def test_json_spec_is_the_same_as_yaml(tmp_path: Path) -> None:
    data = yaml.safe_load(doc_examples()["my_bon.yaml"])
    path = tmp_path / "my_bon.json"
    path.write_text(json.dumps(data, indent=2))
    spec = load_declarative(path)
    assert spec.name == "my_bon" and spec.calls == "1 + k"


def test_decorator_is_public() -> None:
    from langgraph.graph import StateGraph

    @optigraph.approach("tiny", description="d", calls="2")
    def build() -> StateGraph:
        raise NotImplementedError

    assert isinstance(build, ApproachSpec) and build.name == "tiny" and build.calls == "2"
    assert optigraph.ApproachSpec is ApproachSpec


def test_every_node_kind_compiles() -> None:
    spec = parse_declarative(
        textwrap.dedent("""
        name: everything
        nodes:
          rr: {kind: reread}
          s1: {kind: sample, n: 2}
          s2: {kind: sample, n: 3, temperature: 0.5}
          rate: {kind: rate}
          pick: {kind: select}
          crit: {kind: critique}
          agg: {kind: aggregate}
          v: {kind: vote, similarity_threshold: 0.5}
          gen: {kind: generate, reread: true}
        edges:
          - rr -> s1 -> s2 -> rate -> pick
          - s2 -> crit -> agg
          - s2 -> v
          - rr -> gen
    """),
        "all.yaml",
    )
    assert set(NODE_KINDS) == {"sample", "rate", "select", "vote", "critique", "aggregate", "generate", "reread"}
    assert spec.calls == "5 + (2 + 3)" and spec.rounds == "4" and not spec.streams_final
    spec.build().compile()


# ---- entry points: a real dist-info directory on sys.path --------------------------------------


def make_distribution(root: Path, entry_points: str) -> None:
    pkg = root / "acme_approaches"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(doc_examples()["shout.py"])
    (pkg / "my_bon.yaml").write_text(doc_examples()["my_bon.yaml"])
    (pkg / "specs.py").write_text(
        "from pathlib import Path\nimport optigraph\n"
        "MY_BON = optigraph.load_declarative(Path(__file__).with_name('my_bon.yaml'))\n"
    )
    info = root / "acme_approaches-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-approaches\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}")


def test_entry_points_from_an_installed_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(tmp_path, "shout = acme_approaches\nmy_bon = acme_approaches.specs:MY_BON\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    assert registry.get("shout").description.startswith("Answers in the style")
    assert registry.get("my_bon").calls == "1 + k"
    assert "shout" not in load_registry(entry_points=False)


def test_entry_point_clash_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(tmp_path, "shout = acme_approaches\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "shout.py").write_text(doc_examples()["shout.py"])
    with pytest.raises(
        ApproachLoadError,
        match=r"shout\.py: approach 'shout' is already registered by entry point "
        r"shout = acme_approaches \(package acme-approaches\)",
    ):
        load_registry(approaches_dir=tmp_path / "dir")


# ---- clashes and bad modules -------------------------------------------------------------------


def test_clash_with_a_builtin_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bon.yaml").write_text(doc_examples()["my_bon.yaml"].replace("name: my_bon", "name: bon"))
    with pytest.raises(
        ApproachLoadError,
        match=r"bon\.yaml: approach 'bon' is already registered by optigraph "
        r"\(built-in\); rename it",
    ):
        load_registry(approaches_dir=tmp_path, entry_points=False)


def test_clash_between_two_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(doc_examples()["my_bon.yaml"])
    (tmp_path / "b.yml").write_text(doc_examples()["my_bon.yaml"])
    with pytest.raises(ApproachLoadError, match=r"b\.yml: approach 'my_bon' is already registered by .*a\.yaml"):
        load_registry(approaches_dir=tmp_path, entry_points=False)


def test_module_without_approach_or_failing_import(tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ApproachLoadError, match=r"empty\.py: defines no approach"):
        load_directory(tmp_path)
    (tmp_path / "empty.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ApproachLoadError, match=r"empty\.py: import failed: RuntimeError: boom"):
        load_directory(tmp_path)
    with pytest.raises(ApproachLoadError, match="does not exist"):
        load_directory(tmp_path / "missing")


def test_bad_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text(doc_examples()["my_bon.yaml"].replace("name: my_bon", "name: my-bon"))
    with pytest.raises(DeclarativeSpecError, match=r"x\.yaml:1: name must be letters"):
        load_directory(tmp_path)


def test_builtin_registry_is_untouched(tmp_path: Path) -> None:
    load_registry(approaches_dir=write_examples(tmp_path), entry_points=False)
    assert "my_bon" not in builtin_registry()


# ---- declarative validation: every error names file:line ---------------------------------------

GOOD = """\
name: my_bon
parameters:
  k: {type: int, default: 4, min: 1, max: 16}
nodes:
  draft: {kind: sample, n: $k}
  judge: {kind: rate}
  best: {kind: select}
edges:
  - draft -> judge -> best
"""


def bad(tmp_path: Path, text: str) -> DeclarativeSpecError:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(DeclarativeSpecError) as info:
        load_declarative(path)
    return info.value


def test_good_spec_is_accepted() -> None:
    assert parse_declarative(GOOD).calls == "1 + k"


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (("draft: {kind: sample", "draft: {kind: sampel"), 5, "unknown node kind 'sampel'"),
        (
            ("judge: {kind: rate}", "judge: {kind: rate, temprature: 0.1}"),
            6,
            "unknown setting 'temprature' for kind 'rate'",
        ),
        (
            ("judge: {kind: rate}", "judge: {kind: rate, temperature: hot}"),
            6,
            "setting 'temperature' must be a float, got 'hot'",
        ),
        (("n: $k", "n: 2.5"), 5, "setting 'n' must be a int, got 2.5"),
        (("default: 4,", "default: four,"), 3, "default 'four' is not a int"),
        (("default: 4,", "default: 40,"), 3, "default 40 is outside [min, max]"),
        (("type: int", "type: integer"), 3, "type must be one of int, float, bool, str"),
        (("n: $k", "n: $count"), 5, "refers to undefined parameter 'count'"),
        (("- draft -> judge -> best", "- draft -> judge -> bset"), 9, "edge to unknown node 'bset'"),
        (
            ("  best: {kind: select}\n", "  best: {kind: select}\n  extra: {kind: generate}\n"),
            8,
            "node 'extra' is unreachable from the start node 'draft'",
        ),
        (("best: {kind: select}", "best: {kind: critique}"), 7, "missing final answer"),
        (("- draft -> judge -> best", "- draft -> judge -> best -> draft"), 9, "edge best -> draft closes a loop"),
        (("edges:", "edgez:"), 8, "unknown key 'edgez'"),
        (("nodes:\n", "nodes:\n  x: [\n"), 7, "not valid YAML or JSON"),
    ],
)
def test_bad_spec_names_file_and_line(tmp_path: Path, edit: tuple[str, str], line: int, message: str) -> None:
    assert edit[0] in GOOD
    err = bad(tmp_path, GOOD.replace(edit[0], edit[1], 1))
    text = str(err)
    assert f"{tmp_path / 'spec.yaml'}:{line}: " in text, text
    assert message in text, text
    assert any(ln == line and message in m for ln, m in err.errors), err.errors


def test_no_final_node_at_all(tmp_path: Path) -> None:
    text = "name: x\nnodes:\n  s: {kind: sample, n: 2}\n"
    err = bad(tmp_path, text)
    assert f"{tmp_path / 'spec.yaml'}:2: missing final answer: no node writes one" in str(err)


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    text = GOOD.replace("n: $k", "n: $count").replace("judge: {kind: rate}", "judge: {kind: rate, foo: 1}")
    err = bad(tmp_path, text)
    assert [ln for ln, _ in err.errors] == [5, 6]


def test_bad_json_spec_points_at_the_line(tmp_path: Path) -> None:
    data = yaml.safe_load(GOOD)
    data["nodes"]["judge"]["kind"] = "rater"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(DeclarativeSpecError) as info:
        load_declarative(path)
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if '"rater"' in ln)
    assert f"{path}:{line}: node 'judge': unknown node kind 'rater'" in str(info.value)


def test_fan_out_shape_is_checked(tmp_path: Path) -> None:
    text = GOOD.replace("  - draft -> judge -> best\n", "  - draft -> judge -> best\n  - draft -> best\n")
    err = bad(tmp_path, text)
    assert "the node after fan-out node 'judge' ('best') must have no other incoming edge" in str(err)


def test_parameter_reference_type_is_checked(tmp_path: Path) -> None:
    text = GOOD.replace("k: {type: int, default: 4, min: 1, max: 16}", "k: {type: float, default: 4.0}")
    err = bad(tmp_path, text)
    assert f"{tmp_path / 'spec.yaml'}:5: node 'draft': setting 'n' is a int but parameter 'k' is a float" in str(err)
