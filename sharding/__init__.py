"""raysource sharding."""
