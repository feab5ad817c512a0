"""Flywheel jobs."""
