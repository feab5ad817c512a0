"""Flywheel schemas."""
