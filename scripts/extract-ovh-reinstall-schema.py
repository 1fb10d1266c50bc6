#!/usr/bin/env python3
"""Extracts the schemas of OVHcloud's reinstall payload from OVH's OpenAPI
description of /dedicated/server (ovhcloud-cli's baremetal.json, kept in
shared/reference/data/) into the small file kiln embeds:
crates/kiln-deploy/src/ovh/api/reinstall-schema.json.

Usage: scripts/extract-ovh-reinstall-schema.py OPENAPI.json > crates/kiln-deploy/src/ovh/api/reinstall-schema.json

Keeps `dedicated.server.Reinstall` and every schema it reaches through
`$ref`, unchanged (descriptions included), plus where they came from.
A unit test of kiln-deploy repeats the extraction in Rust when the full
document is present and compares.
"""
import json
import sys

ROOT = "dedicated.server.Reinstall"
PREFIX = "#/components/schemas/"


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def main():
    doc = json.load(open(sys.argv[1]))
    schemas = doc["components"]["schemas"]
    keep, todo = {}, [ROOT]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        todo.extend(r[len(PREFIX):] for r in refs(schemas[name]))
    out = {
        "source": "OVHcloud's OpenAPI 3 description of /dedicated/server (ovhcloud-cli "
        "internal/assets/api-schemas/baremetal.json, Apache-2.0): the schemas reachable from "
        + ROOT,
        "root": ROOT,
        "schemas": dict(sorted(keep.items())),
    }
    json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
