"""raysource journal."""
