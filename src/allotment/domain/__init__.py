"""Pure values and rules: no I/O, no framework. Everything else builds on these."""
