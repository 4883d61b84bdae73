"""Every public function of the SQL API, fuzzed by the types of its arguments.

The other fuzz tests aim at what each function does (test_fuzz_management.py, test_fuzz_settings.py,
test_fuzz_runner_api.py); this one follows the API as it grows. It reads the functions from the
installed schema (every `webhooks.*` function whose name has no leading underscore), draws
arguments for each by their types (hostile values, NULL, the ids of a real webhook and real
deliveries, or the argument's default left out) and checks the same property:

- any input that reaches a function either succeeds or raises an SQLSTATE of class WH, never an
  internal error, a cast failure or a constraint's own error;
- a failing call writes nothing.

A function with an argument type no strategy covers fails the test, so a new function cannot
slip past it. Each call runs as the superuser, in a transaction rolled back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fuzz_inputs as fz
import psycopg
import pytest
from helpers import World, assert_ours, short
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

EXAMPLES = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])

FUNCTIONS = """
SELECT p.oid::regprocedure::text AS signature, p.proname AS name, p.pronargdefaults AS defaults,
       coalesce(p.proargnames[1:p.pronargs], '{}') AS arg_names,
       ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t) AS arg_types
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'webhooks' AND p.proname !~ '^_' AND p.prokind = 'f'
ORDER BY 1
"""


def strategy(world: World, arg_type: str) -> st.SearchStrategy[Any]:
    uuid_ = st.one_of(st.just(world.webhook_id), fz.random_uuid, st.none())
    by_type: dict[str, st.SearchStrategy[Any]] = {
        "text": st.one_of(fz.maybe_text, fz.url, fz.secret, fz.event_type, st.sampled_from(["DELIVERED", "failed",
                          "pending", "INSERT", "read", "write", "admin", "items"])),
        "integer": fz.int4,
        "bigint": st.one_of(st.sampled_from(world.delivery_ids), fz.int8),
        "uuid": uuid_,
        "uuid[]": st.one_of(st.none(), st.lists(uuid_, max_size=4)),
        "jsonb": st.one_of(st.none(), fz.json_value, fz.events, fz.headers, fz.changes(), fz.published_data,
                           st.lists(st.fixed_dictionaries({"delivery_id": st.one_of(
                               st.sampled_from(world.delivery_ids), fz.int8), "attempt": fz.int4}), max_size=3)
                           ).map(lambda v: None if v is None else Jsonb(v)),
        "interval": fz.interval,
        "interval[]": fz.retry_schedule,
        "boolean": st.one_of(st.booleans(), st.none()),
        "timestamp with time zone": fz.timestamp,
    }
    assert arg_type in by_type, f"no strategy for arguments of type {arg_type}: add one"
    return by_type[arg_type]


@pytest.fixture
def world(db: str) -> Iterator[World]:
    with psycopg.connect(db, autocommit=True, row_factory=dict_row) as c:
        yield World(c)


def fuzz(world: World, fn: dict[str, Any]) -> None:
    """Call `fn` with drawn arguments, EXAMPLES times; an argument with a default may be left out."""
    names: list[str] = fn["arg_names"]
    types: list[str] = fn["arg_types"]
    assert len(names) == len(types) and all(names), f"{fn['signature']}: every argument has a name"
    first_default = len(types) - fn["defaults"]
    drawn = st.fixed_dictionaries({
        name: st.one_of(st.just(...), strategy(world, t)) if i >= first_default else strategy(world, t)
        for i, (name, t) in enumerate(zip(names, types, strict=True))})

    @EXAMPLES
    @given(args=drawn)
    def call(args: dict[str, Any]) -> None:
        given_args = [(f"a{i}", name, types[i]) for i, name in enumerate(names) if args[name] is not ...]
        params = {key: args[name] for key, name, _ in given_args}
        named = sql.SQL(", ").join(sql.SQL("{} => %({})s::{}").format(sql.Identifier(name), sql.SQL(key), sql.SQL(t))
                                   for key, name, t in given_args)
        casts = sql.SQL(", ").join(sql.SQL("%({})s::{}").format(sql.SQL(key), sql.SQL(t)) for key, _, t in given_args)
        assume(not given_args or world.reaches(casts.as_string(world.conn), params))
        query = sql.SQL("SELECT * FROM webhooks.{}({})").format(sql.Identifier(fn["name"]), named)
        error, _ = world.call(query.as_string(world.conn), params)
        assert_ours(fn["signature"], params, error)

    call()


def test_every_public_function_raises_only_its_own_errors(world: World) -> None:
    functions = world.conn.execute(FUNCTIONS).fetchall()
    assert len(functions) >= 40, "the public functions were not found"
    failures = []
    for fn in functions:
        try:
            fuzz(world, fn)
        except AssertionError as exc:
            failures.append(f"{fn['signature']}: {short(str(exc), 1500)}")
    assert not failures, "\n\n".join(failures)
