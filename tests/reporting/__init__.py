"""Reports, statements, point-in-time balances and the ledger hash chain."""
