"""raysource.readside."""
