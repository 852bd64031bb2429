"""Strict validation against the SDKs' own types, to check translated requests and answers (and the golden inputs
written from the documented shapes) with the types the providers' official SDKs declare.

pydantic, as the SDKs use it, is lenient where a check must not be:
- it ignores unknown keys of TypedDicts, and the SDKs' models allow extra keys: a misspelt or misplaced field would
  pass. Here every TypedDict and model forbids them, unless the type said otherwise (`extra="allow"`);
- it validates an `Iterable` field's items only lazily (a generator, read later or never): here they are lists;
- a model is validated by its fields alone, into a dict. For a "model" schema whose class has completed its build,
  pydantic-core does not build a validator from the schema but reuses the class's own `__pydantic_validator__`
  (which allows extra keys), whatever the schema says. The SDKs' models build lazily, on their first use anywhere in
  the process (an SDK call parsing an answer), so keeping "model" schemas would make the check depend on what ran
  before: each is replaced by its "model-fields" schema.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pydantic
from pydantic_core import SchemaValidator


def forbid_extra(schema: Any) -> None:
    """Make a core schema strict, in place: no unknown keys in TypedDicts and models, Iterables read as lists, and
    models validated by their fields alone (see the module's docstring)."""
    if isinstance(schema, dict):
        if schema.get("type") == "model":
            ref = schema.get("ref")  # what "definition-ref" schemas point at
            fields = schema["schema"]
            schema.clear()
            schema.update(fields)
            if ref is not None:
                schema["ref"] = ref
        kind = schema.get("type")
        if kind == "model-fields" or (kind == "typed-dict" and schema.get("extra_behavior") in (None, "ignore")):
            schema["extra_behavior"] = "forbid"
        elif kind == "generator":
            schema["type"] = "list"
        for value in schema.values():
            forbid_extra(value)
    elif isinstance(schema, list):
        for value in schema:
            forbid_extra(value)


def strict_schema(tp: Any) -> Any:
    """A copy of `tp`'s core schema made strict by `forbid_extra`, to adjust further or validate with a config."""
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        tp.model_rebuild()  # the SDKs' models build their schema lazily: as on their first use
        schema = copy.deepcopy(tp.__pydantic_core_schema__)
    else:
        schema = copy.deepcopy(pydantic.TypeAdapter(tp).core_schema)
    forbid_extra(schema)
    return schema


@functools.cache
def strict(tp: Any) -> SchemaValidator:
    """A validator of `tp` (a model, a TypedDict, a union of them...) that refuses what the type does not declare."""
    return SchemaValidator(strict_schema(tp))
