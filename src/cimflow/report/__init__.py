"""Reports: terminal tables, JSON and HTML. Reports read results; they never recompute them."""
