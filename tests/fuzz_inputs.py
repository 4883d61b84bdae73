"""Hypothesis strategies for hostile inputs to the SQL API (test_fuzz_management.py, test_fuzz_settings.py).

Each strategy mixes hand-picked nasty values (the spellings and sizes that broke things before)
with generated ones. Text never contains NUL: PostgreSQL text cannot carry it, and psycopg refuses
it client-side before anything reaches our functions.
"""

from __future__ import annotations

import base64
import string
import uuid
from typing import Any

from hypothesis import strategies as st

MB = 1024 * 1024


class Big(str):
    """A long string that shows itself briefly in Hypothesis' and pytest's reports."""

    def __repr__(self) -> str:
        return f"Big({self[:12]!r}..., {len(self)} chars)"


class Many(dict):  # type: ignore[type-arg]
    """A dict of many entries, shown briefly."""

    def __repr__(self) -> str:
        return f"Many({len(self)} entries like {next(iter(self.items()), None)!r})"


INT4 = (-(2**31), 2**31 - 1)
INT8 = (-(2**63), 2**63 - 1)

NASTY_TEXT = [
    "", " ", "   ", "\t", "\n", "\r\n", " \t\n\r\x0b\x0c", "\u00a0", "\u3000", "\u200b", "\u202e", "\ufeff",
    "\x01", "\x7f", "\x1b[31mred", "'", "''", '"', "\\", "%s", "%I", "%L", "$1", "'; DROP TABLE items; --",
    "ü", "日本語", "😀" * 50, "e\u0301", "a" * 201, Big("a" * 2049), Big("a" * 10_000), Big("x" * MB),
]
_chars = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
text = st.one_of(st.sampled_from(NASTY_TEXT), st.text(_chars, max_size=40))
maybe_text = st.one_of(st.none(), text)


def _json_leaves() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(*INT4),
        st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**400, 1e308, -1e-308, 0.5]),
        st.floats(allow_nan=False, allow_infinity=False), text,
    )


json_value = st.recursive(
    _json_leaves(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)

TABLES = [
    "items", "public.items", "other.t", "ITEMS", '"items"', "public.", ".items", "a.b.c", "nope", "other.nope",
    "nope.items", "pg_catalog.pg_class", "pg_class", "information_schema.tables", "webhooks.webhooks",
    "webhooks.deliveries", "pg_temp.x", "public.items ", "public .items",
]
OPERATIONS = ["INSERT", "UPDATE", "DELETE", "insert", "Update", "TRUNCATE", "", " INSERT", "TEST", "SELECT"]

event_entry = st.one_of(
    st.fixed_dictionaries(
        {"table": st.one_of(st.sampled_from(TABLES), text)},
        optional={"operations": st.one_of(
            st.lists(st.one_of(st.sampled_from(OPERATIONS), json_value), max_size=5), json_value)},
    ),
    json_value,
)
events = st.one_of(
    st.lists(st.fixed_dictionaries({"table": st.sampled_from(TABLES)}), min_size=1, max_size=3),
    st.lists(event_entry, max_size=4), json_value, st.none(),
)

URLS = [
    "https://example.com/hook", "http://example.com", "HTTP://EXAMPLE.COM/", "https://example.com:443/a?b=c#d",
    "http://127.1/", "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.0.0.1/", "http://0x7f000001/",
    "http://127.0.0.1/", "http://127.0.0.1:0/", "http://127.0.0.1:65536/", "http://127.0.0.1:99999/",
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[1:2:3]/", "http://[zz]/", "http://[::1/",
    "http://user:pass@example.com/", "http://@example.com/", "http://a@b@example.com/", "http://example.com:/",
    "http://-a.example/", "http://a..b/", "http://a_b.example/", "http://.example/", "http://example./",
    "https://exa mple.com/", "https://例え.jp/", "https://xn--r8jz45g.jp/", "https://example.com/\u00e9",
    "https://example.com/\x7f", "https://example.com/\t", "javascript:alert(1)", "ftp://example.com/",
    "http://", "https://", "//example.com", "example.com", Big("https://example.com/" + "a" * 3000),
    "http://1.2.3.4.5/", "http://256.1.1.1/", "http://1.1.1.1.", "http://127.0.0.1./", "http://0/",
    "http://0.0.0.0/",
]
url = st.one_of(
    st.sampled_from(URLS), st.builds(lambda h: "https://" + h, text),
    st.builds(lambda p: "http://example.com/" + p, text), text, st.none(),
)


def _whsec(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


SECRETS = [
    _whsec(b"k" * 32), _whsec(b"k" * 23), _whsec(b"k" * 65), "whsec_", "whsec_!!!!", "whsec_" + "A" * 43,
    "whsec_" + "A" * 32 + "=" + "A" * 11, "whsec_" + "A" * 32 + "==" + "AAAA", "whsec_AAAA=AAAA" + "A" * 32,
    _whsec(b"k" * 32) + "AAAA", _whsec(b"k" * 32) + "=", _whsec(b"k" * 32).rstrip("="), _whsec(b"k" * 31) + "AA==",
    "whsec_" + "A" * 40 + "\n" + "AAAA", "whsec_ " + base64.b64encode(b"k" * 32).decode(),
    Big("whsec_" + "A" * 10_000),
    "short", "sixteen-chars-ok", Big("x" * MB), " " * 16, "\t" * 20, "日本語" * 6,
]
secret = st.one_of(
    st.sampled_from(SECRETS), st.builds(_whsec, st.binary(min_size=0, max_size=80)), text, st.none(),
)

HEADER_NAMES = ["X-Team", "x-ok", "Content-Type", "content-type", "Host", "Webhook-Id", "X Bad", "X:Bad", "", "Ü",
                "X-\x01", "Authorization", "Cookie"]
header_value = st.one_of(
    st.sampled_from(["ok", "", " ", "ü", "日本", "a\tb", "a\x01b", "a\x7fb", "a\rb", "a\nb", "\u2028", Big("x" * MB)]),
    text, json_value,
)
headers = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(HEADER_NAMES), text), header_value, max_size=4),
    st.sampled_from([Many({f"X-H{i}": "v" for i in range(3000)}), {"X-Big": Big("x" * MB)}, {"X-Ok": "fine"}]),
    json_value, st.none(),
)

int4 = st.one_of(st.sampled_from([0, 1, -1, 50, 51, 300, 301, 86400, 86401, *INT4]), st.integers(*INT4), st.none())
int8 = st.one_of(st.sampled_from([0, -1, *INT8, *INT4]), st.integers(*INT8), st.none())

INTERVALS = [
    "0", "1 microsecond", "1 second", "-1 second", "24 hours", "7 days", "1 mon", "P1Y2M3DT4H", "@ 1 minute ago",
    "1000000 years", "100000000 years", "178000000 years", "-178000000 years", "2147483647 days",
    "-2147483648 days", "2147483647 hours", "2147483647 months", "-2147483648 months", "9223372036 seconds",
]
interval = st.one_of(
    st.sampled_from(INTERVALS),
    st.builds(lambda n, unit: f"{n} {unit}", st.integers(-(10**10), 10**10),
              st.sampled_from(["microseconds", "seconds", "minutes", "hours", "days", "months", "years", "centuries"])),
    st.none(),
)
TIMESTAMPS = ["infinity", "-infinity", "epoch", "now", "2026-11-24", "294276-12-31 23:59:59 UTC",
              "4713-01-01 00:00:00 BC", "1970-01-01 00:00:00+14", "2000-02-29T12:00:00Z"]
timestamp = st.one_of(st.sampled_from(TIMESTAMPS), st.datetimes().map(lambda d: d.isoformat() + "Z"), st.none())

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
random_uuid = st.one_of(st.just(ZERO_UUID), st.uuids().map(str), st.just(str(uuid.UUID(int=2**128 - 1))))

CHANGE_FIELDS = ["name", "url", "events", "secret", "description", "enabled", "max_retries", "timeout_seconds",
                 "retry_backoff_seconds", "headers", "id", "created_at", "disabled_reason", "bogus", "NAME"]
_change_values = {
    "name": text, "url": url, "events": events, "secret": secret, "description": maybe_text,
    "enabled": st.one_of(st.booleans(), json_value), "max_retries": st.one_of(int4, json_value),
    "timeout_seconds": st.one_of(int4, json_value), "retry_backoff_seconds": st.one_of(int4, json_value),
    "headers": headers,
}


@st.composite
def changes(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_value)  # not an object at all
    keys = draw(st.lists(st.one_of(st.sampled_from(CHANGE_FIELDS), text), max_size=4, unique=True))
    return {k: draw(_change_values.get(k, json_value)) for k in keys}


printable_ascii = st.text(string.ascii_letters + string.digits + "-_ ", min_size=1, max_size=20)


# -- the settings beyond 0.1.0, subscriptions with filters, published events -----------------------

PROFILES = ["standard", "fluxbase", "fluxbase_hex", "truss", "rowbase", "flux", "supabase", "hasura",
            "Standard", "STANDARD", " standard", "standard ", "", "none", "svix", "fluxbase_hex2"]
profile = st.one_of(st.sampled_from(PROFILES), text, st.none())

# As text, cast to interval[] by the call: a spelling the cast refuses never reaches the function.
retry_schedule = st.one_of(
    st.lists(st.one_of(st.sampled_from(INTERVALS), interval), max_size=8),
    st.sampled_from([[], ["1 second"] * 51, ["1 minute"] * 1000, ["-1 second", "1 second"], ["0"],
                     ["1 second", None], ["2 hours", "1 second"], ["10 years"], ["1 mon"]]),
    st.none(),
)

COLUMNS = ["id", "label", "ID", "Label", "nope", "", " id", "id ", "ctid", "xmin", "tableoid", "oid",
           '"id"', "id, label", "label;"]
columns = st.one_of(
    st.lists(st.one_of(st.sampled_from(COLUMNS), text), min_size=0, max_size=4),
    st.sampled_from([["id", "id"], ["id", "label"], Many({"x": 1})]), json_value,
)
WHERE = [
    "id = 1", "label = 'x'", "id > 0", "true", "false", "label IS NULL", "id = -5", "label = 'a''b'",
    "(old).label = 'x'", "(old).id IS DISTINCT FROM id", "id = 1 OR true", "label ~ '('", "1/0 = 1",
    "id = 2147483647", "random() < 0.5", "now() > '2000-01-01'", "label = current_user",
    "id IN (SELECT 1)", "EXISTS (SELECT FROM pg_class)", "pg_sleep(0) IS NULL", "txid_current() > 0",
    "id = 1; DROP TABLE items", "id = 1 -- x", "id = 1 /* x */", "id =", "(id = 1", "id = 1)", "",
    " ", "nope = 1", "label = 1", "id = '1'", "label::int = 1", "setval('items_id_seq', 1) > 0",
    "webhooks.version() = '1'", "id = $1", "Id = 1", "\"id\" = 1", "label = E'\\''", "label = $$x$$",
    Big("id = 1 AND " * 400 + "true"),
]
where = st.one_of(st.sampled_from(WHERE), text, json_value)

EVENT_TYPES = ["order.completed", "order.refunded", "order.*", "*", "order", "Order.Completed", "order.completed.",
               ".order", "order..completed", "order.completed ", "pgwebhooks.test", "pgwebhooks.*", "nope.undeclared",
               "order.*.x", "**", "order.completed.*", "", "a" * 300 + ".x"]
event_type = st.one_of(st.sampled_from(EVENT_TYPES), text)

filtered_entry = st.fixed_dictionaries(
    {"table": st.one_of(st.sampled_from(["items", "public.items", "other.t"]), st.sampled_from(TABLES))},
    optional={"operations": st.lists(st.sampled_from(OPERATIONS), max_size=3),
              "event_type": st.one_of(event_type, json_value), "columns": columns, "exclude_columns": columns,
              "where": where},
)
type_entry = st.one_of(
    st.fixed_dictionaries({"event_type": st.one_of(event_type, json_value)},
                          optional={"operations": st.just(["INSERT"]), "where": where}),
    event_type,
)
subscriptions = st.one_of(
    st.lists(st.one_of(filtered_entry, type_entry), min_size=1, max_size=3), events,
)

published_data = st.one_of(
    json_value, st.dictionaries(text, json_value, max_size=6),
    st.sampled_from([{}, [], None, "x", 0, {"big": Big("x" * MB)}, Many({f"k{i}": i for i in range(5000)}),
                     {"nested": [[[[[[[[[[[[1]]]]]]]]]]]]}, {"n": 10**400}, {"n": 1e-400}, {"\u0000": 1}]),
)
