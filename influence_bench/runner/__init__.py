"""Running entries against a task: one process per entry, then metrics and the results table."""
