"""A scale set's model changes (PUT, PATCH): merged on a copy, checked, only then stored and
scaled, so a refused request changes nothing."""

from __future__ import annotations

from typing import Any

from azmanagers.emulator import flexible
from azmanagers.emulator.scalesets import COMPUTE, ArmState, ScaleSet, capacity_of, scale_to
from azmanagers.emulator.server import ArmError
from azmanagers.emulator.shapes import deep_merge, merge_put
from azmanagers.emulator.validation import (
    capacity_limit,
    check_capacity,
    check_location,
    check_scaleset,
    location_name,
    same_location,
    without_nulls,
)

READ_ONLY = ("id", "name", "type", "etag")
"""Top-level members ARM fills in and ignores in a request body."""


def _keep_location(scaleset: ScaleSet, location: str) -> None:
    """Azure's answer to a PUT that would move an existing resource to another location."""
    stored = str(scaleset.body.get("location", ""))
    if not same_location(stored, location):
        raise ArmError(
            409,
            "InvalidResourceLocation",
            f"The resource '{scaleset.name}' already exists in location '{stored}' in resource "
            f"group '{scaleset.rg}'. A resource with the same name cannot be created in location "
            f"'{location}'. Please select a new resource name.",
        )


def _single_placement_group(body: dict[str, Any]) -> bool:
    value = (body.get("properties") or {}).get("singlePlacementGroup")
    return value is not False and not flexible.is_flexible(body)


def _apply(state: ArmState, scaleset: ScaleSet, model: dict[str, Any], existed: bool) -> None:
    """Check ``model`` whole, then store it and scale to its capacity."""
    check_scaleset(model)
    capacity = capacity_of(model)
    flexible.validate(model)
    mode = flexible.is_flexible(model)
    if existed and scaleset.flexible != mode:
        raise ArmError(
            409,
            "PropertyChangeNotAllowed",
            "Changing property 'orchestrationMode' is not allowed.",
        )
    if existed and not _single_placement_group(scaleset.body) and _single_placement_group(model):
        # documented: true may become false, false may not become true
        raise ArmError(
            409,
            "PropertyChangeNotAllowed",
            "Changing property 'singlePlacementGroup' from false to true is not allowed.",
        )
    check_capacity(scaleset.name, capacity, capacity_limit(model, mode))
    scaleset.body = model
    if existed:
        scaleset.generation += 1
    scale_to(state, scaleset, capacity)


def put_scaleset(state: ArmState, sub: str, rg: str, name: str, body: Any) -> tuple[ScaleSet, bool]:
    """Create or update a scale set (lock held); return it and whether it existed.

    On an existing scale set ARM keeps what the body leaves out (``az vmss scale`` sends only
    location and sku): objects merge, lists replace, given tags replace the tag set; a null
    is "not given".
    """
    if not isinstance(body, dict):
        raise ArmError(400, "LocationRequired", "The location property is required.")
    location = check_location(body)
    state.group(sub, rg)
    clean = {k: v for k, v in without_nulls(body).items() if k not in READ_ONLY}
    key = (sub.lower(), rg.lower(), name.lower())
    existing = state.scalesets.get(key)
    if existing is not None:
        _keep_location(existing, location)
        clean["location"] = existing.body["location"]
        _apply(state, existing, merge_put(existing.body, clean), True)
        return existing, True
    clean["location"] = location_name(location)
    scaleset = ScaleSet(sub, rg, name, {})
    _apply(state, scaleset, deep_merge({}, clean), False)
    state.scalesets[key] = scaleset
    return scaleset, False


def patch_scaleset(state: ArmState, scaleset: ScaleSet, body: Any) -> None:
    """Update a scale set with a PATCH (lock held): sku, tags, properties and the rest merge
    into the model as in a PUT; the location cannot change."""
    if not isinstance(body, dict):
        raise ArmError(
            400,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: the body must be "
            f"a {COMPUTE}/virtualMachineScaleSets update object.",
        )
    clean = {k: v for k, v in without_nulls(body).items() if k not in READ_ONLY}
    if "location" in clean:
        _keep_location(scaleset, check_location(clean))
        del clean["location"]
    _apply(state, scaleset, merge_put(scaleset.body, clean), True)
