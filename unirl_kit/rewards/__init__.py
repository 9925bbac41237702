"""Per-sample rewards (the `rewards` registry group) and their weighted composition."""
