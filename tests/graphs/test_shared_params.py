"""Parameters many approaches share are declared once (`core.spec.client_temperature`)."""

import pytest
from pydantic import ValidationError

from optigraph.core.spec import ApproachParams, client_temperature
from optigraph.graphs import BUILTIN_APPROACHES


class Example(ApproachParams):
    temperature: float | None = client_temperature(0.6)
    final_temperature: float | None = client_temperature(0.1, "Temperature of the final answer")


def test_the_field_is_optional_bounded_and_says_its_fallback():
    assert Example().temperature is None and Example(temperature=0.0).temperature == 0.0
    for bad in (-0.1, 2.1):
        with pytest.raises(ValidationError):
            Example(temperature=bad)
    fields = Example.model_fields
    assert fields["temperature"].description == "Sampling temperature; default: the client's, else 0.6."
    assert (
        fields["final_temperature"].description == "Temperature of the final answer; default: the client's, else 0.1."
    )


def test_every_approach_declares_its_client_temperature_the_same_way():
    reference = Example.model_fields["temperature"]
    declared = 0
    for spec in BUILTIN_APPROACHES:
        for name, field in spec.params.model_fields.items():
            if "temperature" in name and "default: the client's" in (field.description or ""):
                declared += 1
                assert field.default is None and field.metadata == reference.metadata, (spec.name, name)
                assert field.description.split("; default: the client's, else ")[1].endswith("."), (spec.name, name)
    assert declared >= 13
