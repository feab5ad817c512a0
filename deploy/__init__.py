"""Flywheel deploy."""
