"""pgwebhooks: PostgreSQL row changes as signed HTTP webhooks."""

from importlib.metadata import version

# pyproject.toml is the one place the version is written; the installed metadata carries it here.
__version__ = version("pgwebhooks")
