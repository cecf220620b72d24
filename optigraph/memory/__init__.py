"""SQL persistence: LangGraph checkpoints, the runs and upstream-calls tables, and their migrations."""
