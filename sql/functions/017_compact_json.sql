-- Compact JSON for row images: what JSON.stringify(JSON.parse(body)) and Python's
-- json.dumps(..., separators=(",", ":"), ensure_ascii=False) print, in the image's own key order
-- (json, not jsonb, whose key order is its own). Receivers that verify a signature over
-- JSON.stringify(req.body) need the body byte for byte in that form.

-- Any JSON value, compacted recursively; strings re-escaped as to_json() escapes text.
CREATE OR REPLACE FUNCTION webhooks._compact(value json)
RETURNS json
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    CASE json_typeof(value)
    WHEN 'object' THEN
        -- Scalar fields inline, not a call each (a row image is mostly scalars): a string without
        -- a backslash has no escape to rewrite; an integer of up to 15 digits is already as
        -- JavaScript prints it.
        RETURN ('{' || coalesce((
            SELECT string_agg(to_json(e.k)::text || ':' || CASE
                       WHEN json_typeof(e.v) IN ('object', 'array') THEN webhooks._compact(e.v)::text
                       WHEN json_typeof(e.v) = 'string' AND strpos(e.v::text, '\') = 0 THEN e.v::text
                       WHEN json_typeof(e.v) = 'string' THEN to_json(e.v #>> '{}')::text
                       WHEN json_typeof(e.v) <> 'number' THEN btrim(e.v::text, E' \t\n\r')
                       WHEN btrim(e.v::text, E' \t\n\r') ~ '^-?[1-9][0-9]{0,14}$|^0$' THEN btrim(e.v::text, E' \t\n\r')
                       ELSE webhooks._compact_number(btrim(e.v::text, E' \t\n\r')) END, ',' ORDER BY e.o)
            FROM json_each(value) WITH ORDINALITY AS e(k, v, o)), '') || '}')::json;
    WHEN 'array' THEN
        RETURN ('[' || coalesce((SELECT string_agg(webhooks._compact(a.v)::text, ',' ORDER BY a.o)
                                 FROM json_array_elements(value) WITH ORDINALITY AS a(v, o)), '') || ']')::json;
    WHEN 'string' THEN
        RETURN to_json(value #>> '{}');  -- a json column's "\u00e9" or "\/" as JSON.stringify writes it
    WHEN 'number' THEN
        RETURN webhooks._compact_number(btrim(value::text, E' \t\n\r'))::json;
    ELSE
        RETURN btrim(value::text, E' \t\n\r')::json;
    END CASE;
END
$$;

-- A JSON number as JavaScript prints it: a numeric column's 12.50 is 12.5 to JSON.stringify, so
-- a body carrying 12.50 fails every signature check over JSON.stringify(req.body). Between 1e-4
-- and 1e15 JavaScript prints the shortest decimal that reads back as the same double; for a
-- number of at most 15 significant digits that is its own digits without trailing zeros (15
-- decimal digits survive a round trip through a double), so no float8 is needed (nor the
-- session's extra_float_digits). Outside that range, and for integers beyond 2^53 (which
-- JavaScript cannot hold), the number is left as it is; longer ones go to _compact_long_number.
CREATE OR REPLACE FUNCTION webhooks._compact_number(t text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n numeric;
    trimmed text;
BEGIN
    IF t ~ '^-?[0-9]{1,15}$' THEN
        RETURN CASE WHEN t = '-0' THEN '0' ELSE t END;
    END IF;
    -- numeric first: a numeric column holds values far outside float8's range (1e-400), which
    -- a float8 cast would refuse, failing the delivery.
    n := t::numeric;
    IF n = 0 THEN
        RETURN '0';
    ELSIF abs(n) < 1e-4 OR abs(n) >= 1e15 THEN
        RETURN t;
    END IF;
    trimmed := trim_scale(n)::text;
    IF length(ltrim(translate(trimmed, '-.', ''), '0')) <= 15 THEN
        RETURN trimmed;
    END IF;
    RETURN webhooks._compact_long_number(n, t);
END
$$;

-- More than 15 significant digits: the shortest float8 text (extra_float_digits 1), used only
-- when nothing is lost: 1234567.123456789012 keeps its digits (a receiver in Python or Go reads
-- them; JavaScript rounds what it parses either way).
CREATE OR REPLACE FUNCTION webhooks._compact_long_number(n numeric, t text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp SET extra_float_digits = 1
AS $$
DECLARE
    shortest text := n::float8::text;
BEGIN
    RETURN CASE WHEN shortest::numeric = n THEN shortest ELSE t END;
END
$$;

-- A flat row image (no nested object or array, no backslash, no space around ':') whose only
-- flaw is a number with trailing zeros, the common case of a numeric(12,2) column (12.50):
-- those zeros are cut with a regular expression instead of a walk of every field (_compact,
-- 8 times slower). In such an image '":' occurs only where a key ends and its value starts
-- (no string can hold a quote unescaped), so the expression touches no string. What it leaves
-- that the walk would print otherwise (a number below 1e-4, one of 15 or more digits, -0, an
-- exponent) goes to the walk: the result is byte for byte _compact's. PL/pgSQL without SET
-- search_path (a function-level SET costs a GUC save and restore per call), so every name
-- carries its schema.
CREATE OR REPLACE FUNCTION webhooks._compact_numbers(image json)
RETURNS json
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
    -- 12.50 -> 12.5, 12.00 -> 12 (one expression: two cost half as much again).
    trimmed pg_catalog.text := pg_catalog.regexp_replace(image::pg_catalog.text,
        '(":-?[0-9]+)(?:([.][0-9]*[1-9])0+|[.]0+)([,}])', '\1\2\3', 'g');
BEGIN
    IF trimmed OPERATOR(pg_catalog.~) '([0-9][.][0-9]*0|[:,]-0)[,}]|":-?0[.]0000|[0-9.]{16}|":-?[0-9.]+[eE]' THEN
        RETURN webhooks._compact(image);
    END IF;
    RETURN trimmed::pg_catalog.json;
END
$$;

-- A row image, compact. row_to_json() already prints its own level compactly; what it embeds
-- verbatim (a jsonb column's "a": 1, a json column as typed) and images built elsewhere (jsonb
-- text, json_object_agg's { "id" : 1 }) are not. An image with no nested object or array and no
-- ": " or number to reprint is already compact and is returned as it is: the common row costs
-- a few strpos and one regular expression; one whose only flaw is trailing zeros goes to
-- _compact_numbers. A SQL expression without a SET clause or subquery, so that claim() inlines
-- it (see 060_claim.sql): a function call with its own search_path cost more than the test.
CREATE OR REPLACE FUNCTION webhooks._compact_image(image json)
RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN image IS NULL THEN NULL
        WHEN left(image::text, 1) = '{' AND right(image::text, 1) = '}' AND strpos(image::text, ': ') = 0
             AND strpos(image::text, ' :') = 0 AND strpos(substr(image::text, 2), '{') = 0
             AND strpos(image::text, '[') = 0 THEN
            CASE
                -- no number JavaScript prints otherwise: 12.50, -0, a json column's 1e3 (1000)
                WHEN image::text !~ '([0-9]\.[0-9]*0|[:,]-0)[,}]|":-?[0-9.]+[eE]' THEN image
                WHEN strpos(image::text, '\') = 0 THEN webhooks._compact_numbers(image)
                ELSE webhooks._compact(image)
            END
        ELSE webhooks._compact(image)
    END
$$;

-- JSON text with no space after ':' or ',' (jsonb's own text has both), keys in jsonb's order:
-- what JSON.stringify(JSON.parse(body)) and json.dumps(..., separators=(",", ":")) print.
-- jsonb prints a space only after ':' and ',' outside strings, so dropping every space outside
-- a string is enough: one pass over the text, however deep the value (a recursive walk ran out
-- of stack on an event nested 800 deep and failed every claim), and faster than the walk.
CREATE OR REPLACE FUNCTION webhooks._compact_json(value jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT regexp_replace(value::text, '("(?:[^"\\]|\\.)*")| ', '\1', 'g')
$$;
