"""The shared core below nodes, graphs, plugins, local inference and backends: state, run context, specs, the LLM client, usage, answers, votes and judgments."""
