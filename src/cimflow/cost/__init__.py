"""Cost model: event counting, energy/latency/area from a Plan, macro-level validation, host baselines."""

from cimflow.cost.estimate import CostOptions, estimate, gather_stats, print_cost

__all__ = ["CostOptions", "estimate", "gather_stats", "print_cost"]
