"""Helpers shared by the test modules: one place, so no test module imports another."""
