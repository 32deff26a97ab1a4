"""raysource.app."""
