"""HTTP routes of the runtime API, one module per area."""
