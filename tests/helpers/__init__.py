"""Helpers shared by tests: tiny pipelines and writers of foreign weight layouts."""
