"""Offline validation of rendered objects: built-in kinds against the Kubernetes OpenAPI schemas that
kubernetes-validate ships (strict: an unknown field fails), custom resources against the published CRD schemas in
tests/data/crds/ (jsonschema, plus the unknown-field check that the API server would otherwise prune silently)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
CRD_DIR = Path(__file__).resolve().parents[1] / "data" / "crds"


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    problems = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                problems.append(f"{path}.{key}")
            else:
                problems += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            problems += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problems += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return problems


def validate(obj: dict[str, Any]) -> None:
    """Raises with the object's kind and name when it does not validate."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {exc.message} at {list(exc.path)}") from None
        return
    # Draft 7, the schema itself not checked: CRDs carry Go regular expressions (`^(?i)...`) that Python's re rejects
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{where}: {[f'{list(e.path)}: {e.message}' for e in errors]}"
    unknown = unknown_fields(obj, schema)
    assert not unknown, f"{where}: fields the CRD does not have: {unknown}"
