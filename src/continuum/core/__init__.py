"""Sans-IO policy: plain functions and classes, no event loop."""
