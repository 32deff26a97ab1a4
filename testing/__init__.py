"""raysource.testing."""
