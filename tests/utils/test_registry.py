"""The registries every family keeps: decorator registration, default configs, clear errors."""

from __future__ import annotations

import pytest

from medrobust.utils.registry import Registry


def test_decorator_registers_under_a_name_or_the_entry_own_name_with_its_config():
    reg: Registry = Registry("widget")

    @reg.register("a", colour="red")
    def a() -> str:
        return "a"

    @reg.register()
    class B:
        name = "b"

    assert reg["a"] is a and reg["b"] is B and list(reg) == ["a", "b"] and len(reg) == 2
    assert reg.cfg("a") == {"colour": "red"} and reg.cfg("b") == {}
    cfg = reg.cfg("a")
    cfg["colour"] = "blue"
    assert reg.cfg("a") == {"colour": "red"}  # a copy: the registry's config is not edited by callers


def test_errors_name_the_kind_and_list_what_is_registered():
    reg: Registry = Registry("widget")
    reg.add("one", object())
    with pytest.raises(KeyError, match=r"unknown widget 'two'; available: one"):
        reg["two"]
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("one", object())
    with pytest.raises(ValueError, match="no name"):
        reg.register()(object())
    reg.remove("one")
    assert "one" not in reg


def test_every_family_is_behind_a_registry():
    from medrobust.attacks import ATTACKS
    from medrobust.data.sources import SOURCES
    from medrobust.defenses import TRAINING_METHODS
    from medrobust.evaluation.shifts import SHIFTS
    from medrobust.models import ADAPTERS, BACKBONES, HEADS

    for registry in (ATTACKS, SOURCES, TRAINING_METHODS, SHIFTS, ADAPTERS, BACKBONES, HEADS):
        assert isinstance(registry, Registry) and len(registry) >= 2
    assert {"square", "cw", "autoattack"} <= set(ATTACKS)  # no optional imports: every in-tree attack is there
    assert all(ATTACKS[name].name == name for name in ATTACKS)
    assert all(TRAINING_METHODS[name].name == name for name in TRAINING_METHODS)
    assert SOURCES.cfg("synthetic")["synthesized"] and SOURCES.cfg("s3")["dicom"] == "some"
