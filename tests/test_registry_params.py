import dataclasses

import pytest

from copycatch.core.errors import InvalidArgument, UnknownName
from copycatch.core.params import Params, parse_assignments, parse_spec
from copycatch.core.registry import Registry


def test_registry_register_create_list_and_unknown_name_lists_valid():
    reg: Registry = Registry("widget")

    @reg.register("b-thing")
    def b(size: int = 1):
        """Makes a b."""
        return ("b", size)

    @reg.register()
    def a_thing():
        return "a"

    assert reg.list() == ["a-thing", "b-thing"]
    assert reg.list("b*") == ["b-thing"]
    assert reg.describe()[1] == ("b-thing", "Makes a b.")
    assert reg.create("b-thing", size=None) == ("b", 1)  # None never overrides a default
    assert reg.create("b-thing", size=3) == ("b", 3)
    with pytest.raises(UnknownName) as err:
        reg.get("c-thing")
    assert "a-thing, b-thing" in str(err.value) and "'c-thing'" in str(err.value)


@dataclasses.dataclass(frozen=True)
class _P(Params):
    eps: float = 0.1
    steps: int = 5
    flag: bool = False
    mode: str = "x"

    def validate(self):
        if self.eps < 0:
            raise InvalidArgument(f"eps must be >= 0, got {self.eps}")


def test_params_reject_unknown_keys_and_name_valid_ones():
    with pytest.raises(InvalidArgument) as err:
        _P.from_dict({"epz": 1})
    assert "'epz'" in str(err.value) and "eps, steps, flag, mode" in str(err.value)


def test_params_coerce_cli_strings_and_validate():
    p = _P.from_dict({"eps": "5/255", "steps": "7", "flag": "yes"})
    assert p.eps == pytest.approx(5 / 255) and p.steps == 7 and p.flag is True
    with pytest.raises(InvalidArgument, match="steps"):
        _P.from_dict({"steps": "2.5"})
    with pytest.raises(InvalidArgument, match="eps must be >= 0"):
        _P.from_dict({"eps": -1})
    assert _P().replace(steps=2).steps == 2


def test_parse_assignments_and_spec():
    assert parse_assignments(["a=1,b=2", "c=x"]) == {"a": "1", "b": "2", "c": "x"}
    assert parse_assignments(["sizes=1,2,3"]) == {"sizes": "1,2,3"}
    assert parse_spec("top-k:k=3") == ("top-k", {"k": "3"})
    assert parse_spec("hard-label") == ("hard-label", {})
    with pytest.raises(InvalidArgument):
        parse_assignments(["novalue"])
