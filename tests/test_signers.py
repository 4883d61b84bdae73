"""Two signers, one contract: plpython and pgcrypto give byte-identical headers and like secrets.

Each case is signed three ways: by the Python source in plpython/ (run here), by the plpython
signer in a database and by the pgcrypto signer in another; all three must agree byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import runpy
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import signer_available, skip_unless_signer_available

from conftest import TEMPLATE_DB, Server
from pgwebhooks import migrations

PLPYTHON = Path(__file__).resolve().parent.parent / "plpython"
WHSEC = "whsec_" + base64.b64encode(bytes(range(32))).decode()
CASES = [
    ("id-1", 1700000000, '{"a": 1}', [WHSEC]),
    ("id-2", 0, "", ["plain"]),
    ("0b0cf5e4-5a54-4e0e-9a7b-2b4c1f0f8c11", 1731000000, '{"name": "Zoë ✓ 😀", "q": "\\"x\\""}',
     ["päßwörd ✓", WHSEC, "whsec_" + base64.b64encode(b"\xff" * 24).decode()]),
    ("id-4", 9999999999, "x" * 5000, []),
    ("id-5", 42, "line\nbreaks\tand tabs", ["whsec_" + base64.b64encode(b"short").decode(), "a b c"]),
    ("id-6", 1, "{}", None),
]


@pytest.fixture(scope="module")
def signer_dbs(server: Server) -> Iterator[dict[str, str]]:
    dsns = {}
    available = [s for s in migrations.SIGNERS if signer_available(server.dsn_for(TEMPLATE_DB), s)]
    assert "pgcrypto" in available, "pgcrypto is part of every supported PostgreSQL build"
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        for signer in available:
            conn.execute(f"DROP DATABASE IF EXISTS signer_{signer} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE signer_{signer} TEMPLATE {TEMPLATE_DB}")
            dsns[signer] = server.dsn_for(f"signer_{signer}")
            migrations.migrate(dsns[signer], signer=signer)
    yield dsns
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        for signer in migrations.SIGNERS:
            conn.execute(f"DROP DATABASE IF EXISTS signer_{signer} WITH (FORCE)")


def sign_in(dsn: str, case: tuple) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT webhooks._sign_headers(%s, %s, %s, %s)", case).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_both_signers_match_the_python_source_byte_for_byte(signer_dbs: dict[str, str], case: tuple) -> None:
    expected = runpy.run_path(str(PLPYTHON / "sign_headers.py"))["sign_headers"](*case[:3], case[3] or [])
    assert "pgcrypto" in signer_dbs
    for signer, dsn in signer_dbs.items():
        assert sign_in(dsn, case) == expected, signer


def test_each_database_reports_its_signer(signer_dbs: dict[str, str]) -> None:
    for signer, dsn in signer_dbs.items():
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT webhooks.signer()").fetchone() == (signer,)


def test_pgcrypto_secrets_have_the_plpython_format(signer_dbs: dict[str, str]) -> None:
    with psycopg.connect(signer_dbs["pgcrypto"]) as conn:
        secrets = [conn.execute("SELECT webhooks._generate_secret()").fetchone()[0] for _ in range(50)]
    assert len(set(secrets)) == 50
    for secret in secrets:
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret), secret
        assert len(base64.b64decode(secret[6:])) == 32


def test_pgcrypto_in_another_schema_is_called_by_its_schema(server: Server) -> None:
    """Supabase keeps pgcrypto in `extensions`, outside everyone's search_path."""
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS signer_extschema WITH (FORCE)")
        conn.execute("CREATE DATABASE signer_extschema")
    dsn = server.dsn_for("signer_extschema")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA extensions")
            conn.execute("CREATE EXTENSION pgcrypto WITH SCHEMA extensions")
        migrations.migrate(dsn, signer="pgcrypto")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET search_path = public")
            got = conn.execute("SELECT webhooks._sign_headers('m', 1, 'b', ARRAY['s'])").fetchone()
            source = conn.execute(
                "SELECT prosrc FROM pg_proc WHERE oid = 'webhooks._sign_headers(text,bigint,text,text[])'::regprocedure"
            ).fetchone()
        expected = runpy.run_path(str(PLPYTHON / "sign_headers.py"))["sign_headers"]("m", 1, "b", ["s"])
        assert got is not None and got[0] == expected
        assert source is not None and "extensions.hmac(" in source[0]
    finally:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS signer_extschema WITH (FORCE)")


def test_switching_signers_back_and_forth_keeps_signatures(db: str) -> None:
    skip_unless_signer_available(db, "plpython")
    case = ("id", 123, '{"k": "v"}', [WHSEC, "plain"])
    before = sign_in(db, case)
    for signer in ("pgcrypto", "plpython", "pgcrypto"):
        migrations.migrate(db, signer=signer)
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT webhooks.signer()").fetchone() == (signer,)
        assert sign_in(db, case) == before
    # Without --signer, migrate keeps the installed one rather than going back to the default.
    migrations.migrate(db)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT webhooks.signer()").fetchone() == ("pgcrypto",)


HEX_CASES = [(WHSEC, '{"a":1}'), ("plain", ""), ("päßwörd ✓", '{"name":"Zoë ✓ 😀"}'), ("a b c", "x" * 5000),
             ("line\nbreak", "line\nbreaks\tand tabs")]


@pytest.mark.parametrize("case", HEX_CASES, ids=[str(i) for i in range(len(HEX_CASES))])
def test_hex_hmac_of_the_body_is_byte_identical_in_both_signers(signer_dbs: dict[str, str], case: tuple) -> None:
    """The Truss / Rowbase / Fluxbase-legacy primitive: hex HMAC-SHA256(UTF-8 secret, body)."""
    expected = runpy.run_path(str(PLPYTHON / "hmac_hex.py"))["hmac_hex"](*case)
    assert expected == hmac.new(case[0].encode(), case[1].encode(), hashlib.sha256).hexdigest()
    for signer, dsn in signer_dbs.items():
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT webhooks._hmac_hex(%s, %s)", case).fetchone() == (expected,), signer
            assert conn.execute("SELECT webhooks._hmac_hex(NULL, 'x')").fetchone() == (None,), signer
