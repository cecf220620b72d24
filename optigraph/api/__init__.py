"""The HTTP edge: FastAPI routers, auth, OpenAI-style errors, SSE."""
