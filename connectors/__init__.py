"""Flywheel connectors."""
