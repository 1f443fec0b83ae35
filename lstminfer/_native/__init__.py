"""The compiled extensions built from native/ (a leaf: they import no lstminfer Python module)."""
