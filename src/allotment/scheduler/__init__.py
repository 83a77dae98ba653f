"""Pure scheduling: a snapshot and events in, decisions out (arrives with the scheduler issue)."""
