"""optigraph: an OpenAI-compatible optimizing inference proxy built on LangGraph graphs."""

from optigraph.errors import OptigraphError

__version__ = "0.1.0"
__all__ = ["OptigraphError", "__version__"]
