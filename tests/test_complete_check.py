"""complete()'s input check: the runner's valid reports take a one-pass check, and nothing passes
it that the full check (webhooks._check_json_array, which names the problem) would refuse."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The spec _check_results gives the full check (065_complete.sql).
SPEC = json.dumps({
    "delivery_id": ["integer", -9223372036854775808, 9223372036854775807, True],
    "attempt": ["integer", -2147483648, 2147483647, True],
    "status_code": ["integer", -2147483648, 2147483647, False],
    "latency_ms": ["integer", -2147483648, 2147483647, False],
    "retry_after_seconds": ["integer", -2147483648, 2147483647, False],
    "response_excerpt": ["string", None, None, False],
    "error": ["string", None, None, False]})

# What a hostile or broken runner may put in a key: edges of every range, numbers that are no
# integers, integers written as text, other JSON types.
EDGES: list[Any] = [None, 0, 1, -1, 200, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**63 - 1, 2**63, -2**63,
                    -2**63 - 1, 10**30, 1.0, 1.5, -0.0, 1e2, 1e-2, "5", "", "ok", "1.0", True, False, [], [1],
                    {}, {"a": 1}]
MISSING = object()
KEYS = [*json.loads(SPEC), "extra"]


def _outcome(conn: psycopg.Connection, sql: str, *params: Any) -> tuple[str | None, str | None]:
    try:
        with conn.transaction():
            conn.execute(sql, params)
    except psycopg.Error as e:
        return e.sqlstate, e.diag.message_primary
    return None, None


def _element() -> st.SearchStrategy[Any]:
    value = st.sampled_from([MISSING, *EDGES])
    obj = st.fixed_dictionaries({k: value for k in KEYS}).map(
        lambda d: {k: v for k, v in d.items() if v is not MISSING})
    # Mostly valid results, so that the one odd value is what decides.
    valid = st.fixed_dictionaries({"delivery_id": st.integers(1, 2**40), "attempt": st.integers(1, 9),
                                   "status_code": st.sampled_from([200, 500, None]),
                                   "response_excerpt": st.sampled_from(["ok", None])})
    odd = st.tuples(valid, st.sampled_from(KEYS), st.sampled_from([MISSING, *EDGES])).map(
        lambda t: {**{k: v for k, v in t[0].items() if k != t[1]}, **({} if t[2] is MISSING else {t[1]: t[2]})})
    return st.one_of(valid, odd, obj, st.sampled_from(EDGES))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(report=st.one_of(st.lists(_element(), max_size=4), st.sampled_from(EDGES)))
def test_complete_refuses_what_the_full_check_refuses_with_its_message(conn: psycopg.Connection,
                                                                       report: Any) -> None:
    text = json.dumps(report)
    fast = _outcome(conn, "SELECT webhooks._check_results(%s::jsonb)", text)
    full = _outcome(conn, "SELECT webhooks._check_json_array(%s::jsonb, 'results', %s::jsonb)", text, SPEC)
    assert fast == full, text


def test_a_valid_report_is_not_checked_key_by_key(conn: psycopg.Connection) -> None:
    report = [{"delivery_id": i, "attempt": 1, "status_code": 200, "latency_ms": 3, "response_excerpt": "ok",
               "error": None, "retry_after_seconds": None} for i in range(1, 201)]
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL track_functions = 'all'")
        conn.execute("SELECT count(*) FROM webhooks.complete(%s::jsonb)", (json.dumps(report),))
        calls = conn.execute("SELECT coalesce(sum(pg_stat_get_xact_function_calls(p.oid)), 0)::int FROM pg_proc p"
                             " WHERE p.oid = 'webhooks._check_json_array'::regproc").fetchone()
        assert calls == (0,)
    # A bad one still gets the full check's message.
    report[7]["attempt"] = "1"
    assert _outcome(conn, "SELECT * FROM webhooks.complete(%s::jsonb)", json.dumps(report)) == (
        "WH013", "results: [7].attempt: must be an integer, not \"1\"")


def test_a_result_with_no_status_and_an_empty_error_is_logged_as_no_response(conn: psycopg.Connection) -> None:
    """Found by Hypothesis (test_fuzz_runner_api): `"error": ""` without a status left the attempt
    row with neither, and the whole report failed on delivery_attempts_outcome_known (23514)."""
    conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    conn.execute("SELECT webhooks.create_webhook('h', 'https://e.com/h', '[{\"table\": \"items\"}]')")
    conn.execute("INSERT INTO items VALUES (1)")
    (delivery_id, attempt) = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(10)").fetchone()
    conn.execute("SELECT * FROM webhooks.complete(%s::jsonb)",
                 (json.dumps([{"delivery_id": delivery_id, "attempt": attempt, "error": ""}]),))
    assert conn.execute("SELECT status_code, error FROM webhooks.delivery_attempts").fetchone() == (None, "no response")


def test_a_name_of_next_line_characters_is_blank(conn: psycopg.Connection) -> None:
    """Found by Hypothesis (test_fuzz_management): U+0085 (NEL) is whitespace to Python's
    strip() and to receivers, not to PostgreSQL's \\s; a name of it alone was accepted."""
    try:
        conn.execute("SELECT webhooks.create_webhook(%s, 'https://e.com/h', '[]')", ("\x85 \x85",))
    except psycopg.Error as e:
        assert (e.sqlstate, "blank" in (e.diag.message_primary or "")) == ("WH001", True)
    else:
        raise AssertionError("a blank name was accepted")
