"""
tox.ini stays in step with pyproject.toml (the Pythons it tests are the classifiers') and
with scripts/test (the same doctest invocations, each in a process of its own). CI runs
``tox -e lint,docs`` itself (.ci/run).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import tomllib

from tests._hub import ROOT


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def tox() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(read("tox.ini"))
    return parser


def test_the_envlist_tests_the_pythons_of_the_classifiers() -> None:
    envlist = {e.strip() for e in tox()["tox"]["envlist"].split(",")}
    tested = {f"3.{e[3:]}" for e in envlist if re.fullmatch(r"py3\d+", e)}
    project = tomllib.loads(read("pyproject.toml"))["project"]
    prefix = "Programming Language :: Python :: "
    declared = {
        c.removeprefix(prefix) for c in project["classifiers"]
        if re.fullmatch(re.escape(prefix) + r"3\.\d+", c)
    }
    assert tested == declared
    oldest = min(declared, key=lambda v: int(v.split(".")[1]))
    assert project["requires-python"] == f">={oldest}"
    assert {"lint", "docs"} <= envlist
    assert tox()["tox"]["skip_missing_interpreters"] == "true"


def test_the_doctest_steps_are_those_of_scripts_test() -> None:
    in_tox = [
        shlex.split(line.strip())[3:]
        for line in tox()["testenv"]["commands"].splitlines()
        if line.strip().startswith("python -m pytest -p no:twisted")
    ]
    in_script = [
        shlex.split(line)[1:]
        for line in read("scripts/test").splitlines()
        if line.startswith("run_pytest -p no:twisted")
    ]
    assert len(in_script) == 3
    assert in_tox == in_script

