"""selfsup."""
