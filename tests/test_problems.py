"""The problems registry: one class per config problem kind, each built from its section and describing itself."""

import subprocess
import sys

import pytest

import mgrit_resnet as mr
from mgrit_resnet.config import PROBLEM_KINDS


def test_the_registry_holds_every_kind_of_the_config_and_nothing_else():
    assert tuple(mr.problems.REGISTRY) == PROBLEM_KINDS
    assert mr.problems.REGISTRY["dahlquist"] is mr.problems.Dahlquist
    assert mr.problems.REGISTRY["heat1d"] is mr.problems.Heat1D
    assert all(mr.problems.REGISTRY[kind].kind == kind for kind in ("dahlquist", "heat1d"))


def test_listing_the_registry_imports_no_petsc():
    code = "import sys, mgrit_resnet.problems as p; print(list(p.REGISTRY), 'petsc4py' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['dahlquist', 'heat1d', 'heat2d'] False False"


@pytest.mark.parametrize(
    "overrides, cls, text",
    [
        ({}, "Dahlquist", "z = -1.0, backward_euler, T = 5.0, 100 steps"),
        (
            {"problem.z": "-1+2j", "problem.scheme": "trapezoid", "problem.n_steps": 64},
            "Dahlquist",
            "z = (-1+2j), trapezoid, T = 5.0, 64 steps",
        ),
        ({"problem.kind": "heat1d"}, "Heat1D", "nx = 32, diffusivity 1.0, backward_euler, T = 5.0, 100 steps"),
        (
            {"problem.kind": "heat1d", "problem.nx": 8, "problem.diffusivity": 0.25, "problem.t_final": 2, "problem.n_steps": 16},
            "Heat1D",
            "nx = 8, diffusivity 0.25, backward_euler, T = 2.0, 16 steps",
        ),
    ],
)
def test_a_problem_builds_itself_from_its_section_and_describes_itself(overrides, cls, text):
    section = mr.load_config(overrides=overrides).problem
    problem = mr.problems.from_config(section)
    assert type(problem) is getattr(mr.problems, cls) and problem.describe() == text
    assert type(problem).from_config(section).describe() == text


def test_heat2d_through_the_registry():
    pytest.importorskip("petsc4py")
    section = mr.load_config(overrides={"problem.kind": "heat2d", "problem.nx": 4, "problem.n_steps": 8}).problem
    problem = mr.problems.from_config(section)
    assert type(problem) is mr.problems.REGISTRY["heat2d"] is mr.problems.Heat2D
    assert problem.describe() == "nx = 4, diffusivity 1.0, backward_euler, T = 5.0, 8 steps"


@pytest.mark.parametrize("kind", ["heat1d", "heat2d"])
def test_heat_problems_take_backward_euler_only(kind):
    section = mr.load_config(overrides={"problem.kind": kind, "problem.scheme": "trapezoid"}).problem
    with pytest.raises(ValueError, match=f"problem.scheme must be 'backward_euler' for problem.kind = '{kind}'; got 'trapezoid'"):
        mr.problems.from_config(section)


def test_a_section_of_another_kind_or_missing_keys_is_refused():
    with pytest.raises(ValueError, match="problem.kind = 'heat1d' is not 'dahlquist'"):
        mr.problems.Dahlquist.from_config(mr.load_config(overrides={"problem.kind": "heat1d"}).problem)
    with pytest.raises(ValueError, match="the \\[problem\\] section lacks problem.nx"):
        mr.problems.Heat1D.from_config({"diffusivity": 1.0, "t_final": 1.0, "n_steps": 4})
    with pytest.raises(ValueError, match="problem.kind must be one of 'dahlquist', 'heat1d', 'heat2d'; got 'wave'"):
        mr.problems.from_config({"kind": "wave"})
    assert mr.problems.Heat1D.from_config({"nx": 4, "diffusivity": 1.0, "t_final": 1.0, "n_steps": 4}).describe().startswith("nx = 4")
