"""LLM backends. Each speaks the OpenAI wire format (plain dicts) so requests forward unchanged."""

from optigraph.engine.backends.base import Backend, Capabilities

__all__ = ["Backend", "Capabilities"]
