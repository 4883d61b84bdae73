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
        RETURN ('{' || coalesce((SELECT string_agg(to_json(e.k)::text || ':' || webhooks._compact(e.v)::text, ','
                                                    ORDER BY e.o)
                                 FROM json_each(value) WITH ORDINALITY AS e(k, v, o)), '') || '}')::json;
    WHEN 'array' THEN
        RETURN ('[' || coalesce((SELECT string_agg(webhooks._compact(a.v)::text, ',' ORDER BY a.o)
                                 FROM json_array_elements(value) WITH ORDINALITY AS a(v, o)), '') || ']')::json;
    WHEN 'string' THEN
        RETURN to_json(value #>> '{}');  -- a json column's "\u00e9" or "\/" as JSON.stringify writes it
    ELSE
        RETURN btrim(value::text, E' \t\n\r')::json;
    END CASE;
END
$$;

-- A row image, compact. row_to_json() already prints its own level compactly; what it embeds
-- verbatim (a jsonb column's "a": 1, a json column as typed) and images built elsewhere (jsonb
-- text, json_object_agg's { "a" : 1 }) are not. An image with no nested object or array and no
-- ": " is already compact and is returned as it is: the common row costs two strpos.
CREATE OR REPLACE FUNCTION webhooks._compact_image(image json)
RETURNS json
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t text := image::text;
BEGIN
    IF image IS NULL OR (left(t, 1) = '{' AND right(t, 1) = '}' AND strpos(t, ': ') = 0
                         AND strpos(t, ' :') = 0 AND strpos(substr(t, 2), '{') = 0 AND strpos(t, '[') = 0) THEN
        RETURN image;
    END IF;
    RETURN webhooks._compact(image);
END
$$;
