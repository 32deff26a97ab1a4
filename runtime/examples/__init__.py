"""raysource runtime/examples."""
