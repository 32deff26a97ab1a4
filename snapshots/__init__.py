"""raysource snapshots."""
