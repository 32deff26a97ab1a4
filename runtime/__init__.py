"""raysource runtime."""
