"""The operator dashboard served at /dashboard (server-rendered HTML, no build step)."""
