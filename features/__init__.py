"""Flywheel features."""
