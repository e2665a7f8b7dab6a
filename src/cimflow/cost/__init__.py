"""Cost model: event counting, energy/latency/area, macro-level validation, host baselines."""
