"""tensor ops (being written)."""
