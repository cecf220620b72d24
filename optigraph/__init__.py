"""optigraph: an OpenAI-compatible optimizing inference proxy built on LangGraph graphs."""

from optigraph.errors import OptigraphError

__version__ = "0.1.0"
__all__ = ["ApproachParams", "ApproachSpec", "OptigraphError", "__version__", "approach", "load_declarative"]

_AUTHORING = {"ApproachParams", "ApproachSpec", "approach", "load_declarative"}


def __getattr__(name: str) -> object:
    """The authoring API (optigraph.engine.authoring), imported on first use so `import optigraph` stays light."""
    if name in _AUTHORING:
        from optigraph.engine import authoring

        return getattr(authoring, name)
    raise AttributeError(f"module 'optigraph' has no attribute {name!r}")
