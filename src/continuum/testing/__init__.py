"""Test doubles and helpers, public like ``trio.testing``."""
