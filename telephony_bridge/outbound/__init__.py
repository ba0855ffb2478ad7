"""Outbound calls: placing them, answering-machine handling, campaigns, do-not-call."""
