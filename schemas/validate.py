#!/usr/bin/env python3
"""Validates Custos documents against the schemas in this folder (JSON Schema 2020-12).

Usage: validate.py [SCHEMA]   (default: messages/envelope.json; e.g. custody/proofs.json, records/traffic.json,
custody/event.json). Reads one JSON document per line on stdin (for messages: an envelope as
sent on Kafka). Prints one line per invalid document, with the JSON path and the rule it
breaks, and exits 1 if any is invalid, 2 on unusable input. Contents are never printed.
"""
import json, pathlib, sys
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

root = pathlib.Path(__file__).resolve().parent
registry = Registry()
schemas = {}
for path in sorted(root.glob("*/*.json")):
    if path.parent.name in ("messages", "package", "custody", "records"):
        doc = json.loads(path.read_text())
        schemas[path] = doc
        registry = registry.with_resource(doc["$id"], Resource.from_contents(doc))
for doc in schemas.values():
    Draft202012Validator.check_schema(doc)
chosen = root / (sys.argv[1] if len(sys.argv) > 1 else "messages/envelope.json")
if chosen not in schemas:
    print(f"no schema {chosen.relative_to(root)}")
    sys.exit(2)
validator = Draft202012Validator(schemas[chosen], registry=registry)

bad = 0
count = 0
for n, line in enumerate(sys.stdin, 1):
    if not line.strip():
        continue
    count += 1
    try:
        doc = json.loads(line)
    except ValueError:
        print(f"document {n}: not JSON")
        sys.exit(2)
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    seen = set()
    for e in errors:
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        if e.validator == "required" and isinstance(e.instance, dict):
            rule = "missing " + ", ".join(k for k in e.validator_value if k not in e.instance)
        else:
            # The rule, never the offending value: values can be target identifiers.
            rule = f"{e.validator} {json.dumps(e.validator_value)[:120]}"
        kind = doc.get("type", "?") if isinstance(doc, dict) else "?"
        line_out = f"document {n} ({kind}): {path}: {rule}"
        if line_out not in seen:
            seen.add(line_out)
            print(line_out)
    bad += 1 if errors else 0
print(f"{count - bad} valid, {bad} invalid")
sys.exit(1 if bad else 0)
