"""The server's settings from a YAML file, merged with flags and OPTIGRAPH_* variables.

A file is a mapping whose keys are the settings' names (docs/configuration.md; the same names as the
OPTIGRAPH_* variables, lower case). Precedence, highest first: command-line flag, OPTIGRAPH_<NAME>
variable, the file, the default.

Secrets never stand in a file: `api_key`, `upstream_api_key`, `ui_session_secret`, `privacy_key`
and the password of `db_url` must be environment references (`${OPENAI_API_KEY}`), expanded when the
file is read; a literal value is refused. `${NAME}` may stand in any other string value too.

Every problem is a ConfigFileError that names the file and the line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import SecretStr, TypeAdapter, ValidationError

from optigraph.config import Settings
from optigraph.errors import OptigraphError

# Settings whose value is a secret: only an environment reference may stand for them in a file.
SECRET_KEYS = frozenset({"api_key", "upstream_api_key", "ui_session_secret", "privacy_key"})
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ONLY_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
REDACTED = "***"

Source = Literal["flag", "env", "file", "default"]


class ConfigFileError(OptigraphError):
    """A configuration file that cannot be used; the message names the file and the line."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_config"


@dataclass(frozen=True)
class Loaded:
    """Settings with where each value came from."""

    settings: Settings
    sources: dict[str, Source]
    file_lines: dict[str, int]  # the line of each key the file set


def read_file(path: Path, environ: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's settings, validated one by one (environment references expanded), and each key's line."""
    environ = dict(os.environ) if environ is None else environ
    name = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"{name}: cannot read the file: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        raise ConfigFileError(f"{where}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{name}: not valid YAML: {exc}") from None
    if root is None:  # an empty file sets nothing
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigFileError(f"{name}:{root.start_mark.line + 1}: the file must be a mapping of setting: value")
    fields = Settings.model_fields
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in root.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        where = f"{name}:{line}"
        if not isinstance(key_node, yaml.ScalarNode) or key not in fields:
            raise ConfigFileError(f"{where}: unknown setting {key!r}{_did_you_mean(str(key), fields)}")
        if key in lines:
            raise ConfigFileError(f"{where}: {key!r} is set twice (first on line {lines[key]})")
        raw = _plain(value_node, name)
        if key in SECRET_KEYS or key == "db_url":
            _refuse_literal_secret(key, raw, where)
        value = _expand(raw, value_node, name, environ)
        adapter = TypeAdapter(Annotated[fields[key].annotation, fields[key]])
        try:
            values[key] = adapter.validate_python(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            path = tuple(err.get("loc", ()))
            at = _line_of(value_node, path) or line
            inner = ".".join(str(p) for p in path)
            label = f"{key}.{inner}" if inner else key
            raise ConfigFileError(f"{name}:{at}: {label}: {err['msg']} (got {_shown(key, value, path)})") from None
        lines[key] = line
    return values, lines


def load_settings(flags: dict[str, Any], path: Path | None, environ: dict[str, str] | None = None) -> Loaded:
    """Settings from flags > OPTIGRAPH_* variables > the file at `path` (if any) > defaults.

    Raises ConfigFileError for a bad file, pydantic's ValidationError for a bad flag or variable."""
    file_values, file_lines = read_file(path, environ) if path is not None else ({}, {})
    above = Settings(**flags)  # flags, then the environment, over the defaults
    given = {k: getattr(above, k) for k in above.model_fields_set}
    settings = Settings(**{**file_values, **given})
    sources: dict[str, Source] = {}
    for key in Settings.model_fields:
        if key in flags:
            sources[key] = "flag"
        elif key in given:
            sources[key] = "env"
        elif key in file_values:
            sources[key] = "file"
        else:
            sources[key] = "default"
    return Loaded(settings=settings, sources=sources, file_lines=file_lines)


def effective(loaded: Loaded) -> list[tuple[str, str, str]]:
    """(setting, value with secrets redacted, where it came from) for every setting."""
    rows = []
    data = loaded.settings.model_dump(mode="json")
    for key in Settings.model_fields:
        source = loaded.sources[key]
        if source == "file":
            source = f"file, line {loaded.file_lines[key]}"
        elif source == "env":
            source = f"OPTIGRAPH_{key.upper()}"
        rows.append((key, redacted(key, data[key]), source))
    return rows


def redacted(key: str, value: Any) -> str:
    """A setting's value as shown to an operator: secrets masked, a database URL's password too."""
    if key in SECRET_KEYS:
        return "-" if value in (None, "") else REDACTED
    if isinstance(value, SecretStr):
        return REDACTED
    if key == "db_url" and isinstance(value, str):
        return redact_url(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()


def redact_url(url: str) -> str:
    """`url` with its password (if any) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{REDACTED}@", 1)
    return parts._replace(netloc=netloc).geturl()


# ---- helpers ------------------------------------------------------------------------------------


def _plain(node: yaml.Node, name: str) -> Any:
    """A node as plain Python values (what yaml.safe_load gives for it)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        raise ConfigFileError(f"{where}: {exc.problem}") from None
    finally:
        loader.dispose()


def _refuse_literal_secret(key: str, value: Any, where: str) -> None:
    example = "${OPENAI_API_KEY}" if key == "upstream_api_key" else f"${{OPTIGRAPH_{key.upper()}}}"
    if key == "db_url":
        password = urlsplit(value).password if isinstance(value, str) else None
        if password is not None and not ONLY_REFERENCE.match(password):
            raise ConfigFileError(
                f"{where}: db_url holds a literal password: write it as an environment reference, "
                "e.g. postgresql://optigraph:${PGPASSWORD}@db/optigraph"
            )
        return
    if value is None:
        return
    if not isinstance(value, str) or not ONLY_REFERENCE.match(value.strip()):
        raise ConfigFileError(
            f"{where}: {key} is a literal secret: secrets never stand in the file; write an environment "
            f"reference such as {example} and set that variable"
        )


def _expand(value: Any, node: yaml.Node, name: str, environ: dict[str, str]) -> Any:
    """`${NAME}` references in the strings of `value` replaced by the variables' values."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in environ:
                raise ConfigFileError(f"{name}:{node.start_mark.line + 1}: the environment variable {var} is not set")
            return environ[var]

        return REFERENCE.sub(one, value)
    if isinstance(value, dict):
        children = {k.value: v for k, v in node.value} if isinstance(node, yaml.MappingNode) else {}
        return {k: _expand(v, children.get(k, node), name, environ) for k, v in value.items()}
    if isinstance(value, list):
        items = node.value if isinstance(node, yaml.SequenceNode) else []
        return [_expand(v, items[i] if i < len(items) else node, name, environ) for i, v in enumerate(value)]
    return value


def _line_of(node: yaml.Node, path: tuple[Any, ...]) -> int | None:
    """The line of the value at `path` (pydantic's error location) inside `node`, as far as it goes."""
    for step in path:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == str(step)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            found = node.value[step]
        else:
            found = None
        if found is None:
            break
        node = found
    return node.start_mark.line + 1


def _shown(key: str, value: Any, path: tuple[Any, ...]) -> str:
    for step in path:
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and isinstance(step, int) and step < len(value):
            value = value[step]
        else:
            break
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(key: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else " (docs/configuration.md lists the settings)"


def check_command(path: str) -> int:
    """`optigraph config check FILE`: 0 and the effective settings, or 2 and the problem on stderr."""
    import sys

    from pydantic import ValidationError

    try:
        loaded = load_settings({}, Path(path))
    except ConfigFileError as exc:
        print(f"optigraph config check: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # an OPTIGRAPH_* variable of this shell is bad
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        print(f"optigraph config check: OPTIGRAPH_{field.upper()}: {err['msg']}", file=sys.stderr)
        return 2
    rows = effective(loaded)
    width = max(len(k) for k, _, _ in rows)
    print(f"{path}: valid. Effective settings (flag > OPTIGRAPH_* variable > file > default):")
    for key, value, source in rows:
        print(f"  {key.ljust(width)}  {value}    [{source}]")
    return 0
