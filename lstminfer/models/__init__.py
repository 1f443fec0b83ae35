"""Bundled models (see issue: train, export, ship)."""
