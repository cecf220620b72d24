"""LLM backend implementations (OpenAI-compatible HTTP, LiteLLM, local) and the router that picks one
per model. Each speaks the OpenAI wire format (plain dicts) so requests forward unchanged; the
protocol they implement is `optigraph.core.backend`."""
