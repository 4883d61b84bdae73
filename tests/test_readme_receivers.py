"""The README's receiver examples (Python and Node) verify real deliveries and refuse forgeries.

The code is taken from the README itself, so the examples cannot drift from what is tested."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

README = Path(__file__).resolve().parent.parent / "README.md"


def example(language: str, first_line: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"the README's {first_line!r} example"
    return found[0]


def deliveries(conn: psycopg.Connection, secret: str | None) -> tuple[str, list[dict[str, Any]]]:
    conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    row = conn.execute("SELECT secret FROM webhooks.create_webhook('r', 'https://e.example/', %s, secret => %s)",
                       (Jsonb([{"table": "orders"}]), secret)).fetchone()
    assert row is not None
    conn.execute("INSERT INTO orders VALUES (1, 'Zoë ✓ \"quoted\"'), (2, 'plain')")
    claimed = conn.execute("SELECT body, headers FROM webhooks.claim(10, 30)").fetchall()
    assert len(claimed) == 2
    return row[0], [{"body": body, "headers": {k.lower(): v for k, v in headers.items()}} for body, headers in claimed]


def cases(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each real request, then forgeries of it: another body, another id, an old timestamp."""
    out = []
    for r in requests:
        out.append({**r, "expect": True})
        out.append({**r, "body": r["body"].replace("1", "2", 1), "expect": False})
        out.append({**r, "headers": {**r["headers"], "webhook-id": "msg_forged"}, "expect": False})
        out.append({**r, "headers": {**r["headers"], "webhook-timestamp": "1000000000"}, "expect": False})
    return out


PY_HARNESS = """
import json, sys
for case in json.load(sys.stdin)["cases"]:
    print(json.dumps(verify(SECRET, case["headers"], case["body"].encode())))
"""

JS_HARNESS = """
const { verify } = require(process.argv[2]);
let input = '';
process.stdin.on('data', c => { input += c; });
process.stdin.on('end', () => {
  const { secret, cases } = JSON.parse(input);
  for (const c of cases) console.log(JSON.stringify(verify(secret, c.headers, Buffer.from(c.body, 'utf8'))));
});
"""


def run_examples(tmp_path: Path, secret: str, requests: list[dict[str, Any]]) -> None:
    all_cases = cases(requests)
    expected = [c["expect"] for c in all_cases]
    stdin = json.dumps({"secret": secret, "cases": all_cases})
    py = tmp_path / "receiver.py"
    py.write_text(example("python", "# receiver.py") + f"\nSECRET = {secret!r}\n" + PY_HARNESS)
    out = subprocess.run(["python3", str(py)], input=stdin, capture_output=True, text=True, timeout=60, check=True)
    assert [json.loads(x) for x in out.stdout.split()] == expected
    node = shutil.which("node")
    assert node is not None, "node runs the README's JavaScript example"
    js = tmp_path / "receiver.js"
    js.write_text(example("javascript", "// receiver.js"))
    harness = tmp_path / "harness.js"
    harness.write_text(JS_HARNESS)
    out = subprocess.run([node, str(harness), str(js)], input=stdin, capture_output=True, text=True, timeout=60,
                         check=True)
    assert [json.loads(x) for x in out.stdout.split()] == expected


def test_readme_receivers_verify_a_generated_whsec_secret(conn: psycopg.Connection, tmp_path: Path) -> None:
    secret, requests = deliveries(conn, None)
    assert secret.startswith("whsec_")
    run_examples(tmp_path, secret, requests)


def test_readme_receivers_verify_a_plain_secret(conn: psycopg.Connection, tmp_path: Path) -> None:
    secret, requests = deliveries(conn, "a-plain-string-secret-of-mine ✓")
    run_examples(tmp_path, secret, requests)
