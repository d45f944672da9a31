"""Where a trial runs: local processes with GPU slots (work pools come with the work-pool issue)."""
