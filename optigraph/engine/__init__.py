"""The engine: selects the approach, compiles expressions to graphs, runs them, shapes responses."""
