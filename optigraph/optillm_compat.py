"""OptILLM's server flags and OPTILLM_* variables, read as optigraph settings (the table is docs/optillm.md).

`optigraph serve` accepts OptILLM's command line as it is (`--best-of-n 5 --mcts-depth 2 --model
gpt-4o-mini --log debug`): settings go where optigraph keeps them, and the per-approach flags
become server-wide approach parameters (Settings.approach_params), used where a request gives none.

Precedence, highest first: optigraph's own flags; OptILLM's flags; OPTIGRAPH_* variables; OPTILLM_*
variables; OPENAI_BASE_URL / OPENAI_API_KEY (read only when no base URL is given, as the openai SDK
reads them); the defaults. Approach parameters merge key by key in the same order.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# OptILLM's --log levels, as uvicorn's.
LOG_LEVELS = {n: n for n in ("debug", "info", "warning", "error", "critical")} | {"notset": "debug"}


@dataclass(frozen=True)
class Option:
    """One OptILLM server option: its flags, its variable, its type and where its value goes:
    `setting` (a Settings field) or `param` ((approach, parameter))."""

    flags: tuple[str, ...]
    env: str | None
    kind: type
    help: str
    setting: str | None = None
    param: tuple[str, str] | None = None


OPTIONS: tuple[Option, ...] = (
    Option(("--optillm-api-key",), "OPTILLM_API_KEY", str, "bearer key clients must send", setting="api_key"),
    Option(("--model",), "OPTILLM_MODEL", str, "model for requests that name only an approach", "default_model"),
    Option(("--n",), "OPTILLM_N", int, "choices a request gets when it names no n", setting="default_n"),
    Option(("--best-of-n", "--best_of_n"), "OPTILLM_BEST_OF_N", int, "bon: candidates", param=("bon", "n")),
    Option(("--mcts-simulations",), "OPTILLM_SIMULATIONS", int, "mcts: simulations", param=("mcts", "simulations")),
    Option(("--mcts-exploration",), "OPTILLM_EXPLORATION", float, "mcts: exploration", param=("mcts", "exploration")),
    Option(("--mcts-depth",), "OPTILLM_DEPTH", int, "mcts: simulation depth", param=("mcts", "depth")),
    Option(("--rstar-max-depth",), "OPTILLM_RSTAR_MAX_DEPTH", int, "rstar: depth", param=("rstar", "max_depth")),
    Option(
        ("--rstar-num-rollouts",), "OPTILLM_RSTAR_NUM_ROLLOUTS", int, "rstar: rollouts", param=("rstar", "num_rollouts")
    ),
    Option(("--rstar-c",), "OPTILLM_RSTAR_C", float, "rstar: exploration constant", param=("rstar", "c")),
    Option(
        ("--return-full-response",),
        "OPTILLM_RETURN_FULL_RESPONSE",
        bool,
        "cot_reflection: answer with its thinking too",
        param=("cot_reflection", "return_full_response"),
    ),
    Option(("--log",), "OPTILLM_LOG", str, "log level: debug, info, warning, error, critical", "log_level"),
    Option(("--launch-gui",), "OPTILLM_LAUNCH_GUI", bool, "say where the web UI (/ui) is served"),
    # optigraph has these settings under the same flags (cli.py); here for their OPTILLM_* variables
    Option(("--port",), "OPTILLM_PORT", int, "", setting="port"),
    Option(("--base-url",), "OPTILLM_BASE_URL", str, "", setting="base_url"),
    Option(("--approach",), "OPTILLM_APPROACH", str, "", setting="approach"),
    Option(("--plugins-dir",), "OPTILLM_PLUGINS_DIR", str, "", setting="plugins_dir"),
    Option(("--log-conversations",), "OPTILLM_LOG_CONVERSATIONS", bool, "", setting="log_conversations"),
    Option(("--conversation-log-dir",), "OPTILLM_CONVERSATION_LOG_DIR", str, "", setting="conversation_log_dir"),
    Option(("--ssl-verify",), "OPTILLM_SSL_VERIFY", bool, "", setting="upstream_ssl_verify"),
    Option(("--ssl-cert-path",), "OPTILLM_SSL_CERT_PATH", str, "", setting="upstream_ssl_cert_path"),
)
# Flags optigraph's own command line defines (cli.py): only their variables are read here.
SHARED = frozenset({"--port", "--base-url", "--approach", "--plugins-dir", "--log-conversations"})
SHARED |= {"--conversation-log-dir", "--ssl-verify", "--ssl-cert-path"}

# OptILLM's CePO options (its CepoConfig), as --cepo_<name> flags and keys of --cepo_config_file.
CEPO_FIELDS = (
    "bestofn_n",
    "bestofn_temperature",
    "bestofn_max_tokens",
    "bestofn_rating_type",
    "planning_n",
    "planning_m",
    *(f"planning_temperature_step{i}" for i in range(1, 5)),
    *(f"planning_max_tokens_step{i}" for i in range(1, 5)),
)
# OptILLM CePO options optigraph's cepo has no use for: accepted at the values that change nothing.
CEPO_INERT = {
    "use_plan_diversity": (False, None, "false", "False", "0"),  # diverse plans are not implemented
    "rating_model": (None, "", "None"),  # the ratings use the run's model
    "planning_temperature_step0": None,  # only read with plan diversity
    "planning_max_tokens_step0": None,
    "print_output": None,  # every step is in the run's trace instead
}


def add_arguments(serve: argparse.ArgumentParser) -> None:
    """OptILLM's flags on `optigraph serve` (cli.py keeps optigraph's own)."""
    group = serve.add_argument_group(
        "OptILLM's flags (docs/optillm.md)",
        "Each is also read from the variable it names. --cepo_<option> VALUE sets one cepo parameter.",
    )
    for option in OPTIONS:
        if option.flags[0] in SHARED:
            continue
        help_ = f"{option.help} (${option.env})"
        if option.kind is bool:
            group.add_argument(*option.flags, dest=_dest(option), action="store_const", const=True, help=help_)
        else:
            metavar = {int: "N", float: "X"}.get(option.kind, "VALUE")
            group.add_argument(*option.flags, dest=_dest(option), metavar=metavar, help=help_)
    group.add_argument("--base_url", dest="base_url", help=argparse.SUPPRESS)
    group.add_argument(
        "--no-ssl-verify",
        dest="upstream_ssl_verify",
        action="store_const",
        const=False,
        help="do not verify HTTPS upstreams' certificates (development only; $OPTILLM_SSL_VERIFY=false)",
    )
    for name in (*CEPO_FIELDS, *CEPO_INERT):
        group.add_argument(f"--cepo_{name}", dest=f"optillm_cepo_{name}", help=argparse.SUPPRESS)
    group.add_argument(
        "--cepo_config_file", dest="optillm_cepo_config_file", metavar="FILE", help="cepo parameters from a YAML file"
    )


def _dest(option: Option) -> str:
    return f"optillm_{option.flags[0].lstrip('-').replace('-', '_')}"


def _typed(option: Option, text: str, where: str) -> Any:
    if option.kind is bool:
        return text.strip().lower() in ("true", "1", "yes")
    try:
        return option.kind(text)
    except ValueError:
        raise ValueError(f"{where} {text!r}: not a valid {option.kind.__name__}") from None


def _value(option: Option, raw: Any, where: str) -> Any:
    """A flag's or variable's value as the setting or parameter takes it."""
    value = _typed(option, raw, where) if isinstance(raw, str) else raw
    if option.setting == "approach" and value == "auto":
        return "none"  # OptILLM's default: the request chooses, else no approach
    if option.setting == "log_level":
        if str(value).lower() not in LOG_LEVELS:
            raise ValueError(f"{where} {value!r}: one of {', '.join(LOG_LEVELS)}")
        return LOG_LEVELS[str(value).lower()]
    return value


@dataclass
class Reading:
    """What OptILLM's flags and variables say: settings, approach parameters, and lines for the log."""

    settings: dict[str, Any]
    params: dict[str, dict[str, Any]]
    notes: list[str]


def read(args: argparse.Namespace, environ: Mapping[str, str], *, explicit: Mapping[str, Any]) -> Reading:
    """Settings and approach parameters from OptILLM's flags and variables; `explicit` holds the
    settings optigraph's own flags set (they win). ValueError naming the flag or variable when a value
    is wrong."""
    settings: dict[str, Any] = {}
    params: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    gui = False
    for option in OPTIONS:  # variables first; flags overwrite them
        env = environ.get(option.env) if option.env else None
        # An empty variable is unset (OptILLM's own defaults for paths and URLs are empty strings).
        if not env or (option.setting and f"OPTIGRAPH_{option.setting.upper()}" in environ):
            continue
        gui = _place(option, _value(option, env, option.env or ""), settings, params) or gui
    for option in OPTIONS:
        raw = getattr(args, _dest(option), None) if option.flags[0] not in SHARED else None
        if raw is not None:
            gui = _place(option, _value(option, raw, option.flags[0]), settings, params) or gui
    cepo = _cepo(args)
    if cepo:
        params["cepo"] = {**params.get("cepo", {}), **cepo}
    if gui:
        notes.append("--launch-gui: optigraph serves its web UI at /ui (no Gradio window is started)")
    settings = {k: v for k, v in settings.items() if k not in explicit}
    return Reading(settings=settings, params=params, notes=notes)


def _place(option: Option, value: Any, settings: dict[str, Any], params: dict[str, dict[str, Any]]) -> bool:
    """Puts a value where its option says; True for --launch-gui (which sets nothing)."""
    if option.setting is not None:
        settings[option.setting] = value
    elif option.param is not None:
        params.setdefault(option.param[0], {})[option.param[1]] = value
    return option.flags[0] == "--launch-gui" and bool(value)


def _cepo(args: argparse.Namespace) -> dict[str, Any]:
    """cepo parameters: --cepo_config_file's, then the --cepo_<name> flags over them."""
    values: dict[str, Any] = {}
    path = getattr(args, "optillm_cepo_config_file", None)
    if path:
        import yaml

        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"--cepo_config_file {path!r}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--cepo_config_file {path!r}: not a mapping of CePO options")
        values.update(loaded)
    for name in (*CEPO_FIELDS, *CEPO_INERT):
        raw = getattr(args, f"optillm_cepo_{name}", None)
        if raw is not None:
            values[name] = raw
    out = {}
    for name, value in values.items():
        if name in CEPO_INERT:
            accepted = CEPO_INERT[name]
            if accepted is not None and value not in accepted:
                raise ValueError(f"--cepo_{name} {value!r}: not supported by optigraph's cepo (docs/optillm.md)")
            continue
        if name not in CEPO_FIELDS:
            raise ValueError(f"--cepo_config_file: unknown CePO option {name!r}")
        out[name] = value
    return out


def openai_environment(environ: Mapping[str, str], settings: Mapping[str, Any]) -> dict[str, Any]:
    """OPENAI_BASE_URL and OPENAI_API_KEY as the openai SDK reads them, when no base URL was given
    (by a flag or an OPTIGRAPH_/OPTILLM_ variable): the upstream and the key sent to it."""
    if settings.get("base_url") or environ.get("OPTIGRAPH_BASE_URL"):
        return {}
    out: dict[str, Any] = {}
    key = environ.get("OPENAI_API_KEY")
    if environ.get("OPENAI_BASE_URL"):
        out["base_url"] = environ["OPENAI_BASE_URL"]
    elif key:
        out["base_url"] = OPENAI_DEFAULT_BASE_URL
    if key and not settings.get("upstream_api_key") and "OPTIGRAPH_UPSTREAM_API_KEY" not in environ:
        out["upstream_api_key"] = key
    return out


def merge_params(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Approach parameters merged key by key, later layers winning."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, values in layer.items():
            out[name] = {**out.get(name, {}), **dict(values)}
    return out


def native_params(raw: str | None, environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """optigraph's own --approach-params (else OPTIGRAPH_APPROACH_PARAMS), decoded."""
    text = raw if raw is not None else environ.get("OPTIGRAPH_APPROACH_PARAMS")
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--approach-params (OPTIGRAPH_APPROACH_PARAMS): not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError('--approach-params: an object of objects, e.g. {"mcts": {"simulations": 4}}')
    return value


def serve_settings(args: argparse.Namespace, environ: Mapping[str, str], explicit: dict[str, Any]) -> Reading:
    """Everything `optigraph serve` adds to its own flags' settings (`explicit`): OptILLM's flags and
    variables, the OPENAI_* variables, and the merged approach parameters."""
    reading = read(args, environ, explicit=explicit)
    settings = {**reading.settings, **explicit}
    if settings.get("approach") == "auto":  # OptILLM's --approach default, whichever flag spelled it
        settings["approach"] = "none"
    settings.update(openai_environment(environ, {**settings, **explicit}))
    own = native_params(explicit.get("approach_params"), environ)
    params = merge_params(reading.params, own)
    if params:
        settings["approach_params"] = params
    return Reading(settings=settings, params=params, notes=reading.notes)
