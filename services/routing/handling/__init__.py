"""Routing's use cases, one module per family; ``services.routing.handlers`` imports them all."""
