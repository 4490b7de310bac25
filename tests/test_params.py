"""Specifications of hwutils.params: every notebook parameter is declared, and bad values are named at once."""
import papermill
import pytest

from hwutils import params, profiles, report
from hwutils.params import SPEC, ParameterError, check_overrides, check_value

NOTEBOOKS = {p.stem: p for p in report.notebook_paths()}
MNIST_NB, CLOUD_NB, ADAM_NB = "03_mnist_regularization", "02_point_cloud_regularization", "01_adam_bias_correction"


def test_every_parameter_of_every_notebook_has_a_spec_entry():
    missing = [f"{stem}: {name}" for stem, path in NOTEBOOKS.items()
               for name in papermill.inspect_notebook(str(path)) if name not in SPEC.get(stem, {})]
    assert not missing, "notebook parameters without an entry in hwutils/params.py SPEC: " + ", ".join(missing)


def test_the_spec_names_no_parameter_that_no_notebook_declares():
    stale = [f"{stem}: {name}" for stem, spec in SPEC.items() for name in spec
             if stem not in NOTEBOOKS or name not in papermill.inspect_notebook(str(NOTEBOOKS[stem]))]
    assert not stale, "SPEC entries no notebook declares: " + ", ".join(stale)


def test_the_notebooks_own_defaults_are_allowed_by_the_spec():
    for stem, path in NOTEBOOKS.items():
        for name, info in papermill.inspect_notebook(str(path)).items():
            check_value(name, report._declared_default(info), stem)


def test_the_spec_knows_the_same_profiles_as_the_code():
    assert params.PROFILE_NAMES == profiles.PROFILES


@pytest.mark.parametrize("name, value, allowed", [
    ("downsample", 5, "one of None, 7, 14, 28"),
    ("hidden", [], "non-empty list of integers >= 1"),
    ("hidden", [0], "non-empty list of integers >= 1"),
    ("hidden", 800, "non-empty list of integers >= 1"),
    ("seeds", [], "non-empty list of distinct integers >= 0"),
    ("seeds", 3, "non-empty list of distinct integers >= 0"),
    ("seeds", [0, 0], "distinct"),
    ("epochs", "abc", "an integer >= 1"),
    ("epochs", 2.5, "an integer >= 1"),
    ("epochs", -3, "an integer >= 1"),
    ("epochs", True, "an integer >= 1"),
    ("lr_grid", [0.1, -1], "learning rates"),
    ("lr_grid", "fast", "learning rates"),
    ("force", 1, "true or false"),
])
def test_a_bad_mnist_value_is_named_in_one_line_with_what_is_allowed(name, value, allowed):
    with pytest.raises(ParameterError) as err:
        check_value(name, value, MNIST_NB if name in SPEC[MNIST_NB] else CLOUD_NB)
    message = str(err.value)
    assert "\n" not in message and f"parameter {name}" in message and repr(value) in message and allowed in message


@pytest.mark.parametrize("name, value", [
    ("lr", 0), ("lr", "fast"), ("lr", float("nan")), ("noise", -0.1), ("kind", "circles"), ("n_train", 1),
    ("l1_grid", [1e-3, 0]), ("l2_grid", 1e-3), ("patience", 0), ("batch_size", 0), ("results_dir", ""),
])
def test_a_bad_point_cloud_value_is_rejected(name, value):
    with pytest.raises(ParameterError, match=f"parameter {name} .*{CLOUD_NB} takes"):
        check_value(name, value, CLOUD_NB)


@pytest.mark.parametrize("name, value", [("n_runs", 1), ("T", 0), ("seed", -1), ("T", "many")])
def test_a_bad_adam_value_is_rejected(name, value):
    with pytest.raises(ParameterError, match=f"parameter {name}"):
        check_value(name, value, ADAM_NB)


def test_numbers_that_yaml_reads_as_strings_are_accepted_as_floats():
    assert check_value("lr", "1e-3", CLOUD_NB) == 0.001
    assert check_value("l1_grid", ["1e-4", 1e-3, 1], CLOUD_NB) == [1e-4, 1e-3, 1.0]
    assert check_value("noise", 0, CLOUD_NB) == 0.0


def test_none_written_as_a_word_is_accepted_where_none_is_allowed_only():
    assert check_value("epochs", "None", MNIST_NB) is None
    assert check_value("hidden", "null", MNIST_NB) is None
    with pytest.raises(ParameterError):
        check_value("hidden", None, CLOUD_NB)  # notebook 02 has no profile value for it


def test_good_values_pass_and_are_normalized():
    assert check_value("downsample", 7, MNIST_NB) == 7 and check_value("downsample", None, MNIST_NB) is None
    assert check_value("hidden", (800, 800), MNIST_NB) == [800, 800]
    assert check_value("seeds", [0, 1, 2], MNIST_NB) == [0, 1, 2]
    assert check_value("force", True, MNIST_NB) is True and check_value("kind", "spirals", CLOUD_NB) == "spirals"
    assert check_value("lr_grid", ["1e-2", 1], MNIST_NB) == [0.01, 1.0]


def test_a_shared_name_must_be_valid_for_every_notebook_that_declares_it():
    declared = {CLOUD_NB: set(SPEC[CLOUD_NB]), MNIST_NB: set(SPEC[MNIST_NB])}
    assert check_overrides({"hidden": [64]}, declared) == {CLOUD_NB: {"hidden": [64]}, MNIST_NB: {"hidden": [64]}}
    with pytest.raises(ParameterError, match=f"parameter hidden.*{CLOUD_NB}"):
        check_overrides({"hidden": None}, declared)  # fine for 03 (from the profile), not for 02


def test_an_override_of_a_parameter_without_a_spec_entry_is_refused_with_the_fix():
    with pytest.raises(ParameterError, match="momentum of 03_mnist_regularization has no entry in hwutils/params.py"):
        check_overrides({"momentum": 0.5}, {MNIST_NB: {"momentum"}})


@pytest.mark.parametrize("name, value, notebook", [
    ("seeds", [99999999999999999999], MNIST_NB), ("seeds", [0, 2**63], CLOUD_NB), ("seed", 2**63, ADAM_NB),
])
def test_a_seed_that_no_random_generator_takes_is_refused_up_front(name, value, notebook):
    with pytest.raises(ParameterError, match=r"integers? >= 0 and < 2\*\*63"):
        check_value(name, value, notebook)
    assert check_value(name, [2**63 - 1] if name == "seeds" else 2**63 - 1, notebook)  # the largest that works


def test_more_training_points_than_memory_holds_are_refused_up_front():
    with pytest.raises(ParameterError, match="n_train .* takes an integer >= 10 and <= 10,000,000"):
        check_value("n_train", 100_000_000_000, CLOUD_NB)
    assert check_value("n_train", params.MAX_POINTS, CLOUD_NB) == params.MAX_POINTS
