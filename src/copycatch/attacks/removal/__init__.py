"""Removal attacks: white-box laundering of a model the thief holds (see issue: thief's toolbox)."""
