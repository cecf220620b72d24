"""Reading a declarative spec: YAML or JSON into Python values, remembering the line of every value
and mapping key, so that each error can name its file and line."""

from __future__ import annotations

from typing import Any

import yaml

from optigraph.errors import ApproachLoadError

Path_ = tuple[Any, ...]  # where a value sits in the document: keys and list indices from the root


class DeclarativeSpecError(ApproachLoadError):
    """A declarative spec that does not validate; `errors` holds (line, message) pairs."""

    code = "invalid_approach_spec"

    def __init__(self, source: str, errors: list[tuple[int, str]]) -> None:
        self.source = source
        self.errors = sorted(errors)
        super().__init__("\n".join(f"{source}:{line}: {message}" for line, message in self.errors))


class Document:
    """The document as Python values, with the line of each value (and each mapping key), and the
    errors found so far."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Path_, int] = {}
        self.key_lines: dict[Path_, int] = {}
        self.errors: list[tuple[int, str]] = []
        self._loader = yaml.SafeLoader("")

    def value(self, node: yaml.Node, path: Path_) -> Any:
        """The Python value of a composed YAML node, recording lines as it goes."""
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._loader.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    self.errors.append((key_node.start_mark.line + 1, "mapping keys must be strings"))
                    continue
                if key in out:
                    self.errors.append((key_node.start_mark.line + 1, f"duplicate key {key!r}"))
                self.key_lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.value(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.value(v, path + (i,)) for i, v in enumerate(node.value)]
        return self._loader.construct_object(node, deep=True)

    def line(self, path: Path_, *, key: bool = False) -> int:
        """The line of the value at `path` (of its key with `key`), else of its nearest parent."""
        while path:
            found = (self.key_lines if key else self.lines).get(path) or self.lines.get(path)
            if found:
                return found
            path = path[:-1]
        return self.lines.get((), 1)

    def error(self, path: Path_, message: str, *, key: bool = False) -> None:
        self.errors.append((self.line(path, key=key), message))


def read(text: str, source: str) -> tuple[Document, Any]:
    """The document and its root value; DeclarativeSpecError when the text is not YAML/JSON or empty."""
    doc = Document(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = (mark.line + 1) if mark else 1
        raise DeclarativeSpecError(source, [(line, f"not valid YAML or JSON: {exc.problem}")]) from None
    if root is None:
        raise DeclarativeSpecError(source, [(1, "the spec is empty")])
    return doc, doc.value(root, ())
