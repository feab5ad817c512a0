"""Flywheel training."""
