"""`pgwebhooks roles`: the SQL that creates pgwebhooks' roles, for restoring into a new cluster.

Roles belong to the cluster, so `pg_dump` does not carry them: restored without them, every
`OWNER TO webhooks_capture` and `GRANT ... TO webhooks_runner` fails and the capture functions
end up owned by whoever restores. `pgwebhooks roles | psql -v ON_ERROR_STOP=1 NEW_CLUSTER`
before `pg_restore` puts them back. The statements are idempotent, like the ones in
the migrations that first made these roles (0001, 0006, 0011; a test checks they agree).
"""

from __future__ import annotations

import click

# Each NOLOGIN; what each may do is granted by sql/functions/090_privileges.sql.
ROLES = ("webhooks_admin", "webhooks_runner", "webhooks_capture", "webhooks_publisher", "webhooks_viewer")


def roles_sql() -> str:
    blocks = [
        "DO $$\nBEGIN\n"
        f"    CREATE ROLE {name} NOLOGIN;\n"
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;\nEND $$;\n"
        for name in ROLES
    ]
    return "-- pgwebhooks roles: run in the new cluster before pg_restore.\n" + "".join(blocks)


@click.command("roles")
def roles() -> None:
    """Print SQL creating pgwebhooks' roles (run it in a new cluster before pg_restore)."""
    click.echo(roles_sql(), nl=False)
