"""The JSON Schema of `whplane/v1` resources, for editors (YAML completion) and docs."""

from __future__ import annotations

from typing import Any

from providers.loader import RESOURCE_ADAPTER

SCHEMA_ID = "https://whplane.dev/schema/v1/resource.json"


def resource_json_schema() -> dict[str, Any]:
    schema = RESOURCE_ADAPTER.json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "whplane/v1 resource",
        **schema,
    }

