"""Recipe loading, merging, overrides and validation: every malformed recipe is refused with
exit code 2 and a message naming the field at fault."""

from __future__ import annotations

import pytest

from guidestack.cli.main import main
from guidestack.engine.errors import RecipeError
from guidestack.engine.recipe import load_recipe, parse_value

GOOD = """
description = "test recipe"
[sampler]
kind = "ddpm"
steps = 10
[[stage]]
use = "smooth-semantics"
weight = 1.0
restorer = { use = "gaussian-blur", sigma = 1.0 }
"""

# (name, recipe text, text that must appear in the error)
MALFORMED = [
    ("not toml", "description = \n[sampler", "not valid TOML"),
    ("no description", "[sampler]\nsteps = 5", "description"),
    (
        "unknown top key",
        'description = "x"\n[[stages]]\nuse = "smooth-semantics"',
        "did you mean 'stage'",
    ),
    ("steps zero", 'description = "x"\n[sampler]\nsteps = 0', "sampler.steps"),
    ("bad sampler kind", 'description = "x"\n[sampler]\nkind = "euler"', "sampler.kind"),
    ("negative scale", 'description = "x"\n[guidance]\nscale = -1.0', "guidance.scale"),
    ("window reversed", 'description = "x"\n[guidance]\nwindow = [500, 100]', "window"),
    ("steps as string", 'description = "x"\n[sampler]\nsteps = "many"', "sampler.steps"),
    ("stage without use", 'description = "x"\n[[stage]]\nweight = 1.0', "stage[0].use"),
    (
        "unknown stage",
        'description = "x"\n[[stage]]\nuse = "smooth-semantic"',
        "did you mean 'smooth-semantics'",
    ),
    (
        "import path as stage",
        'description = "x"\n[[stage]]\nuse = "os:system"',
        "unknown stage 'os:system'",
    ),
    (
        "negative weight",
        'description = "x"\n[sampler]\nkind="ddpm"\n[[stage]]\nuse = "smooth-semantics"\nweight = -2.0',
        "stage[0].weight",
    ),
    (
        "typo in stage field",
        'description = "x"\n[sampler]\nkind="ddpm"\n[[stage]]\nuse = "smooth-semantics"\nwieght = 2.0',
        "did you mean 'weight'",
    ),
    (
        "unknown restorer",
        'description = "x"\n[sampler]\nkind="ddpm"\n[[stage]]\nuse = "smooth-semantics"\nrestorer = { use = "gausian-blur" }',
        "stage[0].restorer.use",
    ),
    (
        "bad restorer option",
        'description = "x"\n[sampler]\nkind="ddpm"\n[[stage]]\nuse = "smooth-semantics"\nrestorer = { use = "gaussian-blur", sigma = -1 }',
        "stage[0].restorer.sigma",
    ),
    ("stage not a list", 'description = "x"\nstage = "smooth-semantics"', "stage"),
    (
        "duplicate stage ids",
        'description = "x"\n[sampler]\nkind="ddpm"\n[[stage]]\nuse = "smooth-semantics"\n[[stage]]\nuse = "smooth-semantics"',
        "stage[1].id",
    ),
    (
        "mean shift on deterministic ddim",
        'description = "x"\n[sampler]\nkind = "ddim"\neta = 0.0\n[[stage]]\nuse = "smooth-semantics"',
        "guidance.rule",
    ),
    (
        "extends missing file",
        'description = "x"\nextends = "nope/missing.toml"',
        "no such recipe file",
    ),
    ("extends unknown name", 'description = "x"\nextends = "restor"', "did you mean 'restore'"),
    ("prior dtype", 'description = "x"\n[prior]\ndtype = "float8"', "prior.dtype"),
]


@pytest.mark.parametrize("name,text,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_recipe_exit_code_2_names_field(tmp_path, capsys, name, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err, err
    assert str(path) in err  # the recipe at fault is named


def test_all_problems_reported_at_once(registry, tmp_path):
    path = tmp_path / "many.toml"
    path.write_text('[sampler]\nsteps = 0\n[guidance]\nscale = -1\n[[stage]]\nuse = "nope"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path), registry)
    paths = {p for p, _ in info.value.problems}
    assert {"description", "sampler.steps", "guidance.scale", "stage[0].use"} <= paths


def test_extends_cycle(registry, tmp_path):
    (tmp_path / "a.toml").write_text('description = "a"\nextends = "b.toml"')
    (tmp_path / "b.toml").write_text('description = "b"\nextends = "a.toml"')
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(str(tmp_path / "a.toml"), registry)


def test_extends_merges_and_child_wins(registry, tmp_path):
    (tmp_path / "base.toml").write_text(GOOD)
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[sampler]\nsteps = 7\n')
    recipe = load_recipe(str(tmp_path / "child.toml"), registry)
    assert recipe.sampler.steps == 7
    assert recipe.sampler.kind == "ddpm"  # inherited
    assert recipe.description == "test recipe"
    assert [s.use for s in recipe.stages] == ["smooth-semantics"]


def test_extends_builtin_by_name(registry, tmp_path):
    (tmp_path / "mine.toml").write_text(
        'description = "mine"\nextends = "restore"\n[guidance]\nscale = 0.5\n'
    )
    recipe = load_recipe(str(tmp_path / "mine.toml"), registry)
    assert recipe.guidance.scale == 0.5
    assert recipe.stages[0].use == "smooth-semantics"


def test_extends_stage_tables_change_the_bases_stages(registry, tmp_path):
    """``[stage.<id>]`` tables (instead of a ``[[stage]]`` list) edit the base's stages in place:
    options merge, nested references are replaced whole, the list and its order stay."""
    (tmp_path / "base.toml").write_text(GOOD + '[[stage]]\nuse = "lightness"\nid = "light"\n')
    (tmp_path / "child.toml").write_text(
        'extends = "base.toml"\n[stage.light]\nweight = 3.0\n'
        '[stage.smooth-semantics]\nrestorer = { use = "median" }\n'
    )
    recipe = load_recipe(str(tmp_path / "child.toml"), registry)
    assert [s.id or s.use for s in recipe.stages] == ["smooth-semantics", "light"]
    assert recipe.stages[1].weight == 3.0 and recipe.stages[0].weight == 1.0
    assert recipe.stages[0].restorer.use == "median"
    assert "sigma" not in recipe.stages[0].restorer.options_dict()
    (tmp_path / "bad.toml").write_text('extends = "base.toml"\n[stage.nope]\nweight = 1.0\n')
    with pytest.raises(RecipeError, match="no stage with id 'nope'"):
        load_recipe(str(tmp_path / "bad.toml"), registry)


def test_set_overrides_are_toml_typed(registry, tmp_path):
    (tmp_path / "r.toml").write_text(GOOD)
    recipe = load_recipe(
        str(tmp_path / "r.toml"),
        registry,
        [
            "sampler.steps=25",
            "stage.smooth-semantics.weight=0.3",
            "stage[0].restorer.sigma=2.5",
            "guidance.window=[100, 900]",
        ],
    )
    assert recipe.sampler.steps == 25 and isinstance(recipe.sampler.steps, int)
    assert recipe.stages[0].weight == pytest.approx(0.3)
    assert recipe.stages[0].restorer.options_dict() == {"sigma": 2.5}
    assert recipe.guidance.window == (100, 900)


@pytest.mark.parametrize(
    "assignment,expected",
    [
        ("stage.nope.weight=1", "no stage with id 'nope'"),
        ("stage[3].weight=1", "out of range"),
        ("sampler.steps", "path=value"),
    ],
)
def test_bad_set_paths(registry, tmp_path, assignment, expected):
    (tmp_path / "r.toml").write_text(GOOD)
    with pytest.raises(RecipeError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_recipe(str(tmp_path / "r.toml"), registry, [assignment])


def test_bad_set_value_is_reported_with_path(tmp_path, capsys):
    (tmp_path / "r.toml").write_text(GOOD)
    code = main(["validate", str(tmp_path / "r.toml"), "--set", "sampler.steps=-4"])
    assert code == 2
    assert "sampler.steps" in capsys.readouterr().err


def test_parse_value():
    assert parse_value("0.3") == 0.3
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("gaussian-faces-64") == "gaussian-faces-64"
    assert parse_value('"quoted"') == "quoted"


def test_per_prior_tables_apply_for_matching_prior(registry, tmp_path):
    (tmp_path / "r.toml").write_text(
        GOOD
        + '\n[per_prior.gaussian.guidance]\nscale = 0.7\n[per_prior."gaussian-faces-64".stage.smooth-semantics]\nweight = 3.0\n'
    )
    plain = load_recipe(str(tmp_path / "r.toml"), registry)
    assert plain.guidance.scale == 0.1
    special = load_recipe(
        str(tmp_path / "r.toml"), registry, prior_name="gaussian-faces-64", prior_kind="gaussian"
    )
    assert special.guidance.scale == 0.7
    assert special.stages[0].weight == 3.0
    other = load_recipe(
        str(tmp_path / "r.toml"), registry, prior_name="google/ddpm", prior_kind="diffusers"
    )
    assert other.guidance.scale == 0.1


def test_every_builtin_recipe_is_valid_and_described(registry):
    from guidestack.engine.recipe import recipe_index

    index = recipe_index(registry)
    assert {"sample", "restore"} <= set(index)
    for name in index:
        recipe = load_recipe(name, registry)
        assert recipe.description.strip(), name
        example = recipe.example.get("image")
        assert example, f"recipe {name} ships no example input"
        from conftest import REPO

        assert (REPO / example).is_file(), f"{name}: example {example} missing"
