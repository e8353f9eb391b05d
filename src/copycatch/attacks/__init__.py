"""The thief's side: extraction through an oracle, removal on a model the thief holds."""
