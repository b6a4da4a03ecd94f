#!/usr/bin/env python3
"""Derives the JSON schemas deploy/ci/check_gateway_api.py validates against from the
Gateway API CRDs (kubernetes-sigs/gateway-api, config/crd/standard/*.yaml).

Each CRD's served v1 `openAPIV3Schema` is written as deploy/ci/schemas/<kind>-v1.json.
Objects that list `properties` and say nothing about other fields get
`additionalProperties: false`, as the API server's pruning would drop an unknown field
(and as kubernetes-validate --strict refuses one). CEL rules (`x-kubernetes-validations`)
are kept but not evaluated by a JSON-schema validator.

Usage: derive_gateway_api_schemas.py CRD.yaml... (from a checkout of the release tag)
"""

import json
import pathlib
import sys

import yaml


def close_objects(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for value in node.values():
            close_objects(value)
    elif isinstance(node, list):
        for value in node:
            close_objects(value)


def main(paths):
    out = pathlib.Path(__file__).parent / "schemas"
    for path in paths:
        crd = yaml.safe_load(open(path, encoding="utf-8"))
        bundle = crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"]
        kind = crd["spec"]["names"]["kind"]
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"])
        schema = version["schema"]["openAPIV3Schema"]
        close_objects(schema)
        schema["$comment"] = (f"Derived from the Gateway API {bundle} standard-channel CRD "
                              f"{crd['metadata']['name']} (served version v1) by "
                              "deploy/ci/derive_gateway_api_schemas.py")
        target = out / f"{kind.lower()}-v1.json"
        target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"{target}: {kind} from {bundle}")


if __name__ == "__main__":
    main(sys.argv[1:])
