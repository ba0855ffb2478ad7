"""Outbound calls: placing one call, answering-machine detection, do-not-call and opt-out."""
