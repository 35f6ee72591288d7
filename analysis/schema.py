"""A small JSON Schema validator for the subset `report_schema.json` uses.

The runtime cannot depend on `jsonschema` (a dev-only package), yet a report must be checked
before it is written.  Supported keywords (draft 2020-12 meaning): `type` (a name or a list;
"integer" excludes booleans, "number" excludes booleans), `properties`, `required`,
`additionalProperties` (false or a schema), `items`, `minItems`, `enum`, `const`, `minimum`,
`maximum`, `$ref` to `#/$defs/<name>`, `anyOf`.  Any other keyword raises, so the schema
never silently uses one this validator ignores.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "$comment"}
_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "minItems",
             "enum", "const", "minimum", "maximum", "$ref", "anyOf"} | _ANNOTATIONS

_TYPES = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def validate(instance: object, schema: dict, root: dict | None = None, path: str = "$") -> None:
    """Raise ValueError naming the JSON path of the first violation."""
    root = schema if root is None else root
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise ValueError(f"schema at {path} uses unsupported keywords {sorted(unknown)}")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"schema at {path}: only #/$defs/ references are supported, "
                             f"got {ref!r}")
        validate(instance, root["$defs"][ref[len("#/$defs/"):]], root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](instance) for t in types):
            raise ValueError(f"{path}: expected {' or '.join(types)}, got "
                             f"{type(instance).__name__} {_short(instance)}")
    if "enum" in schema and instance not in schema["enum"]:
        raise ValueError(f"{path}: {_short(instance)} is not one of {schema['enum']}")
    if "const" in schema and instance != schema["const"]:
        raise ValueError(f"{path}: expected {schema['const']!r}, got {_short(instance)}")
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(instance, option, root, path)
                break
            except ValueError as e:
                errors.append(str(e))
        else:
            raise ValueError(f"{path}: matches none of anyOf: {errors}")
    if _TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            raise ValueError(f"{path}: {instance} < minimum {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            raise ValueError(f"{path}: {instance} > maximum {schema['maximum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                raise ValueError(f"{path}: required property {key!r} is missing")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                validate(value, props[key], root, f"{path}.{key}")
            elif extra is False:
                raise ValueError(f"{path}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                validate(value, extra, root, f"{path}.{key}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            raise ValueError(f"{path}: {len(instance)} items < minItems {schema['minItems']}")
        if "items" in schema:
            for i, value in enumerate(instance):
                validate(value, schema["items"], root, f"{path}[{i}]")


def _short(x: object) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."
