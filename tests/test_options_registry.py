"""Option coercion and the entry-point plugin registry."""

from __future__ import annotations

import math
from importlib.metadata import EntryPoint
from typing import Literal, Optional, Union

import pytest
from torch.distributions import constraints

import inferkit
from inferkit import UserError, registry
from inferkit.options import build, coerce, option_types, parse_assignments, suggest
from inferkit.samplers import Langevin, ShortRun


# -- coerce ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,annotation,expected", [
    ("5", int, 5), (5, int, 5), ("-3", int, -3),
    ("0.5", float, 0.5), (2, float, 2.0), ("1e-3", float, 1e-3), (0.25, float, 0.25),
    ("true", bool, True), ("Yes", bool, True), ("1", bool, True), ("off", bool, False), ("FALSE", bool, False),
    (True, bool, True),
    ("hello", str, "hello"), ("", str, ""),
    ("0.1,0.2", tuple[float, ...], (0.1, 0.2)), ("[1, 2, 3]", tuple[int, ...], (1, 2, 3)),
    ("(0.5)", tuple[float, ...], (0.5,)), ([1, 2], tuple[float, ...], (1.0, 2.0)), (0.3, tuple[float, ...], (0.3,)),
    ("a,b", list[str], ["a", "b"]), ("x, y", tuple, ("x", "y")),
    ("1,a", tuple[int, str], (1, "a")),
    # typing.Optional / typing.Union spellings are what older plugins annotate with: keep them.
    ("0.1", Union[float, tuple[float, ...]], 0.1),  # noqa: UP007
    ("0.1,0.2", float | tuple[float, ...], (0.1, 0.2)),
    ((0.1, 0.2), float | tuple[float, ...], (0.1, 0.2)), (0.1, float | tuple[float, ...], 0.1),
    ("none", Optional[int], None), ("None", int | None, None),  # noqa: UP045
    ("", Optional[float], None), (None, Optional[str], None),  # noqa: UP045
    ("7", Optional[int], 7), ("0.5", float | None, 0.5),  # noqa: UP045
    ("b", Literal["a", "b"], "b"), ("2", Literal[1, 2], 2),
])
def test_coerce_accepts(value, annotation, expected):
    result = coerce(value, annotation)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("value,annotation", [
    ("five", int), ("1.5", int), (1.5, int), (True, int), ("", int),
    ("abc", float), ("nan", float), ("inf", float), (math.nan, float), (True, float), (None, float),
    ("maybe", bool), (1, bool), (3, str),
    ("0.1,x", tuple[float, ...]), ("1,2,3", tuple[int, int]), ("a,1", tuple[int, str]), ({"a": 1}, tuple[int, ...]),
    ("x", Optional[int]), ("0.1,zz", float | tuple[float, ...]),  # noqa: UP045
    ("c", Literal["a", "b"]), ("3", Literal[1, 2]),
])
def test_coerce_rejects(value, annotation):
    with pytest.raises(ValueError):
        coerce(value, annotation)


def test_parse_assignments():
    assert parse_assignments(["a=1", " num-steps = 5 ", "grid=0.1,0.2", "path=a=b"], "--opt") == {
        "a": "1", "num_steps": "5", "grid": "0.1,0.2", "path": "a=b"}
    for bad in (["novalue"], ["=3"], [" =x"]):
        with pytest.raises(UserError, match="--opt"):
            parse_assignments(bad, "--opt")


def test_suggest():
    assert "num_steps" in suggest("num_step", ["num_steps", "step_size", "per"])
    assert suggest("zzzz", ["num_steps", "step_size"]) == ""


class NeedsOption:
    def __init__(self, required: int, ratio: float = 0.5, names: tuple[str, ...] = ("a",),
                 flag: bool = False, *, mode: Literal["fast", "slow"] = "fast", limit: float | None = None):
        self.required, self.ratio, self.names, self.flag, self.mode, self.limit = (
            required, ratio, names, flag, mode, limit)


def test_build_coerces_checks_names_and_required_options():
    types = option_types(NeedsOption)
    assert set(types) == {"required", "ratio", "names", "flag", "mode", "limit"}
    obj = build(NeedsOption, {"required": "3", "ratio": "0.25", "names": "x,y", "flag": "yes", "mode": "slow",
                              "limit": "none"}, what="thing")
    assert (obj.required, obj.ratio, obj.names, obj.flag, obj.mode, obj.limit) == (3, 0.25, ("x", "y"), True,
                                                                                   "slow", None)
    with pytest.raises(UserError, match="ratoi.*did you mean ratio") as excinfo:
        build(NeedsOption, {"required": 1, "ratoi": "0.1"}, what="thing")
    assert "its options are" in str(excinfo.value)
    with pytest.raises(UserError, match="ratio='fast'"):
        build(NeedsOption, {"required": 1, "ratio": "fast"}, what="thing")
    with pytest.raises(UserError, match="required"):
        build(NeedsOption, {}, what="thing")
    with pytest.raises(UserError):
        build(NeedsOption, {"required": 1, "mode": "medium"}, what="thing")


# -- loading plugins by name ----------------------------------------------------------------------
def test_load_sampler_with_string_options():
    sampler = inferkit.load_sampler("shortrun", num_steps="5")
    assert isinstance(sampler, ShortRun) and sampler.num_steps == 5
    sampler = inferkit.load_sampler("langevin", step_size="0.01,0.02,0.03", per="step", num_steps="3")
    assert isinstance(sampler, Langevin) and sampler.step_size.tolist() == [0.01, 0.02, 0.03]


@pytest.mark.parametrize("options,fragment", [
    ({"num_steps": "five"}, "num_steps='five'"),
    ({"num_steps": "0"}, "num_steps"),
    ({"num_step": "5"}, "did you mean num_steps"),
    ({"step_size": "-1"}, "step_size"),
    ({"per": "layers"}, "per"),
])
def test_bad_sampler_options_are_user_errors(options, fragment):
    with pytest.raises(UserError, match=fragment):
        inferkit.load_sampler("shortrun", **options)


@pytest.mark.parametrize("loader,name,expected", [
    (inferkit.load_sampler, "shortrn", "shortrun"),
    (inferkit.load_sampler, "langevn", "langevin"),
    (inferkit.load_tuner, "kl_grid", "kl-grid"),
    (inferkit.load_model, "linear-gausian", "linear-gaussian"),
])
def test_unknown_plugin_suggests_close_names(loader, name, expected):
    with pytest.raises(UserError, match=f"did you mean {expected}") as excinfo:
        loader(name)
    assert "inferkit list" in str(excinfo.value)


def test_unknown_plugin_without_close_match_lists_what_is_installed():
    with pytest.raises(UserError) as excinfo:
        inferkit.load_sampler("zzzzzz")
    message = str(excinfo.value)
    assert "did you mean" not in message and "shortrun" in message and "langevin" in message


def test_builtins_are_registered_through_entry_points():
    found = {(p.kind, p.name): p for p in inferkit.list_plugins()}
    for key in [("model", "linear-gaussian"), ("sampler", "shortrun"), ("sampler", "langevin"),
                ("tuner", "kl-grid"), ("tuner", "fixed")]:
        assert key in found, key
        assert found[key].ok and found[key].distribution == "inferkit"
    assert found[("sampler", "shortrun")].target == "inferkit.samplers.shortrun:ShortRun"


@pytest.fixture
def broken_plugin(monkeypatch):
    """A fake entry point in inferkit.models whose module does not exist (e.g. a half-installed plugin)."""
    real = registry.entry_points

    def fake(*, group):
        found = list(real(group=group))
        if group == "inferkit.models":
            found.append(EntryPoint(name="broken-model", value="inferkit_no_such_module_xyz:Model", group=group))
        return found

    monkeypatch.setattr(registry, "entry_points", fake)


def test_list_plugins_reports_a_broken_plugin_without_raising(broken_plugin):
    plugins = inferkit.list_plugins()
    broken = [p for p in plugins if p.name == "broken-model"]
    assert len(broken) == 1
    assert broken[0].kind == "model" and not broken[0].ok
    assert "ModuleNotFoundError" in broken[0].error and "inferkit_no_such_module_xyz" in broken[0].error
    assert broken[0].distribution == "?"
    others = [p for p in plugins if p.name != "broken-model" and p.distribution == "inferkit"]
    assert others and all(p.ok for p in others)
    # The others still load; the broken one is a user error, not a traceback.
    assert isinstance(inferkit.load_sampler("shortrun"), ShortRun)
    with pytest.raises(UserError, match="broken-model.*failed to import"):
        inferkit.load_model("broken-model")


def test_samplers_and_kl_tuners_refuse_models_with_latents_they_cannot_handle():
    from inferkit import UserError, load_model, load_sampler, load_tuner
    from inferkit.interfaces import require_compatible

    model = load_model("linear-gaussian")
    model.latent_support = constraints.boolean  # as a discrete-latent model declares it
    for name in ("shortrun", "langevin", "abp", "vae"):
        with pytest.raises(UserError, match="binary latents"):
            require_compatible(model, load_sampler(name))
    for name in ("kl-grid", "kl-grad"):
        with pytest.raises(UserError, match="real-valued latents"):
            load_tuner(name).check(model, load_sampler("shortrun"))
    model.latent_support = constraints.real
    require_compatible(model, load_sampler("shortrun"))  # no error
