"""Cost model: event counting, energy/latency/area from a Plan, macro-level validation, host baselines."""

from cimflow.cost.estimate import CostOptions, estimate, print_cost

# Activity statistics come from the simulator: cimflow.gather_stats (cimflow.sim.stats); cost never imports sim.
__all__ = ["CostOptions", "estimate", "print_cost"]
