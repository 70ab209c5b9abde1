"""Request routing for http listeners: pure matching and actions (no I/O)."""
