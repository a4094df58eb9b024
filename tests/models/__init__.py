"""The model conformance suite and registry tests (a package, so its conftest does not shadow tests/conftest.py)."""
