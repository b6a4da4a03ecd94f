#!/usr/bin/env python3
"""Validates the Gateway API objects (Gateway, HTTPRoute) in the given manifest files
against the JSON schemas in deploy/ci/schemas/ (derived from the Gateway API CRDs by
derive_gateway_api_schemas.py; no cluster needed). kubernetes-validate (1.37) only knows the
core kinds and takes no extra schemas (it reads its own bundled schema directory only), so
these are checked here, with the jsonschema package it brings along. Unknown fields are errors, as with --strict. CEL rules in
the CRDs are not evaluated; check_manifests.py cross-checks what matters of those.

It then proves the schemas bite: a copy of the first HTTPRoute with an unknown field and
one with a malformed timeout must both be refused.

Usage: check_gateway_api.py MANIFEST.yaml...
"""

import copy
import json
import pathlib
import sys

import jsonschema
import yaml

SCHEMAS = pathlib.Path(__file__).parent / "schemas"
KINDS = {("gateway.networking.k8s.io/v1", "Gateway"): "gateway-v1.json",
         ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-v1.json"}


def validator(kind_file):
    schema = json.loads((SCHEMAS / kind_file).read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema)


def problems(check, obj):
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in check.iter_errors(obj)]


def main(paths):
    validators = {key: validator(name) for key, name in KINDS.items()}
    failed, seen, first_route = False, 0, None
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for obj in (d for d in yaml.safe_load_all(f) if d):
                key = (obj.get("apiVersion"), obj.get("kind"))
                if obj.get("apiVersion", "").startswith("gateway.networking.k8s.io/") and key not in validators:
                    print(f"FAIL {path}: no schema for {key}", file=sys.stderr)
                    failed = True
                    continue
                if key not in validators:
                    continue
                seen += 1
                for problem in problems(validators[key], obj):
                    print(f"FAIL {path}: {obj['kind']} {obj['metadata'].get('name')}: {problem}", file=sys.stderr)
                    failed = True
                if obj["kind"] == "HTTPRoute" and first_route is None:
                    first_route = obj
    if seen == 0 or first_route is None:
        print("FAIL no Gateway API objects found (expected a Gateway and an HTTPRoute)", file=sys.stderr)
        return 1
    route_check = validators[("gateway.networking.k8s.io/v1", "HTTPRoute")]
    unknown = copy.deepcopy(first_route)
    unknown["spec"]["rules"][0]["timeoutz"] = {"request": "1h"}
    malformed = copy.deepcopy(first_route)
    malformed["spec"]["rules"][0]["timeouts"] = {"request": "one hour"}
    for what, bad in (("an unknown field", unknown), ("a malformed timeout", malformed)):
        if not problems(route_check, bad):
            print(f"FAIL the HTTPRoute schema accepted {what}", file=sys.stderr)
            failed = True
    if failed:
        return 1
    print(f"Gateway API schemas: {seen} objects pass (schemas refuse an unknown field and a malformed timeout)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
