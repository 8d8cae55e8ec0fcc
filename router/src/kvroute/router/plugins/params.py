"""`PluginParams`: the base of every plugin's `Params`, so a plugin declares only its fields.

A plugin's `parameters` mapping in the configuration document is validated by its `Params` model, with the rules
every plugin shares:

- unknown keys are rejected (a misspelt parameter is an error, never silently the default);
- the model is frozen, so the builder can compare a reloaded plugin's parameters with the running one's;
- a field `max_num_of_endpoints` is written `maxNumOfEndpoints` in the document (camelCase, as GIE and llm-d
  spell their parameters) and may also be given by its Python name; an explicit `alias` overrides the camelCase
  spelling (e.g. `kvCacheUtilThreshold`).

The config builder reports every validation error under the plugin's path, e.g.
`plugins[3].parameters.maxNumOfEndpoints: Input should be greater than or equal to 1`. A field's `description`
is its documentation: `describe` lists the fields as a table (name in the document, type, default, description).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticUndefined


class PluginParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel)


@dataclass(frozen=True, slots=True)
class ParameterDoc:
    name: str  # as written in the document
    type: str
    default: str  # "required" when the field has no default
    description: str


def describe(params: type[BaseModel]) -> list[ParameterDoc]:
    """The fields of a plugin's `Params`, in declaration order, as the document spells them."""
    rows = []
    for name, field in params.model_fields.items():
        if field.default is not PydanticUndefined:
            default = repr(field.default)
        elif field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        else:
            default = "required"
        annotation = field.annotation
        type_name = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
        rows.append(ParameterDoc(field.alias or name, type_name or str(annotation), default, field.description or ""))
    return rows
