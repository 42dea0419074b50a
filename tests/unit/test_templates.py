"""Tests of templates: build shapes, save/load/list/remove, validation, and the built-in local."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from azmanagers.config.templates import (
    LOCAL_TEMPLATE_DEFAULTS,
    build_nictemplate,
    build_sstemplate,
    build_vmtemplate,
    list_templates,
    load_template,
    load_template_nic,
    load_template_scaleset,
    load_template_vm,
    remove_template,
    save_template_nic,
    save_template_scaleset,
    save_template_vm,
    stored_template_names,
    template_provider,
    templates_path,
    validate_template,
)
from azmanagers.errors import ConfigError

SUB = "12345678-abcd-4ef0-9876-0123456789ab"
SUB_IMAGE = "87654321-abcd-4ef0-9876-0123456789ab"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "azhome"
    monkeypatch.setenv("AZMANAGERS_HOME", str(home))
    return home


def _ss(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "subscriptionid": SUB,
        "admin_username": "linuxuser",
        "location": "southcentralus",
        "resourcegroup": "my-rg",
        "vnet": "my-vnet",
        "subnet": "my-subnet",
        "imagegallery": "my-gallery",
        "imagename": "my-image",
        "skuname": "Standard_D2s_v3",
    }
    args.update(kwargs)
    return build_sstemplate("myss", **args)


def _vm(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "subscriptionid": SUB,
        "admin_username": "linuxuser",
        "location": "southcentralus",
        "resourcegroup": "my-rg",
        "imagegallery": "my-gallery",
        "imagename": "my-image",
        "vmsize": "Standard_D8s_v3",
    }
    args.update(kwargs)
    return build_vmtemplate("myvm", **args)


def _nic(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "subscriptionid": SUB,
        "resourcegroup_vnet": "net-rg",
        "vnet": "my-vnet",
        "subnet": "my-subnet",
        "location": "southcentralus",
    }
    args.update(kwargs)
    return build_nictemplate("mynic", **args)


def _vmp(template: dict[str, Any]) -> dict[str, Any]:
    profile: dict[str, Any] = template["value"]["properties"]["virtualMachineProfile"]
    return profile


# --- build -----------------------------------------------------------------------------------


def test_build_sstemplate_shape_and_defaults() -> None:
    template = _ss()
    assert set(template) == {"subscriptionid", "resourcegroup", "tempdisk", "value"}
    assert template["subscriptionid"] == SUB
    assert template["resourcegroup"] == "my-rg"
    assert template["tempdisk"] == "sudo mkdir -m 777 /mnt/scratch\nln -s /mnt/scratch /scratch"
    value = template["value"]
    assert value["sku"] == {"tier": "Standard", "capacity": 2, "name": "Standard_D2s_v3"}
    assert value["location"] == "southcentralus"
    assert "tags" not in value
    props = value["properties"]
    assert props["overprovision"] is True
    assert props["singlePlacementGroup"] is False
    assert props["additionalCapabilities"] == {"ultraSSDEnabled": False}
    assert props["upgradePolicy"] == {"mode": "Manual"}
    profile = props["virtualMachineProfile"]
    storage = profile["storageProfile"]
    assert storage["imageReference"]["id"] == (
        f"/subscriptions/{SUB}/resourceGroups/my-rg/providers/Microsoft.Compute"
        "/galleries/my-gallery/images/my-image"
    )
    assert storage["osDisk"]["diskSizeGB"] == 60
    assert storage["osDisk"]["createOption"] == "FromImage"
    assert storage["osDisk"]["managedDisk"]["storageAccountType"] == "Standard_LRS"
    assert storage["dataDisks"] == []
    assert profile["osProfile"]["computerNamePrefix"] == "myss"
    assert profile["osProfile"]["adminUsername"] == "linuxuser"
    assert profile["osProfile"]["linuxConfiguration"] == {
        "ssh": {"publicKeys": []},
        "disablePasswordAuthentication": True,
    }
    assert profile["securityProfile"] == {"encryptionAtHost": False}
    nics = profile["networkProfile"]["networkInterfaceConfigurations"]
    assert len(nics) == 1
    assert nics[0]["properties"]["primary"] is True
    ipconfig = nics[0]["properties"]["ipConfigurations"][0]
    assert ipconfig["properties"]["subnet"]["id"] == (
        f"/subscriptions/{SUB}/resourceGroups/my-rg/providers/Microsoft.Network"
        "/virtualNetworks/my-vnet/subnets/my-subnet"
    )
    json.dumps(template)  # plain JSON


def test_build_sstemplate_optional_arguments() -> None:
    template = _ss(
        subscriptionid_image=SUB_IMAGE,
        resourcegroup_vnet="net-rg",
        resourcegroup_image="img-rg",
        skutier="Basic",
        osdisksize=128,
        tempdisk="",
        tags={"project": "x"},
        encryption_at_host=True,
    )
    profile = _vmp(template)
    assert profile["storageProfile"]["imageReference"]["id"].startswith(
        f"/subscriptions/{SUB_IMAGE}/resourceGroups/img-rg/"
    )
    subnet_id = profile["networkProfile"]["networkInterfaceConfigurations"][0]["properties"][
        "ipConfigurations"
    ][0]["properties"]["subnet"]["id"]
    assert subnet_id.startswith(f"/subscriptions/{SUB}/resourceGroups/net-rg/")
    assert template["value"]["sku"]["tier"] == "Basic"
    assert profile["storageProfile"]["osDisk"]["diskSizeGB"] == 128
    assert template["tempdisk"] == ""
    assert template["value"]["tags"] == {"project": "x"}
    assert profile["securityProfile"]["encryptionAtHost"] is True


def test_build_sstemplate_data_disks_defaults_and_luns() -> None:
    template = _ss(
        datadisks=[
            {},
            {"diskSizeGB": 512},
            {"managedDisk": {"storageAccountType": "UltraSSD_LRS"}, "lun": 40},
        ]
    )
    disks = _vmp(template)["storageProfile"]["dataDisks"]
    assert [disk["lun"] for disk in disks] == [1, 2, 3]
    assert disks[0] == {
        "createOption": "Empty",
        "diskSizeGB": 1023,
        "managedDisk": {"storageAccountType": "Premium_LRS"},
        "lun": 1,
    }
    assert disks[1]["diskSizeGB"] == 512
    assert disks[2]["managedDisk"]["storageAccountType"] == "UltraSSD_LRS"
    assert template["value"]["properties"]["additionalCapabilities"]["ultraSSDEnabled"] is True


def test_build_sstemplate_does_not_share_caller_data() -> None:
    disk = {"managedDisk": {"storageAccountType": "Premium_LRS"}}
    template = _ss(datadisks=[disk])
    _vmp(template)["storageProfile"]["dataDisks"][0]["managedDisk"]["storageAccountType"] = "X"
    assert disk == {"managedDisk": {"storageAccountType": "Premium_LRS"}}


def test_build_computer_name_like_the_original() -> None:
    template = build_sstemplate(
        "team/gpu+cpu",
        subscriptionid=SUB,
        admin_username="u",
        location="l",
        resourcegroup="rg",
        vnet="v",
        subnet="s",
        imagegallery="g",
        imagename="i",
        skuname="k",
    )
    assert _vmp(template)["osProfile"]["computerNamePrefix"] == "gpupluscpu"


@pytest.mark.parametrize("missing", ["subscriptionid", "admin_username", "vnet", "skuname"])
def test_build_sstemplate_missing_required(missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        _ss(**{missing: None})
    assert repr(missing) in str(info.value)
    assert "build_sstemplate" in str(info.value)
    with pytest.raises(ConfigError, match=missing):
        _ss(**{missing: ""})


def test_build_sstemplate_bad_values() -> None:
    with pytest.raises(ConfigError, match="osdisksize"):
        _ss(osdisksize=0)
    with pytest.raises(ConfigError, match="GUID"):
        _ss(subscriptionid="my-subscription")
    with pytest.raises(ConfigError, match=r"datadisks\[0\]"):
        _ss(datadisks=["big"])
    with pytest.raises(ConfigError, match="diskSizeGB"):
        _ss(datadisks=[{"diskSizeGB": -5}])


def test_build_templates_from_a_market_image() -> None:
    urn = "Canonical:ubuntu-24_04-lts:server:latest"
    expected = {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    scaleset = _ss(imagegallery=None, imagename=None, image=urn)
    assert _vmp(scaleset)["storageProfile"]["imageReference"] == expected
    vm = _vm(imagegallery=None, imagename=None, image=urn)
    assert vm["value"]["properties"]["storageProfile"]["imageReference"] == expected
    with pytest.raises(ConfigError, match="not both"):
        _ss(image=urn)
    with pytest.raises(ConfigError, match="publisher:offer:sku:version"):
        _ss(imagegallery=None, imagename=None, image="Canonical:ubuntu")
    with pytest.raises(ConfigError, match="image='publisher:offer:sku:version'"):
        _vm(imagegallery=None)


def test_build_vmtemplate_shape_and_nic_id_fix() -> None:
    template = _vm(resourcegroup_vnet="net-rg", datadisks=[{}, {}], tags={"a": "b"})
    assert set(template) == {"subscriptionid", "resourcegroup", "tempdisk", "value"}
    props = template["value"]["properties"]
    assert props["hardwareProfile"] == {"vmSize": "Standard_D8s_v3"}
    assert props["osProfile"]["computerName"] == "myvm"
    assert props["storageProfile"]["imageReference"]["id"] == (
        f"/subscriptions/{SUB}/resourceGroups/my-rg/providers/Microsoft.Compute"
        "/galleries/my-gallery/images/my-image"
    )
    assert [disk["lun"] for disk in props["storageProfile"]["dataDisks"]] == [1, 2]
    nic = props["networkProfile"]["networkInterfaces"][0]
    assert nic["id"] == (
        f"/subscriptions/{SUB}/resourceGroups/net-rg/providers/Microsoft.Network"
        "/networkInterfaces/cbox-nic"
    )
    assert nic["id"].startswith("/subscriptions/")
    assert nic["properties"] == {"primary": True}
    assert template["value"]["tags"] == {"a": "b"}


def test_build_vmtemplate_nicname_and_missing() -> None:
    template = _vm(nicname="other-nic")
    nic_id = template["value"]["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
    assert nic_id.endswith("/networkInterfaces/other-nic")
    with pytest.raises(ConfigError, match="vmsize"):
        _vm(vmsize=None)


def test_build_nictemplate_shape() -> None:
    template = _nic()
    assert template == {
        "location": "southcentralus",
        "properties": {
            "enableAcceleratedNetworking": True,
            "ipConfigurations": [
                {
                    "name": "ipConfig1",
                    "properties": {
                        "subnet": {
                            "id": (
                                f"/subscriptions/{SUB}/resourceGroups/net-rg/providers/"
                                "Microsoft.Network/virtualNetworks/my-vnet/subnets/my-subnet"
                            )
                        }
                    },
                }
            ],
        },
    }
    assert _nic(accelerated=False)["properties"]["enableAcceleratedNetworking"] is False
    with pytest.raises(ConfigError, match="location"):
        _nic(location="")


# --- save / load / list / remove -------------------------------------------------------------


def test_save_load_round_trip_and_mode(_home: Path) -> None:
    template = _ss()
    path = save_template_scaleset("big", template)
    assert path == _home / "templates_scaleset.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"big": template}
    assert load_template_scaleset("big") == template
    assert save_template_vm("v", _vm()) == _home / "templates_vm.json"
    assert save_template_nic("n", _nic()) == _home / "templates_nic.json"
    assert load_template_vm("v") == _vm()
    assert load_template_nic("n") == _nic()
    assert load_template("nic", "n") == _nic()


def test_load_returns_a_copy() -> None:
    save_template_scaleset("big", _ss())
    loaded = load_template_scaleset("big")
    loaded["value"]["sku"]["capacity"] = 99
    assert load_template_scaleset("big")["value"]["sku"]["capacity"] == 2
    builtin = load_template_scaleset("local")
    builtin["max_instances"] = 1
    assert load_template_scaleset("local")["max_instances"] == 16


def test_merge_keeps_other_templates() -> None:
    save_template_scaleset("a", _ss())
    save_template_scaleset("b", _ss(skuname="Standard_D4s_v3"))
    save_template_scaleset("a", _ss(skuname="Standard_D8s_v3"))
    assert stored_template_names("scaleset") == ["a", "b"]
    assert load_template_scaleset("a")["value"]["sku"]["name"] == "Standard_D8s_v3"
    assert load_template_scaleset("b")["value"]["sku"]["name"] == "Standard_D4s_v3"


def test_merge_keeps_unrelated_entries_of_an_original_file(_home: Path) -> None:
    _home.mkdir()
    original = {"julia-era": {"anything": "kept as is"}}
    (_home / "templates_scaleset.json").write_text(json.dumps(original))
    save_template_scaleset("new", _ss())
    stored = json.loads((_home / "templates_scaleset.json").read_text())
    assert stored["julia-era"] == {"anything": "kept as is"}
    assert "new" in stored


def test_list_and_remove() -> None:
    save_template_scaleset("b", _ss())
    save_template_scaleset("a", _ss())
    listed = list_templates("scaleset")
    assert list(listed) == ["a", "b", "local"]
    assert listed["local"] == dict(LOCAL_TEMPLATE_DEFAULTS)
    path = remove_template("scaleset", "a")
    assert json.loads(path.read_text()) == {"b": _ss()}
    assert list(list_templates("scaleset")) == ["b", "local"]
    assert list(list_templates("nic")) == []
    assert list(list_templates("vm")) == ["local"]


def test_remove_unknown_lists_known_names() -> None:
    save_template_nic("n1", _nic())
    with pytest.raises(ConfigError) as info:
        remove_template("nic", "n2")
    assert "n1" in str(info.value)
    assert "'n2'" in str(info.value)


def test_list_does_not_fail_on_one_bad_entry(_home: Path) -> None:
    save_template_scaleset("good", _ss())
    path = templates_path("scaleset")
    data = json.loads(path.read_text())
    data["bad"] = {"value": 3}
    path.write_text(json.dumps(data))
    assert sorted(list_templates("scaleset")) == ["bad", "good", "local"]
    with pytest.raises(ConfigError, match="subscriptionid"):
        load_template_scaleset("bad")


def test_unknown_template_lists_known_names_and_suggests() -> None:
    save_template_scaleset("alpha", _ss())
    save_template_scaleset("beta", _ss())
    with pytest.raises(ConfigError) as info:
        load_template_scaleset("gamma")
    message = str(info.value)
    assert "'gamma'" in message
    assert "alpha, beta, local" in message
    assert "build_sstemplate" in message and "save_template_scaleset" in message
    assert "azm template add-scaleset" in message
    with pytest.raises(ConfigError, match="build_vmtemplate") as vm_info:
        load_template_vm("nope")
    assert "local" in str(vm_info.value)
    with pytest.raises(ConfigError, match=r"\(none\)"):
        load_template_nic("nope")


@pytest.mark.parametrize("kind", ["scalesets", "", "VM"])
def test_unknown_kind(kind: str) -> None:
    for call in (
        lambda: list_templates(kind),
        lambda: load_template(kind, "x"),
        lambda: remove_template(kind, "x"),
        lambda: validate_template(kind, "x", {}, source="test"),
    ):
        with pytest.raises(ConfigError, match="scaleset, vm, nic"):
            call()


@pytest.mark.parametrize("name", ["", "has space", "a/b", "a.b", "é"])
def test_bad_template_names(name: str) -> None:
    with pytest.raises(ConfigError, match="name"):
        save_template_scaleset(name, _ss())
    assert not templates_path("scaleset").exists()


def test_corrupt_file_is_reported_and_not_overwritten(_home: Path) -> None:
    _home.mkdir()
    path = _home / "templates_scaleset.json"
    path.write_text('{"a": ')
    with pytest.raises(ConfigError) as info:
        save_template_scaleset("b", _ss())
    assert str(path) in str(info.value)
    assert path.read_text() == '{"a": '
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_template_scaleset("a")
    with pytest.raises(ConfigError, match="not valid JSON"):
        list_templates("scaleset")


def test_file_holding_a_list_is_reported(_home: Path) -> None:
    _home.mkdir()
    (_home / "templates_nic.json").write_text("[]")
    with pytest.raises(ConfigError, match="JSON object mapping template names"):
        save_template_nic("n", _nic())
    assert (_home / "templates_nic.json").read_text() == "[]"


def test_unwritable_home_gives_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("AZMANAGERS_HOME", str(blocker / "home"))
    with pytest.raises(ConfigError):
        save_template_scaleset("a", _ss())
    with pytest.raises(ConfigError):
        save_template_nic("a", _nic())
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_not_json_serialisable_extra_key_is_rejected() -> None:
    template = _ss()
    template["extra"] = {1, 2}
    with pytest.raises(ConfigError, match="JSON"):
        save_template_scaleset("a", template)
    assert not templates_path("scaleset").exists()


# --- validation ------------------------------------------------------------------------------


def _bad_ss(path: str, value: Any) -> dict[str, Any]:
    template = _ss()
    node: Any = template
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return template


_DELETE = object()
_VMP = "value.properties.virtualMachineProfile"
_IPC = f"{_VMP}.networkProfile.networkInterfaceConfigurations.0.properties.ipConfigurations.0"


@pytest.mark.parametrize(
    ("path", "value", "shown"),
    [
        ("value.sku.capacity", -1, "value.sku.capacity"),
        ("value.sku.capacity", "2", "value.sku.capacity"),
        ("value.sku.capacity", True, "value.sku.capacity"),
        ("value.sku.name", "", "value.sku.name"),
        ("value.location", "", "value.location"),
        ("value.location", _DELETE, "value.location"),
        ("subscriptionid", "abc", "subscriptionid"),
        ("resourcegroup", None, "resourcegroup"),
        ("tempdisk", 5, "tempdisk"),
        ("value.properties.overprovision", "yes", "value.properties.overprovision"),
        ("value.properties.upgradePolicy.mode", "Sometimes", "value.properties.upgradePolicy.mode"),
        (f"{_VMP}.storageProfile.osDisk.diskSizeGB", 0, f"{_VMP}.storageProfile.osDisk.diskSizeGB"),
        (
            f"{_VMP}.storageProfile.imageReference.id",
            "/subscriptions/x/images/y",
            f"{_VMP}.storageProfile.imageReference.id",
        ),
        (f"{_VMP}.osProfile.adminUsername", "", f"{_VMP}.osProfile.adminUsername"),
        (
            f"{_IPC}.properties.subnet.id",
            "/subscriptions/x/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v",
            f"{_VMP}.networkProfile.networkInterfaceConfigurations[0].properties"
            ".ipConfigurations[0].properties.subnet.id",
        ),
        (
            f"{_VMP}.networkProfile.networkInterfaceConfigurations",
            [],
            f"{_VMP}.networkProfile.networkInterfaceConfigurations",
        ),
        ("value.tags", {"a": 1}, "value.tags.a"),
        ("value", [], "value"),
    ],
)
def test_scaleset_validation_names_source_template_and_key(
    path: str, value: Any, shown: str
) -> None:
    template = _bad_ss(path, value)
    with pytest.raises(ConfigError) as info:
        save_template_scaleset("bad", template)
    message = str(info.value)
    assert "the template passed to save_template_scaleset" in message
    assert "template 'bad'" in message
    assert f"key {shown}" in message
    assert not templates_path("scaleset").exists()


def test_validation_on_load_names_the_file(_home: Path) -> None:
    save_template_scaleset("big", _ss())
    path = templates_path("scaleset")
    data = json.loads(path.read_text())
    data["big"]["value"]["sku"]["capacity"] = -3
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_template_scaleset("big")
    message = str(info.value)
    assert message.startswith(f"{path}, template 'big', key value.sku.capacity:")
    assert "non-negative integer" in message
    assert "Set it to" in message


def test_duplicate_data_disk_luns() -> None:
    template = _ss(datadisks=[{}, {}])
    disks = _vmp(template)["storageProfile"]["dataDisks"]
    disks[1]["lun"] = 1
    with pytest.raises(ConfigError, match=r"dataDisks\[1\]\.lun"):
        save_template_scaleset("x", template)
    disks[1]["lun"] = 64
    with pytest.raises(ConfigError, match="from 0 to 63"):
        save_template_scaleset("x", template)


def test_marketplace_image_reference_is_accepted() -> None:
    template = _ss()
    _vmp(template)["storageProfile"]["imageReference"] = {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    save_template_scaleset("market", template)
    del _vmp(template)["storageProfile"]["imageReference"]["offer"]
    with pytest.raises(ConfigError, match=r"imageReference\.offer"):
        save_template_scaleset("market", template)


def test_image_version_id_is_accepted() -> None:
    template = _ss()
    image = _vmp(template)["storageProfile"]["imageReference"]
    image["id"] += "/versions/1.2.3"
    save_template_scaleset("versioned", template)


def test_original_vm_nic_id_bug_is_reported_with_the_fix(_home: Path) -> None:
    template = _vm()
    nic = template["value"]["properties"]["networkProfile"]["networkInterfaces"][0]
    nic["id"] = nic["id"].replace("/subscriptions/", "/subscription/")
    _home.mkdir()
    path = _home / "templates_vm.json"
    path.write_text(json.dumps({"old": template}))
    with pytest.raises(ConfigError) as info:
        load_template_vm("old")
    message = str(info.value)
    assert str(path) in message
    assert "networkInterfaces[0].id" in message
    assert "'/subscriptions/'" in message


def test_vm_validation() -> None:
    template = _vm()
    del template["value"]["properties"]["hardwareProfile"]["vmSize"]
    with pytest.raises(ConfigError, match=r"value\.properties\.hardwareProfile\.vmSize"):
        save_template_vm("v", template)
    template = _vm()
    template["value"]["properties"]["networkProfile"]["networkInterfaces"][0]["id"] = "nic"
    with pytest.raises(ConfigError, match="network interface id"):
        save_template_vm("v", template)


def test_nic_validation() -> None:
    template = _nic()
    template["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"] = "my-subnet"
    with pytest.raises(ConfigError) as info:
        save_template_nic("n", template)
    message = str(info.value)
    assert "save_template_nic" in message
    assert "properties.ipConfigurations[0].properties.subnet.id" in message
    assert "/virtualNetworks/{vnet}/subnets/{subnet}" in message
    template = _nic()
    template["properties"]["enableAcceleratedNetworking"] = "yes"
    with pytest.raises(ConfigError, match="enableAcceleratedNetworking"):
        save_template_nic("n", template)


def test_template_must_be_an_object() -> None:
    with pytest.raises(ConfigError, match="JSON object"):
        save_template_scaleset("x", [1, 2])  # type: ignore[arg-type]


def test_validate_template_returns_copy() -> None:
    template = _ss()
    checked = validate_template("scaleset", "x", template, source="somewhere")
    assert checked == template and checked is not template
    with pytest.raises(ConfigError, match=r"somewhere, template 'x', key value\.sku\.capacity"):
        validate_template("scaleset", "x", _bad_ss("value.sku.capacity", -1), source="somewhere")


# --- the built-in and user local templates ---------------------------------------------------


def test_builtin_local_present_on_fresh_home(_home: Path) -> None:
    assert load_template_scaleset("local") == {
        "provider": "local",
        "max_instances": 16,
        "nthreads": 1,
        "memory_limit": "auto",
        "join_timeout_s": 120.0,
        "max_replacements": 3,
        "death_timeout_s": 30.0,
    }
    assert load_template_vm("local") == {"provider": "local"}
    assert "local" in list_templates("scaleset")
    assert not _home.exists()


def test_local_defaults_are_read_only() -> None:
    with pytest.raises(TypeError):
        LOCAL_TEMPLATE_DEFAULTS["nthreads"] = 2  # type: ignore[index]


def test_builtin_local_is_overridable_and_restorable() -> None:
    save_template_scaleset("local", {"provider": "local", "max_instances": 2})
    loaded = load_template_scaleset("local")
    assert loaded["max_instances"] == 2
    assert loaded["nthreads"] == 1
    assert list_templates("scaleset")["local"]["max_instances"] == 2
    remove_template("scaleset", "local")
    assert load_template_scaleset("local")["max_instances"] == 16
    with pytest.raises(ConfigError, match="built in"):
        remove_template("scaleset", "local")


def test_user_local_template_stored_as_given_and_filled_on_load(_home: Path) -> None:
    save_template_scaleset("small", {"provider": "local", "nthreads": 2, "memory_limit": "2GiB"})
    stored = json.loads((_home / "templates_scaleset.json").read_text())
    assert stored == {"small": {"provider": "local", "nthreads": 2, "memory_limit": "2GiB"}}
    loaded = load_template_scaleset("small")
    assert loaded == {**LOCAL_TEMPLATE_DEFAULTS, "nthreads": 2, "memory_limit": "2GiB"}
    assert list_templates("scaleset")["small"] == loaded


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_instances", 0),
        ("max_instances", 257),
        ("max_instances", True),
        ("max_instances", 2.0),
        ("nthreads", 0),
        ("memory_limit", "lots"),
        ("memory_limit", 0),
        ("memory_limit", -5),
        ("memory_limit", "0GiB"),
        ("memory_limit", False),
        ("memory_limit", 1.5),
        ("join_timeout_s", 0),
        ("join_timeout_s", -1.0),
        ("join_timeout_s", float("inf")),
        ("death_timeout_s", "30"),
        ("max_replacements", -1),
    ],
)
def test_local_template_bad_values(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        save_template_scaleset("mine", {"provider": "local", key: value})
    assert f"key {key}" in str(info.value)
    assert "template 'mine'" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_instances", 1),
        ("max_instances", 256),
        ("memory_limit", 4_000_000_000),
        ("memory_limit", "2GiB"),
        ("memory_limit", "512 MB"),
        ("memory_limit", "auto"),
        ("join_timeout_s", 5),
        ("death_timeout_s", 0.5),
        ("max_replacements", 0),
    ],
)
def test_local_template_good_values(key: str, value: Any) -> None:
    save_template_scaleset("mine", {"provider": "local", key: value})
    assert load_template_scaleset("mine")[key] == value


def test_local_template_unknown_key_lists_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        save_template_scaleset("mine", {"provider": "local", "location": "westus"})
    message = str(info.value)
    assert "location" in message
    for key in LOCAL_TEMPLATE_DEFAULTS:
        assert key in message


def test_local_vm_template() -> None:
    save_template_vm("here", {"provider": "local"})
    assert load_template_vm("here") == {"provider": "local"}
    with pytest.raises(ConfigError, match="nthreads"):
        save_template_vm("here2", {"provider": "local", "nthreads": 2})


def test_unknown_provider() -> None:
    with pytest.raises(ConfigError, match="key provider"):
        save_template_scaleset("x", {"provider": "gcp"})


def test_template_provider() -> None:
    assert template_provider(_ss()) == "azure"
    assert template_provider({**_ss(), "provider": "azure"}) == "azure"
    assert template_provider(dict(LOCAL_TEMPLATE_DEFAULTS)) == "local"
    with pytest.raises(ConfigError, match="'local' or 'azure'"):
        template_provider({"provider": "aws"})
    with pytest.raises(ConfigError):
        template_provider([])  # type: ignore[arg-type]


def test_explicit_azure_provider_is_kept() -> None:
    template = {**_ss(), "provider": "azure"}
    save_template_scaleset("explicit", copy.deepcopy(template))
    assert load_template_scaleset("explicit") == template


# --- names: a trailing newline, the length limit; bytes that are not UTF-8 -------------------


@pytest.mark.parametrize("name", ["local\n", "myss\n", "\nmyss", "my\nss"])
def test_a_name_with_a_newline_is_refused_and_nothing_is_written(name: str, _home: Path) -> None:
    # Before the fix NAME_RE.match accepted "local\n" ($ matches before a final newline).
    with pytest.raises(ConfigError, match="characters other than"):
        save_template_scaleset(name, {"provider": "local"})
    assert not templates_path("scaleset").exists()
    _home.mkdir(exist_ok=True)
    templates_path("vm").write_text(json.dumps({name: {"provider": "local"}}))
    with pytest.raises(ConfigError, match="characters other than"):
        load_template_vm(name)


def test_the_longest_scaleset_name_is_accepted_and_one_more_character_is_refused(
    _home: Path,
) -> None:
    from azmanagers.config.template_schema import (
        AZURE_NAME_MAX_CHARS,
        MAX_TEMPLATE_NAME_CHARS,
    )

    longest = "s" * MAX_TEMPLATE_NAME_CHARS["scaleset"]
    # What the name becomes: the pool `NAME-xxxxxx`, and a Flexible set's VMs `POOL_xxxxxxxx`.
    assert len(f"{longest}-abcdef_01234567") <= AZURE_NAME_MAX_CHARS
    save_template_scaleset(longest, {"provider": "local"})
    assert load_template_scaleset(longest)["provider"] == "local"
    save_template_scaleset(longest, build_sstemplate(longest, **_ss_args()))
    too_long = longest + "s"
    limit = f"at most {MAX_TEMPLATE_NAME_CHARS['scaleset']} characters"
    # Before the fix a 44+ character name was saved, and addprocs failed later in the TLS code.
    with pytest.raises(ConfigError, match=limit):
        save_template_scaleset(too_long, {"provider": "local"})
    with pytest.raises(ConfigError, match=limit):
        build_sstemplate(too_long, **_ss_args())
    data = json.loads(templates_path("scaleset").read_text())
    assert too_long not in data
    data[too_long] = {"provider": "local"}  # written by hand
    templates_path("scaleset").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=limit) as info:
        load_template_scaleset(too_long)
    assert str(templates_path("scaleset")) in str(info.value)


def test_vm_and_nic_template_names_have_a_limit_too() -> None:
    from azmanagers.config.template_schema import MAX_TEMPLATE_NAME_CHARS

    for kind, save, template in (
        ("vm", save_template_vm, {"provider": "local"}),
        ("nic", save_template_nic, _nic()),
    ):
        limit = MAX_TEMPLATE_NAME_CHARS[kind]
        save("v" * limit, template)
        with pytest.raises(ConfigError, match=f"at most {limit} characters"):
            save("v" * (limit + 1), template)
    with pytest.raises(ConfigError, match="at most"):
        build_vmtemplate("v" * 300, **{k: v for k, v in _vm_args().items()})


def test_a_long_computer_name_prefix_in_a_file_is_refused(_home: Path) -> None:
    template = _ss()
    _vmp(template)["osProfile"]["computerNamePrefix"] = "p" * 59
    with pytest.raises(ConfigError, match="computerNamePrefix"):
        save_template_scaleset("myss", template)


@pytest.mark.parametrize("kind", ["scaleset", "vm", "nic"])
def test_a_template_file_that_is_not_utf8_names_the_file(kind: str, _home: Path) -> None:
    _home.mkdir()
    path = templates_path(kind)
    path.write_bytes(b'{"x": "caf\xe9"}')
    # Before the fix: a bare UnicodeDecodeError without the file's name.
    for call in (lambda: load_template(kind, "x"), lambda: list_templates(kind)):
        with pytest.raises(ConfigError, match="not UTF-8") as info:
            call()
        assert str(path) in str(info.value) and "Fix or remove" in str(info.value)
    assert path.read_bytes() == b'{"x": "caf\xe9"}'


def _ss_args() -> dict[str, Any]:
    return {
        "subscriptionid": SUB,
        "admin_username": "linuxuser",
        "location": "southcentralus",
        "resourcegroup": "my-rg",
        "vnet": "my-vnet",
        "subnet": "my-subnet",
        "imagegallery": "my-gallery",
        "imagename": "my-image",
        "skuname": "Standard_D2s_v3",
    }


def _vm_args() -> dict[str, Any]:
    return {
        "subscriptionid": SUB,
        "admin_username": "linuxuser",
        "location": "southcentralus",
        "resourcegroup": "my-rg",
        "imagegallery": "my-gallery",
        "imagename": "my-image",
        "vmsize": "Standard_D8s_v3",
    }
