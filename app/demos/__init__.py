"""Self-contained demos: `cycles demo runaway` and `cycles demo authority`."""
