"""The HPO flow (and, with the work-pool issue, the trial flow)."""
