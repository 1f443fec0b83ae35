"""control ops (being written)."""
