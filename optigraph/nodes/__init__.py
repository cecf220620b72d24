"""Reusable graph nodes and the helpers they share. Approaches in graphs/ are mostly wiring of these."""
