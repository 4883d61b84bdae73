"""pgwebhooks: PostgreSQL row changes as signed HTTP webhooks."""

__version__ = "0.1.0"
