"""Keeps schemas/openapi.yaml a document that stands alone.

The HTTP API shares its ids, times, targets, the manifest and the verdict with the Kafka
contract, whose JSON Schemas live in schemas/messages/ and schemas/package/. An OpenAPI
document that points at those files is not valid on its own (a reader given only the
document cannot resolve them), so openapi.yaml carries copies of them under
components/schemas, between the two marker lines below, with every $ref rewritten to point
inside the document:

  messages/common.json#/$defs/NAME  ->  #/components/schemas/common.NAME
  package/manifest.json             ->  #/components/schemas/manifest   (its $defs: manifest.NAME)
  package/criteria.json             ->  #/components/schemas/criteria   (its $defs: criteria.NAME)

Usage (with the Python that ops/install sets up, which has PyYAML and openapi-spec-validator):
  python ops/openapi_schemas.py --write   rewrite the copies from the source files
  python ops/openapi_schemas.py --check   fail unless the copies equal the sources, no $ref
                                          leaves the document, and the document is valid
                                          OpenAPI 3.1 read from memory, with no base URI
"""

import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENAPI = os.path.join(ROOT, "schemas", "openapi.yaml")
BEGIN = "    # BEGIN copied from schemas/messages/common.json and schemas/package/ by ops/openapi_schemas.py --write; do not edit\n"
END = "    # END copied schemas\n"

# Source file (relative to schemas/) -> the component name its root and $defs take.
SOURCES = [
    ("messages/common.json", "common"),
    ("package/manifest.json", "manifest"),
    ("package/criteria.json", "criteria"),
]
PREFIX = {path: name for path, name in SOURCES}


def rewrite(ref, here):
    """A $ref as written in the file `here` (relative to schemas/), pointed inside the document."""
    target, _, fragment = ref.partition("#")
    path = os.path.normpath(os.path.join(os.path.dirname(here), target)) if target else here
    if path not in PREFIX:
        raise SystemExit(f"{here}: $ref {ref} points at a file that is not copied into openapi.yaml")
    name = PREFIX[path]
    if fragment in ("", "/"):
        return f"#/components/schemas/{name}"
    match = re.fullmatch(r"/\$defs/([A-Za-z0-9_.-]+)", fragment)
    if not match:
        raise SystemExit(f"{here}: $ref {ref} is not to a whole file or one of its $defs")
    return f"#/components/schemas/{name}.{match.group(1)}"


def localised(node, here):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("$schema", "$id", "$defs"):
                continue
            out[key] = rewrite(value, here) if key == "$ref" else localised(value, here)
        return out
    if isinstance(node, list):
        return [localised(v, here) for v in node]
    return node


def components():
    """The copies, in order: each file's root (but common.json's, which has none), then its $defs."""
    out = {}
    for path, name in SOURCES:
        with open(os.path.join(ROOT, "schemas", path), encoding="utf-8") as f:
            schema = json.load(f)
        root = localised(schema, path)
        if set(root) - {"title", "description"}:
            out[name] = root
        for key, value in schema.get("$defs", {}).items():
            out[f"{name}.{key}"] = localised(value, path)
    return out


def block():
    lines = [BEGIN]
    for name, schema in components().items():
        text = yaml.safe_dump(schema, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False)
        lines.append(f"    {name}:\n")
        lines.extend("      " + line + "\n" for line in text.splitlines())
    lines.append(END)
    return "".join(lines)


def split(text):
    try:
        start = text.index(BEGIN)
        end = text.index(END, start) + len(END)
    except ValueError:
        raise SystemExit(f"{OPENAPI} lacks the marker lines of the copied schemas")
    return text[:start], text[start:end], text[end:]


def external_refs(node, where="#"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                yield f"{where}: {value}"
            else:
                yield from external_refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from external_refs(value, f"{where}/{i}")


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("--write", "--check"):
        raise SystemExit(__doc__)
    with open(OPENAPI, encoding="utf-8") as f:
        text = f.read()
    before, copied, after = split(text)
    if sys.argv[1] == "--write":
        with open(OPENAPI, "w", encoding="utf-8") as f:
            f.write(before + block() + after)
        print(f"wrote {len(components())} copied schemas into schemas/openapi.yaml")
        return
    problems = []
    document = yaml.safe_load(text)
    # Compared as data, not as text, so that another PyYAML's layout is not a difference.
    expected = components()
    in_block = re.findall(r"^    ([A-Za-z0-9_.-]+):$", copied, re.M)
    present = document.get("components", {}).get("schemas", {})
    if in_block != list(expected) or any(present.get(name) != schema for name, schema in expected.items()):
        problems.append("the copied schemas differ from schemas/messages/common.json and schemas/package/ (run ops/openapi_schemas.py --write)")
    problems += [f"a $ref leaves the document at {r}" for r in external_refs(document)]
    from openapi_spec_validator import validate
    try:
        validate(document)  # from memory: no base URI to resolve anything against
    except Exception as e:  # the validator's own error types vary by version
        problems.append(f"not a valid OpenAPI document on its own: {str(e).splitlines()[0]}")
    for p in problems:
        print(f"schemas/openapi.yaml: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"schemas/openapi.yaml stands alone: valid OpenAPI 3.1, {len(components())} copied schemas equal to their sources")


if __name__ == "__main__":
    main()
