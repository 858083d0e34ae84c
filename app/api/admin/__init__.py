"""The admin plane over REST: tenants, API keys, budgets, bulk actions, audit log."""
