"""Bad input on scale sets and groups: ARM's 400/409 and nothing changed (never a 500), nulls
as "not given", Azure's capacity limits, merge semantics of PUT and PATCH, strict counts."""

from __future__ import annotations

import base64
import copy
import gzip
import http.client
import json
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from azmanagers.emulator import Emulator, start_emulator
from azmanagers.emulator.addresses import PER_NET, AddressPool
from azmanagers.emulator.scalesets import custom_data
from azmanagers.providers.azure._clients import ArmSettings, compute_client, resource_client

SUB = "00000000-0000-0000-0000-0000000000ab"
RG = "azm-bad"
LOCATION = "southcentralus"
API = "api-version=2024-03-01"
GROUP = f"/subscriptions/{SUB}/resourceGroups/{RG}"
VMSS = f"{GROUP}/providers/Microsoft.Compute/virtualMachineScaleSets/pool"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    emu = start_emulator()
    yield emu
    emu.stop()


def raw(emu: Emulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTPS request with the emulator's token and a JSON body (any JSON value)."""
    context = ssl.create_default_context(cafile=str(emu.server.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", emu.server.port, context=context, timeout=30)
    headers = {"Authorization": f"Bearer {emu.server.token}", "Content-Type": "application/json"}
    sep = "&" if "?" in path else "?"
    data = None if method in ("GET", "DELETE") else json.dumps(body).encode()
    conn.request(method, f"{path}{sep}{API}", body=data, headers=headers)
    reply = conn.getresponse()
    payload = reply.read()
    conn.close()
    return reply.status, json.loads(payload) if payload else None


def sdk(emu: Emulator) -> tuple[Any, Any]:
    env = emu.environment()
    settings = ArmSettings(
        env["AZMANAGERS_ARM_ENDPOINT"], env["AZMANAGERS_ARM_CA"], env["AZMANAGERS_ARM_TOKEN"], 0
    )
    return compute_client(settings, SUB), resource_client(settings, SUB)


def body(capacity: int = 1, tags: dict[str, str] | None = None, **props: Any) -> dict[str, Any]:
    subnet = f"{GROUP}/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
    script = base64.b64encode(b"#!/bin/bash\necho first\n").decode()
    return {
        "location": LOCATION,
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": capacity},
        "tags": {"a": "1"} if tags is None else tags,
        "properties": {
            "upgradePolicy": {"mode": "Manual"},
            **props,
            "virtualMachineProfile": {
                "storageProfile": {"imageReference": {"id": "/subscriptions/x/images/image"}},
                "osProfile": {
                    "computerNamePrefix": "node",
                    "adminUsername": "azuser",
                    "customData": script,
                },
                "networkProfile": {
                    "networkInterfaceConfigurations": [
                        {
                            "name": "nic0",
                            "properties": {
                                "ipConfigurations": [
                                    {"name": "ip0", "properties": {"subnet": {"id": subnet}}}
                                ]
                            },
                        }
                    ]
                },
            },
        },
    }


@pytest.fixture
def fresh(emulator: Emulator) -> Emulator:
    """A group and a scale set ``pool`` (2 instances) made anew."""
    raw(emulator, "DELETE", VMSS)
    assert raw(emulator, "PUT", GROUP, {"location": LOCATION})[0] in (200, 201)
    assert raw(emulator, "PUT", VMSS, body(2))[0] == 201
    return emulator


def snapshot(emu: Emulator) -> tuple[Any, list[str]]:
    """The scale set as GET shows it and its instances; every read of it must answer 200."""
    status, view = raw(emu, "GET", VMSS)
    assert status == 200
    for path in (
        f"{VMSS}/virtualMachines?$expand=instanceView",
        f"{VMSS}/instanceView",
        f"/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachineScaleSets",
        f"/subscriptions/{SUB}/resources",
        f"{VMSS}/virtualMachines/0/instanceView",
    ):
        assert raw(emu, "GET", path)[0] == 200, path
    members = raw(emu, "GET", f"{VMSS}/virtualMachines")[1]["value"]
    return view, sorted(m["instanceId"] for m in members)


def model(view: dict[str, Any]) -> dict[str, Any]:
    """A scale set's view without what changes at each accepted write."""
    kept = copy.deepcopy(view)
    kept.pop("etag")
    kept["properties"].pop("provisioningState")
    return kept


def _vm_profile(**members: Any) -> dict[str, Any]:
    return {"location": LOCATION, "properties": {"virtualMachineProfile": members}}


def _nics(configs: Any) -> dict[str, Any]:
    return _vm_profile(networkProfile={"networkInterfaceConfigurations": configs})


BAD_PUTS = {
    "properties list": {"location": LOCATION, "properties": [1]},
    "osProfile list": _vm_profile(osProfile=[1]),
    "storageProfile list": _vm_profile(storageProfile=[1]),
    "osDisk list": _vm_profile(storageProfile={"osDisk": [1]}),
    "nic configs string": _nics("x"),
    "nic config empty": _nics([{}]),
    "nic config without ipConfigurations": _nics([{"name": "n", "properties": {}}]),
    "ip config without name": _nics([{"name": "n", "properties": {"ipConfigurations": [{}]}}]),
    "customData number": _vm_profile(osProfile={"customData": 5}),
    "customData not base64": _vm_profile(osProfile={"customData": "/w=="}),
    "orchestrationMode list": {"location": LOCATION, "properties": {"orchestrationMode": ["x"]}},
    "sku list": {"location": LOCATION, "sku": [1]},
    "sku name number": {"location": LOCATION, "sku": {"name": 5}},
    "capacity negative": {"location": LOCATION, "sku": {"capacity": -1}},
    "capacity text": {"location": LOCATION, "sku": {"capacity": "3"}},
    "capacity past a long": {"location": LOCATION, "sku": {"capacity": 2**63}},
    "tags list": {"location": LOCATION, "tags": ["a"]},
    "tag value object": {"location": LOCATION, "tags": {"a": {"b": 1}}},
    "51 tags": {"location": LOCATION, "tags": {f"k{i}": "v" for i in range(51)}},
    "tag name of 513": {"location": LOCATION, "tags": {"k" * 513: "v"}},
    "tag value of 257": {"location": LOCATION, "tags": {"k": "v" * 257}},
    "location number": {"location": 5},
}


@pytest.mark.parametrize("label", sorted(BAD_PUTS))
def test_a_bad_put_is_refused_and_changes_nothing(fresh: Emulator, label: str) -> None:
    before = snapshot(fresh)
    status, answer = raw(fresh, "PUT", VMSS, BAD_PUTS[label])
    assert status == 400, answer
    assert answer["error"]["code"] in ("InvalidRequestContent", "InvalidParameter")
    assert snapshot(fresh) == before


BAD_PATCHES = {
    "sku string": {"sku": "x"},
    "tags list": {"tags": ["a"]},
    "tags string": {"tags": "ab"},
    "properties list": {"properties": [1]},
    "nic configs string": {"properties": _nics("x")["properties"]},
    "body a list": [],
}


@pytest.mark.parametrize("label", sorted(BAD_PATCHES))
def test_a_bad_patch_is_refused_and_changes_nothing(fresh: Emulator, label: str) -> None:
    before = snapshot(fresh)
    status, answer = raw(fresh, "PATCH", VMSS, BAD_PATCHES[label])
    assert status == 400, answer
    assert snapshot(fresh) == before


def test_a_bad_scale_set_is_never_created(fresh: Emulator) -> None:
    other = VMSS.replace("/pool", "/other")
    for label in ("properties list", "nic config empty", "osProfile list", "sku list"):
        bad = {**body(1), **BAD_PUTS[label]}
        assert raw(fresh, "PUT", other, bad)[0] == 400, label
        assert raw(fresh, "GET", other)[0] == 404, label
    assert raw(fresh, "GET", f"/subscriptions/{SUB}/resources")[0] == 200


def test_nulls_are_not_given(fresh: Emulator) -> None:
    before, _ = snapshot(fresh)
    for null_body in (
        {"location": LOCATION, "properties": None},
        {"location": LOCATION, "tags": None, "sku": None},
        {"location": LOCATION, "properties": {"virtualMachineProfile": None}},
        {"location": LOCATION, "properties": {"virtualMachineProfile": {"osProfile": None}}},
    ):
        assert raw(fresh, "PUT", VMSS, null_body)[0] == 200, null_body
        assert model(snapshot(fresh)[0]) == model(before), null_body
    assert raw(fresh, "PATCH", VMSS, {"sku": None, "tags": None})[0] == 200
    # a null model and a new capacity: the kept model boots the new instances
    scaled = {
        "location": LOCATION,
        "sku": {"capacity": 3},
        "properties": {"virtualMachineProfile": None},
    }
    assert raw(fresh, "PUT", VMSS, scaled)[0] == 200
    view, members = snapshot(fresh)
    assert members == ["0", "1", "2"] and view["sku"]["capacity"] == 3
    assert (
        view["properties"]["virtualMachineProfile"] == before["properties"]["virtualMachineProfile"]
    )
    assert custom_data(fresh.state.scaleset(SUB, RG, "pool")) == "#!/bin/bash\necho first\n"


def test_repeated_instance_ids_are_refused_before_any_delete(fresh: Emulator) -> None:
    compute, _ = sdk(fresh)
    with pytest.raises(HttpResponseError) as refused:
        compute.virtual_machine_scale_sets.begin_delete_instances(
            RG, "pool", {"instanceIds": ["0", "0"]}
        ).result()
    assert refused.value.status_code == 400
    view, members = snapshot(fresh)
    assert members == ["0", "1"] and view["sku"]["capacity"] == 2


def test_capacity_is_capped_as_azure_caps_it(fresh: Emulator) -> None:
    compute, _ = sdk(fresh)
    for capacity in (101, 10**12):
        with pytest.raises(HttpResponseError) as refused:
            compute.virtual_machine_scale_sets.begin_create_or_update(
                RG, "pool", {"location": LOCATION, "sku": {"capacity": capacity}}
            ).result()
        assert refused.value.status_code == 409
        assert refused.value.error.code == "OperationNotAllowed"
        assert "'100'" in refused.value.error.message
    assert snapshot(fresh)[1] == ["0", "1"]
    with pytest.raises(HttpResponseError) as refused:
        compute.virtual_machine_scale_sets.begin_update(
            RG, "pool", {"sku": {"capacity": 1001}}
        ).result()
    assert refused.value.status_code == 409
    # beyond one placement group: up to 1,000
    big = compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "pool", body(1000, singlePlacementGroup=False)
    ).result()
    assert big.sku.capacity == 1000 and big.single_placement_group is False
    assert len(fresh.state.scaleset(SUB, RG, "pool").vms) == 1000
    status, answer = raw(fresh, "PATCH", VMSS, {"sku": {"capacity": 1001}})
    assert status == 409 and "'1000'" in answer["error"]["message"]
    # false may not become true again
    back = {
        "location": LOCATION,
        "sku": {"capacity": 1},
        "properties": {"singlePlacementGroup": True},
    }
    assert raw(fresh, "PUT", VMSS, back)[0] == 409
    assert len(fresh.state.scaleset(SUB, RG, "pool").vms) == 1000


def test_given_tags_replace_the_tag_set_and_patch_merges_the_model(fresh: Emulator) -> None:
    compute, _ = sdk(fresh)
    sets = compute.virtual_machine_scale_sets
    full = raw(fresh, "GET", VMSS)[1]
    full["tags"] = {"b": "2"}  # `az vmss update --remove tags.a`: GET, edit, PUT back
    assert raw(fresh, "PUT", VMSS, full)[1]["tags"] == {"b": "2"}
    assert sets.begin_create_or_update(
        RG, "pool", {"location": LOCATION, "tags": {"c": "3"}}
    ).result().tags == {"c": "3"}
    assert sets.get(RG, "pool").tags == {"c": "3"}
    renamed = sets.begin_update(RG, "pool", {"sku": {"name": "Standard_D4s_v3"}}).result()
    assert renamed.sku.name == "Standard_D4s_v3" and renamed.sku.capacity == 2
    script = "#!/bin/bash\necho patched\n"
    patch = {
        "properties": {
            "virtualMachineProfile": {
                "osProfile": {"customData": base64.b64encode(script.encode()).decode()}
            }
        }
    }
    assert raw(fresh, "PATCH", VMSS, patch)[0] == 200
    scaleset = fresh.state.scaleset(SUB, RG, "pool")
    assert custom_data(scaleset) == script
    assert scaleset.body["properties"]["virtualMachineProfile"]["osProfile"]["adminUsername"] == (
        "azuser"
    )
    assert sets.get(RG, "pool").tags == {"c": "3"}  # a PATCH without tags keeps them


def test_the_location_of_a_scale_set_or_group_does_not_change(fresh: Emulator) -> None:
    compute, resources = sdk(fresh)
    with pytest.raises(HttpResponseError) as refused:
        compute.virtual_machine_scale_sets.begin_create_or_update(
            RG, "pool", {"location": "westeurope", "sku": {"capacity": 1}}
        ).result()
    assert refused.value.status_code == 409
    assert refused.value.error.code == "InvalidResourceLocation"
    assert snapshot(fresh)[1] == ["0", "1"]
    # the same location, written another way, is the same location
    same = {"location": "South Central US", "sku": {"capacity": 2}}
    status, answer = raw(fresh, "PUT", VMSS, same)
    assert status == 200 and answer["location"] == LOCATION
    with pytest.raises(HttpResponseError) as refused:
        resources.resource_groups.create_or_update(RG, {"location": "westeurope"})
    assert refused.value.status_code == 409
    assert refused.value.error.code == "InvalidResourceGroupLocation"
    assert (
        refused.value.error.message == "Invalid resource group location 'westeurope'. The "
        f"Resource group already exists in location '{LOCATION}'."
    )
    assert resources.resource_groups.get(RG).location == LOCATION


def test_bad_group_bodies_are_refused(emulator: Emulator) -> None:
    group = GROUP + "-g"
    for bad in (
        {"location": LOCATION, "tags": ["a"]},
        {"location": LOCATION, "tags": {"a": 1}},
        {"location": ["westus"]},
        {"location": LOCATION, "managedBy": {"x": 1}},
    ):
        assert raw(emulator, "PUT", group, bad)[0] == 400, bad
        assert raw(emulator, "GET", group)[0] == 404, bad
    assert raw(emulator, "GET", f"/subscriptions/{SUB}/resourcegroups")[0] == 200


@pytest.mark.parametrize(
    "path",
    [
        f"/subscriptions/{SUB}/resources?$top=%C2%B2",
        f"/subscriptions/{SUB}/resourcegroups?$top=%C2%B2",
        "/azmanagers-admin/calls?since=%C2%B2",
        "/azmanagers-admin/calls?since=" + "1" * 5000,
        "/azmanagers-admin/calls?since=-1",
    ],
)
def test_counts_are_ascii_digits(emulator: Emulator, path: str) -> None:
    status, answer = raw(emulator, "GET", path)
    assert status == 400 and answer["error"]["code"] == "InvalidParameter"


def test_addresses_given_back_are_handed_out_again() -> None:
    pool = AddressPool(running=False)
    first = pool.next()
    taken = {first} | {pool.next() for _ in range(PER_NET - 1)}
    assert len(taken) == PER_NET
    with pytest.raises(RuntimeError):
        pool.next()
    pool.give_back(first)
    pool.give_back("192.0.2.1")  # not the pool's: ignored
    assert pool.next() == first


def test_a_scaled_down_instance_gives_its_address_back(emulator: Emulator) -> None:
    raw(emulator, "DELETE", VMSS)
    assert raw(emulator, "PUT", GROUP, {"location": LOCATION})[0] in (200, 201)
    assert raw(emulator, "PUT", VMSS, body(2))[0] == 201
    scaleset = emulator.state.scaleset(SUB, RG, "pool")
    newest = scaleset.vms["1"].address
    assert raw(emulator, "PATCH", VMSS, {"sku": {"capacity": 1}})[0] == 200
    assert newest in emulator.state.addresses._returned


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (f"/subscriptions/{SUB}/resourcegroups/{{}}", "g" * 91),
        (f"/subscriptions/{SUB}/resourcegroups/{{}}", "ends-with."),
        (f"{GROUP}/providers/Microsoft.Compute/virtualMachineScaleSets/{{}}", "x" * 65),
        (f"{GROUP}/providers/Microsoft.Compute/virtualMachineScaleSets/{{}}", "bad|name"),
        (f"{GROUP}/providers/Microsoft.Network/publicIPAddresses/{{}}", "p" * 81),
        (f"{GROUP}/providers/Microsoft.Network/publicIPAddresses/{{}}", "-lead"),
        (f"{GROUP}/providers/Microsoft.Compute/virtualMachines/{{}}", "v.."),
    ],
)
def test_names_azure_refuses_are_refused(emulator: Emulator, path: str, name: str) -> None:
    status, answer = raw(emulator, "PUT", path.format(name), {"location": LOCATION})
    assert (status, answer["error"]["code"]) == (400, "InvalidResourceName")
    assert name[:20] in answer["error"]["message"]


@pytest.mark.parametrize(
    ("custom_data", "says"),
    [
        ("not base64!", "Base64"),
        # mtime fixed: the parameter is part of the test's id, which every xdist worker must
        # compute alike
        (
            base64.b64encode(gzip.compress(b"#!/bin/bash\necho hi\n", mtime=0)).decode(),
            "uncompressed",
        ),
        ("A" * 87_384, "maximum length"),
    ],
    ids=["not-base64", "gzipped", "too-long"],
)
def test_custom_data_azure_or_the_emulator_cannot_take_is_refused(
    emulator: Emulator, custom_data: str, says: str
) -> None:
    model = body(1)
    model["properties"]["virtualMachineProfile"]["osProfile"]["customData"] = custom_data
    assert raw(emulator, "PUT", GROUP, {"location": LOCATION})[0] in (200, 201)
    raw(emulator, "DELETE", VMSS)
    status, answer = raw(emulator, "PUT", VMSS, model)
    assert (status, answer["error"]["code"]) == (400, "InvalidParameter")
    assert says in answer["error"]["message"]
    assert raw(emulator, "GET", VMSS)[0] == 404  # nothing was made
