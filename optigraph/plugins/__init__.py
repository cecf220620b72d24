"""Plugins: pre- and post-nodes around an approach graph (privacy, readurls, memory, json...)."""
