// The verification recipes of the systems pgwebhooks' receiver profiles stand in for, as their
// documentation (../shared/reference/) gives them, run by tests/test_profiles.py under Node.
// Written from those documents, not from pgwebhooks' code: an express handler's `req.body` is
// JSON.parse of the raw body and `req.headers` has lower-case names, which is emulated here.
// stdin: {"body": "<raw body>", "headers": {...}, "secret": "..."}; stdout: {"<recipe>": true|false}.
const crypto = require('crypto');

function safeEqual(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

// Fluxbase (000): X-Fluxbase-Signature t=timestamp,v1=signature over `${t}.${JSON.stringify(payload)}`.
function fluxbaseVerify(payload, header, secret, toleranceMs = 300000) {
  const parts = header.split(',').reduce((acc, part) => {
    const [key, value] = part.split('=');
    if (key === 't') acc.timestamp = parseInt(value, 10);
    if (key === 'v1') acc.signatures = [...(acc.signatures || []), value];
    return acc;
  }, {});
  const now = Math.floor(Date.now() / 1000);
  if (Math.abs(now - parts.timestamp) > toleranceMs / 1000) return false;
  const signedPayload = `${parts.timestamp}.${JSON.stringify(payload)}`;
  const expectedSig = crypto.createHmac('sha256', secret).update(signedPayload).digest('hex');
  return parts.signatures.some(sig => safeEqual(sig, expectedSig));
}

// Fluxbase (001): the legacy hex signature of JSON.stringify(req.body), sent as X-Webhook-Signature.
function fluxbaseLegacyVerify(payload, signature, secret) {
  const expectedSignature = crypto.createHmac('sha256', secret).update(JSON.stringify(payload)).digest('hex');
  return safeEqual(signature, expectedSignature);
}

// Fluxbase (001, "Verifying Webhook Signatures"): X-Fluxbase-Signature is the bare hex HMAC of
// JSON.stringify(payload), compared with timingSafeEqual.
function fluxbaseHexVerify(payload, signature, secret) {
  const expectedSignature = crypto
    .createHmac('sha256', secret)
    .update(JSON.stringify(payload))
    .digest('hex');
  const a = Buffer.from(signature);
  const b = Buffer.from(expectedSignature);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

// Truss (004): X-Truss-Signature, hex HMAC of the payload.
function trussVerify(payload, signature, secret) {
  const expected = crypto.createHmac('sha256', secret).update(payload).digest('hex');
  return safeEqual(signature, expected);
}

// Rowbase (003): X-Rowbase-Signature: sha256=<hex> of JSON.stringify(req.body).
function rowbaseVerify(payload, signature, secret) {
  const expected = crypto.createHmac('sha256', secret).update(payload).digest('hex');
  return safeEqual(signature, `sha256=${expected}`);
}

let input = '';
process.stdin.on('data', chunk => { input += chunk; });
process.stdin.on('end', () => {
  const { body, headers, secret } = JSON.parse(input);
  const req = { body: JSON.parse(body), headers: {} };
  for (const [k, v] of Object.entries(headers)) req.headers[k.toLowerCase()] = v;
  const out = {};
  const fluxbaseHeader = req.headers['x-fluxbase-signature'];
  if (fluxbaseHeader !== undefined && !fluxbaseHeader.startsWith('t=')) {
    out.fluxbase_hex = fluxbaseHexVerify(req.body, fluxbaseHeader, secret);
  } else if (fluxbaseHeader !== undefined) {
    out.fluxbase = fluxbaseVerify(req.body, req.headers['x-fluxbase-signature'], secret);
    out.fluxbase_legacy = fluxbaseLegacyVerify(req.body, req.headers['x-webhook-signature'], secret);
  }
  if (req.headers['x-truss-signature'] !== undefined) {
    out.truss_raw = trussVerify(body, req.headers['x-truss-signature'], secret);
    out.truss_stringify = trussVerify(JSON.stringify(req.body), req.headers['x-truss-signature'], secret);
  }
  if (req.headers['x-rowbase-signature'] !== undefined) {
    out.rowbase = rowbaseVerify(JSON.stringify(req.body), req.headers['x-rowbase-signature'], secret);
  }
  out.stringify_identical = JSON.stringify(req.body) === body;
  process.stdout.write(JSON.stringify(out));
});
