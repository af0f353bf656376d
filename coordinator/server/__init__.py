"""`conveyor server`: the HTTP API (and, as it grows, webhooks, schedules and the web UI)
over the stores the workers use. See docs/server.md."""
