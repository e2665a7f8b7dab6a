"""cimflow."""
