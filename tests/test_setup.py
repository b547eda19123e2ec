"""The repository's configuration: pins, conda environment, nbgrader config, ignored student data."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml

from conftest import REPO

ASSIGNMENTS = ["06_mlp_backprop", "01_mle_kl", "02_elbo", "03_reparameterisation", "04_gan_losses", "05_rnn_gradients",
               "07_convolutions", "08_attention_sampling", "09_latent_spaces"]


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
            assert match, f"requirements.txt: '{line}' is not pinned with =="
            pins[match[1].lower()] = match[2]
    return pins


def test_required_pins():
    pins = requirement_pins()
    assert pins["nbgrader"] == "0.9.6"
    assert pins["torch"] == "2.13.0"
    assert pins["jupyterlab"].startswith("4."), "JupyterLab must be 4.x"
    for name in ("numpy", "matplotlib", "ipywidgets", "pytest"):
        assert name in pins, f"{name} is not pinned in requirements.txt"


def test_constraints_do_not_contradict_requirements():
    pins = requirement_pins()
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: '{line}' is not pinned with =="
            assert name.lower() not in pins, f"{name} is pinned twice (requirements.txt and constraints.txt)"


def test_conda_environment_installs_the_same_pins():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-r requirements.txt" in pip_section and "-c constraints.txt" in pip_section, \
        "environment.yml must install requirements.txt with constraints.txt through pip"
    conda_names = {re.split(r"[=<>]", d)[0].lower() for d in deps if isinstance(d, str)}
    assert conda_names <= {"python", "pip"}, f"conda packages would shadow the pip pins: {conda_names - {'python', 'pip'}}"
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11" and python == "python=3.11", f"python versions disagree: {python} vs {requires}"


def test_pyproject_dependencies_are_pinned_alike():
    pins = requirement_pins()
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, _, version = dep.partition("==")
        assert name.lower() in pins, f"pyproject depends on {name}, which requirements.txt does not pin"
        assert not version or version == pins[name.lower()], f"{name}: {version} in pyproject, {pins[name.lower()]} pinned"


def test_course_declares_the_assignments(course):
    assert list(course.declared) == ASSIGNMENTS


def test_nbgrader_config(course):
    config = course.nbgrader_config()
    assert config.CourseDirectory.course_id
    assert config.OverwriteCells.add_missing_cells is True
    assert config.IgnorePattern.enabled is True
    assert 30 <= config.Execute.timeout <= 600
    stub = config.ClearSolutions.code_stub["python"]
    assert "NotImplementedError" in stub and "replace" in stub.lower(), "the stub should tell students what to do"


def test_ignore_pattern_drops_warnings_but_not_errors(course):
    pattern = re.compile(course.nbgrader_config().IgnorePattern.pattern)
    assert pattern.search("/x/torch/nn/modules/module.py:12: UserWarning: something\n  warnings.warn(\n")
    assert pattern.search("x.py:3: RuntimeWarning: overflow encountered in exp\n")
    assert pattern.search("[W1121 14:00:00.123 init.cpp:10] Warning: something\n")
    assert not pattern.search("Traceback (most recent call last):\nAssertionError: wrong\n")
    assert not pattern.search("my answer is wrong\n")


def test_student_data_is_ignored_by_git():
    for path in ["submitted/alice/01_mle_kl/01_mle_kl.ipynb", "autograded/alice/01_mle_kl/01_mle_kl.ipynb",
                 "feedback/alice/01_mle_kl/01_mle_kl.html", "gradebook.db", "exchange/x", "demo/grades.csv"]:
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0
        assert ignored, f"{path} would be committed: add it to .gitignore"
    kept = subprocess.run(["git", "check-ignore", "-q", "autograded/README.md"], cwd=REPO).returncode
    assert kept == 1, "autograded/README.md must stay in git"


def test_autograde_is_nbgraders_own_with_execute_guarded(course):
    """nbgrader_config.py takes nbgrader's own autograde steps and puts the four guards where its Execute was, so an
    nbgrader upgrade that changes its list is followed; the sanitizers are a copy of nbgrader's, which this holds
    to nbgrader's own list so that an upgrade that changes it is noticed instead of silently dropping a step."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import DeduplicateIds, Execute
    from traitlets.utils.importstring import import_item

    from coursegrader.safety import GUARDS, GuardedExporter
    from coursegrader.sanitize import ForgetStrayCells

    config = course.nbgrader_config()
    traits = Autograde.class_traits()
    ours = {name: [import_item(p) if isinstance(p, str) else p for p in config.Autograde[name]]
            for name in ("autograde_preprocessors", "sanitize_preprocessors")}
    shipped = {name: traits[name].make_dynamic_default() for name in ours}
    at = shipped["autograde_preprocessors"].index(Execute)
    assert ours["autograde_preprocessors"] == [*shipped["autograde_preprocessors"][:at], *map(import_item, GUARDS),
                                               *shipped["autograde_preprocessors"][at + 1:]], shipped
    after = shipped["sanitize_preprocessors"].index(DeduplicateIds) + 1
    assert ours["sanitize_preprocessors"] == [*shipped["sanitize_preprocessors"][:after], ForgetStrayCells,
                                              *shipped["sanitize_preprocessors"][after:]], shipped
    assert import_item(config.Autograde.exporter_class) is GuardedExporter


def test_grading_refuses_when_execute_is_not_guarded(course):
    """Grading starts only with the four guards, enabled, in order, and nothing else that executes notebooks."""
    from nbgrader.preprocessors import Execute

    from coursegrader.safety import GUARDS, as_nbgrader_ships, refusal

    config = course.nbgrader_config()
    config.GuardedExecute.sandbox = False  # the opt-out: the sandbox is not the question here
    assert refusal(config) == ""
    guarded = list(config.Autograde.autograde_preprocessors)
    for name in GUARDS:
        without = [p for p in guarded if p != name]
        assert f"{name} is missing" in refusal(config, without), name
    swapped = [GUARDS[1] if p == GUARDS[0] else GUARDS[0] if p == GUARDS[1] else p for p in guarded]
    assert "not in that order" in refusal(config, swapped)
    assert "would run student code unguarded" in refusal(config, [*guarded, Execute])
    config.CapOutputs.enabled = False
    assert "CapOutputs is disabled" in refusal(config)
    as_nbgrader_ships(config)
    assert "refusing to grade" in refusal(config)
