#!/usr/bin/env python3
"""An independent verdict on reinstall bodies: the Python `jsonschema`
package (in /opt/kiln-test/venv) validating each body against kiln's
embedded OVH schema, translated from OpenAPI 3.0 to JSON Schema here:
refs into #/components/schemas point at `definitions`, `nullable: true`
admits null, and an object schema with `properties` and no
`additionalProperties` is closed (OVH refuses unknown customizations).

Usage: schema_oracle.py reinstall-schema.json < bodies.json
prints a JSON list with, for each body, the list of its error paths
(empty when valid).
"""
import json
import sys

import jsonschema

PREFIX = "#/components/schemas/"


def translate(node):
    if isinstance(node, list):
        return [translate(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "$ref":
            out[k] = "#/definitions/" + v[len(PREFIX):]
        elif k == "properties":
            out[k] = {name: translate(s) for name, s in v.items()}
        elif k in ("nullable", "readOnly"):
            continue
        else:
            out[k] = translate(v)
    if "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    if node.get("nullable") is True:
        # A null is accepted whatever the rest says.
        return {"anyOf": [{"type": "null"}, out]}
    return out


def main():
    doc = json.load(open(sys.argv[1]))
    defs = {name: translate(s) for name, s in doc["schemas"].items()}
    schema = {"$ref": "#/definitions/" + doc["root"], "definitions": defs}
    validator = jsonschema.Draft7Validator(schema)
    verdicts = []
    for body in json.load(sys.stdin):
        errors = sorted(".".join(str(p) for p in e.absolute_path) for e in validator.iter_errors(body))
        verdicts.append(errors)
    json.dump(verdicts, sys.stdout)


main()
