"""raysource.runtime.actors."""
