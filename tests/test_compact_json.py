"""Every body pgwebhooks builds is compact JSON, byte for byte what JSON.stringify and Python's
compact json.dumps print for it, in every profile, with and without exclude_columns.

Receivers that verify a signature over JSON.stringify(req.body) (the Fluxbase and Rowbase recipes)
answer 401 to anything else. Row images are the hard part: row_to_json embeds a jsonb column as
jsonb prints it ("a": 1) and a json column as it was typed, and the redacted image was built with
json_object_agg ({ "id" : 1 }).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

PROFILES = ["standard", "fluxbase", "fluxbase_hex", "truss", "rowbase", "flux", "supabase", "hasura"]

# Node re-serialises each body of a JSON array of bodies, as an express receiver would.
NODE_STRINGIFY = """
let input = '';
process.stdin.on('data', c => { input += c; });
process.stdin.on('end', () => {
  process.stdout.write(JSON.stringify(JSON.parse(input).map(b => JSON.stringify(JSON.parse(b)))));
});
"""


def node_stringify(bodies: list[str]) -> list[str]:
    node = shutil.which("node")
    assert node is not None, "node is needed to check bodies against JSON.stringify"
    out = subprocess.run([node, "-e", NODE_STRINGIFY], input=json.dumps(bodies), capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def python_compact(body: str) -> str:
    return json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)


def bodies_of(conn: psycopg.Connection, profile: str, excluded: list[str] | None) -> list[str]:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text, doc jsonb, raw json, amount numeric,"
                 " flag boolean, gone text, tags text[], at timestamptz DEFAULT '2026-01-02 03:04:05.678+00')")
    event: dict = {"table": "items"}
    if excluded:
        event["exclude_columns"] = excluded
    conn.execute("SELECT webhooks.create_event_type('order.completed', 'paid')")
    conn.execute("SELECT * FROM webhooks.create_webhook(name => 'h', url => 'https://example.com/h',"
                 " events => %s, profile => %s)",
                 (Jsonb([event, {"event_type": "order.*"}]), profile))
    label = 'say "hi": {ok} [1, 2]\n\t\u00e9\u2028 \U0001f600 \\ / \x01'
    conn.execute("INSERT INTO items (id, label, doc, raw, amount, flag, tags) VALUES"
                 " (1, %s, %s, %s::json, 12.50, true, ARRAY['a b', 'c']),"
                 " (2, 'plain', '{\"b\": {\"c\": [1, 2, {\"d\": null}]}, \"a\": \"x: y\"}', '[ 1 , \"\\u00e9\" ]',"
                 " -0.5, NULL, NULL)",
                 (label, Jsonb({"nested": {"k": [1, "two", {"three": 3}], "n": 7.550}, "s": "a: b, c"}),
                  '{ "x" : [1, 2.50, 1e3, -0],  "y" : "\\u00e9\\/" }'))
    conn.execute("UPDATE items SET label = 'changed', doc = '{\"z\": 1}' WHERE id = 1")
    conn.execute("DELETE FROM items WHERE id = 2")
    conn.execute("SELECT webhooks.publish('order.completed', %s)",
                 (Jsonb({"order": {"id": 7, "lines": [{"sku": "a: b", "qty": 2}]}, "total": 12.5}),))
    conn.execute("SELECT webhooks.send_test((SELECT id FROM webhooks.webhooks))")
    rows = conn.execute("SELECT body FROM webhooks.claim(100, 30) ORDER BY delivery_id").fetchall()
    assert len(rows) == 6  # 2 inserts, 1 update, 1 delete, 1 event, 1 test
    return [r[0] for r in rows]


@pytest.mark.parametrize("excluded", [None, ["gone", "raw"]], ids=["plain", "exclude_columns"])
@pytest.mark.parametrize("profile", PROFILES)
def test_bodies_are_compact_json_as_json_stringify_prints_them(
    conn: psycopg.Connection, profile: str, excluded: list[str] | None
) -> None:
    bodies = bodies_of(conn, profile, excluded)
    assert node_stringify(bodies) == bodies
    assert [python_compact(b) for b in bodies] == bodies
    rows = [json.loads(b) for b in bodies]
    text = json.dumps(rows)
    assert ('"gone"' in text) is (excluded is None)
    if profile in ("standard", "fluxbase", "fluxbase_hex", "supabase"):
        first = next(r["record"] for r in rows if (r.get("record") or {}).get("label", "").startswith("say"))
        # Column order kept, nested values intact.
        assert list(first)[:3] == ["id", "label", "doc"]
        assert first["doc"] == {"nested": {"k": [1, "two", {"three": 3}], "n": 7.55}, "s": "a: b, c"}
        assert first["amount"] == 12.5
        assert first["label"].startswith('say "hi": {ok} [1, 2]\n')
        if excluded is None:
            assert first["raw"] == {"x": [1, 2.5, 1000, 0], "y": "\u00e9/"}


def test_compact_image_keeps_an_already_compact_image_as_it_is(conn: psycopg.Connection) -> None:
    same = conn.execute("""SELECT webhooks._compact_image('{"id":1,"label":"a b"}'::json)::text""").fetchone()
    assert same == ('{"id":1,"label":"a b"}',)
    redacted = conn.execute("""SELECT webhooks._without('{"id":1,"x":2,"label":"a"}'::json, '{x}')::text""")
    assert redacted.fetchone() == ('{"id":1,"label":"a"}',)


def test_numbers_keep_every_digit_and_range(conn: psycopg.Connection) -> None:
    """Reprinting a number as JavaScript would must never lose digits or fail on range."""
    cases = {
        "12.50": "12.5",
        "-0.0": "0",
        "1234567.123456789012": "1234567.123456789012",  # more digits than a double: kept as is
        "1e-400": "1e-400",  # outside float8's range: kept, and no error
        "0." + "0" * 399 + "1": "0." + "0" * 399 + "1",
        "1" + "0" * 400: "1" + "0" * 400,
    }
    for text, sent in cases.items():
        row = conn.execute("SELECT webhooks._compact_number(%s)", (text,)).fetchone()
        assert row is not None and row[0] == sent, (text, row)


def javascript_number(text: str) -> str:
    """What the body carries for a JSON number: JavaScript's shortest form where a double holds it
    exactly as written (between 1e-4 and 1e15), else the number as it came."""
    if re.fullmatch(r"-?[0-9]{1,15}", text):
        return "0" if text == "-0" else text
    n = Decimal(text)
    if n == 0:
        return "0"
    if abs(n) < Decimal("1e-4") or abs(n) >= Decimal("1e15"):
        return text
    shortest = repr(float(n))
    shortest = shortest[:-2] if shortest.endswith(".0") else shortest
    return shortest if Decimal(shortest) == n else text


def _decimal(sign: str, digits: str, scale: int, zeros: int) -> str:
    if not scale:
        return f"{sign}{digits}"
    return f"{sign}{digits[:-scale] or '0'}.{digits[-scale:].rjust(scale, '0')}{'0' * zeros}"


decimals = st.builds(
    _decimal, st.sampled_from(["", "-"]),
    st.text("0123456789", min_size=1, max_size=22).map(lambda d: d.lstrip("0") or "0"),
    st.integers(0, 12), st.integers(0, 3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(decimals)
def test_numbers_print_as_javascript_does_whatever_their_digits(conn: psycopg.Connection, text: str) -> None:
    """The short path (at most 15 significant digits: trailing zeros dropped, no float8) and the
    long one agree with a reference built on Python's shortest float repr."""
    row = conn.execute("SELECT webhooks._compact_number(%s)", (text,)).fetchone()
    assert row is not None and row[0] == javascript_number(text), text
    flat = conn.execute("SELECT webhooks._compact_image(json_build_object('id', 1, 'n', %s::numeric, 's', 'x'))::text",
                        (text,)).fetchone()
    assert flat is not None and json.loads(flat[0], parse_float=str, parse_int=str)["n"] == javascript_number(
        conn.execute("SELECT %s::numeric::text", (text,)).fetchone()[0]), text


flat_text = st.text(alphabet='0123456789.:,}{[" -eE\\ab', max_size=24)


# A json column's number is embedded as it was typed: exponents JSON.stringify prints in full.
json_numbers = st.sampled_from(["1", "1e3", "2.5E2", "-1e-7", "1E+20", "0e0", "12.50", "-0", "7"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(decimals, decimals, flat_text, st.floats(allow_nan=False, allow_infinity=False), flat_text, json_numbers)
def test_a_flat_image_with_trailing_zeros_takes_the_short_path_to_the_same_bytes(
    conn: psycopg.Connection, a: str, b: str, text: str, real: float, key: str, raw: str
) -> None:
    """Attack on the short path (_compact_numbers): strings that look like numbers after a colon
    ("x":1.50,), keys that do, numbers it must not touch (below 1e-4, 16 digits and more, -0, a
    double's exponent, a json column's 1e3). Whatever the row holds, the image is byte for byte
    what the full walk (_compact) prints."""
    image = conn.execute(
        sql.SQL("SELECT row_to_json(x)::text FROM (SELECT %s::numeric AS a, %s::text AS t, %s::numeric AS b,"
                " %s::float8 AS f, %s::json AS j, 1 AS {}) x").format(sql.Identifier(key or "k")),
        (a, text, b, real, raw)).fetchone()
    assert image is not None
    row = conn.execute("SELECT webhooks._compact_image(%s::json)::text, webhooks._compact(%s::json)::text",
                       (image[0], image[0])).fetchone()
    assert row is not None and row[0] == row[1], image[0]


def test_the_short_path_is_the_one_taken_for_a_money_column(conn: psycopg.Connection) -> None:
    """12.50 and 3.00 in a numeric(12,2) column: trimmed by _compact_numbers, not walked."""
    image = conn.execute("""SELECT row_to_json(x)::text FROM (SELECT 1 AS id, 12.50::numeric(12, 2) AS amount,
                            'due 10:30, 1.5' AS note, 3.00::numeric(12, 2) AS tax) x""").fetchone()
    assert image is not None
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL track_functions = 'all'")
        out = conn.execute("SELECT webhooks._compact_image(%s::json)::text", (image[0],)).fetchone()
        calls = conn.execute("SELECT p.proname, pg_stat_get_xact_function_calls(p.oid) FROM pg_proc p"
                             " WHERE p.pronamespace = 'webhooks'::regnamespace"
                             " AND p.proname IN ('_compact', '_compact_numbers')").fetchall()
    assert out == ('{"id":1,"amount":12.5,"note":"due 10:30, 1.5","tax":3}',)
    assert dict(calls) == {"_compact_numbers": 1, "_compact": None}


def test_a_json_columns_exponent_is_printed_as_json_stringify_does(conn: psycopg.Connection) -> None:
    """A json column holding 1e3 is embedded verbatim by row_to_json; JSON.stringify prints 1000,
    so a flat image that is otherwise compact must not be sent as it is (a signature checked over
    JSON.stringify(req.body) would fail), alone or beside a trailing zero."""
    rows = conn.execute("""SELECT webhooks._compact_image(row_to_json(x))::text FROM (
                               SELECT 1 AS id, '1e3'::json AS raw UNION ALL
                               SELECT 2, '2.5E2'::json) x ORDER BY 1""").fetchall()
    assert rows == [('{"id":1,"raw":1000}',), ('{"id":2,"raw":250}',)]
    both = conn.execute("""SELECT webhooks._compact_image(row_to_json(x))::text
                           FROM (SELECT 12.50 AS a, '1e3'::json AS raw, 'ab1e3' AS s) x""").fetchone()
    assert both == ('{"a":12.5,"raw":1000,"s":"ab1e3"}',)
