"""Kept only for tests/test_cli.py, which still imports from here: the helpers live in helpers.py."""

from helpers import empty_database

__all__ = ["empty_database"]
