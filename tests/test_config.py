"""params.yaml is validated when read: errors name the key and the allowed values."""

from __future__ import annotations

import pytest

from medrobust.config import ConfigError, parse_eps
from medrobust.params import Params, load_params, parse_params
from tests.conftest import REPO, leaves, write_params


def test_params_yaml_is_small_and_params_defaults_yaml_is_every_default():
    import yaml

    from medrobust.defenses import TRAINING_METHODS
    from medrobust.training.config import METHOD_DEFAULTS

    # the project's params.yaml sets a handful of values (one `dvc exp show` column each) ...
    project = yaml.safe_load((REPO / "params.yaml").read_text())
    assert leaves(project) == {"train.method", "train.epochs"}, sorted(leaves(project))
    assert load_params(REPO / "params.yaml") == Params()
    # ... and the documented defaults are the code's, every one of them written out
    written = yaml.safe_load((REPO / "params.defaults.yaml").read_text())
    assert load_params(REPO / "params.defaults.yaml") == Params()
    assert leaves(written) == leaves(Params().model_dump(mode="json")), "params.defaults.yaml misses a setting"
    # every registered method has its section there, so users see its knobs
    assert sorted(written["train"]["methods"]) == sorted(TRAINING_METHODS) == sorted(METHOD_DEFAULTS)


def test_method_settings_merge_over_the_project_defaults_key_by_key():
    p = parse_params({"train": {"methods": {"pgd_at": {"eps": "4/255"}}}})
    assert p.train.settings() == {"norm": "linf", "eps": pytest.approx(4 / 255), "steps": 7,
                                  "step_size": pytest.approx(2 / 255), "random_start": True, "warmup_epochs": 4}
    assert Params().train.settings("arfl")["eps"] == pytest.approx(8 / 255)   # the data's threat model, not 0.01
    # a default written out is the same params (so the same stage digests: nothing re-runs)
    assert parse_params({"train": {"methods": {"pgd_at": {"warmup_epochs": 4}}}}) == Params()


def test_method_params_are_checked_against_the_method_signature():
    with pytest.raises(ConfigError, match=r"unknown key 'train.methods.trades.gamma' in train.methods.trades; "
                                          r"allowed keys: beta, eps, step_size, steps"):
        parse_params({"train": {"methods": {"trades": {"gamma": 1}}}})
    with pytest.raises(ConfigError, match=r"train.methods.dual_at: .*r must be in \[0, 1\]"):
        parse_params({"train": {"methods": {"dual_at": {"r": 2.0}}}})
    with pytest.raises(ConfigError, match=r"unknown key 'train.methods.magic' in train.methods; allowed keys: arfl, "):
        parse_params({"train": {"methods": {"magic": {}}}})
    with pytest.raises(ConfigError, match=r"train.methods.trades.steps: expected an integer"):
        parse_params({"train": {"methods": {"trades": {"steps": 2.5}}}})
    p = parse_params({"train": {"method": "trades", "methods": {"trades": {"eps": "4/255"}}}})
    assert p.train.methods["trades"]["eps"] == pytest.approx(4 / 255)
    with pytest.raises(ConfigError, match=r"train.model.backbone: 'vit' is not allowed; allowed values: .*densenet121"):
        parse_params({"train": {"model": {"backbone": "vit"}}})


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"methd": "pgd_at"}})
    msg = str(err.value)
    assert "train.methd" in msg and "method" in msg and "epochs" in msg


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"method": "magic"}})
    assert "train.method" in str(err.value)
    assert "standard" in str(err.value) and "pgd_at" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"data": {"split": {"train": 0.5, "val": 0.2, "test": 0.2}}}, "data.split"),
        ({"train": {"methods": {"pgd_at": {"eps": "8/0"}}}}, "train.methods.pgd_at.eps"),
        ({"train": {"methods": {"pgd_at": {"eps": "-1/255"}}}}, "train.methods.pgd_at.eps"),
        ({"register": {"gate_eps": "16/255"}}, "register.gate_eps"),
        ({"register": {"gate_attack": "cw_l2"}}, "register.gate_attack"),
        ({"evaluate": {"attacks": [{"name": "pgd", "norm": "l3"}]}}, "evaluate.attacks[0].norm"),
        ({"train": {"hflip": "yes"}}, "train.hflip"),
        ({"evaluate": {"attacks": [{"name": "deepfool"}]}}, "evaluate.attacks[0].name"),
        ({"evaluate": {"attacks": [{"name": "square", "norm": "l2"}]}}, "evaluate.attacks[0].norm"),
        ({"evaluate": {"attacks": [{"name": "fgsm", "steps": 3}]}}, "evaluate.attacks[0].steps"),
        ({"advgen": {"attacks": [{"name": "pgd", "n_queries": 3}]}}, "advgen.attacks[0].n_queries"),
        ({"evaluate": {"shifts": {"names": ["fog"]}}}, "evaluate.shifts.names"),
        ({"evaluate": {"shifts": {"severities": [6]}}}, "evaluate.shifts.severities"),
        ({"evaluate": {"masking": {"n_points": 2}}}, "evaluate.masking.n_points"),
        # values that pass a type check and break a run later, or switch a gate off (issue 14)
        ({"validation": {"max_quarantine_fraction": float("nan")}}, "validation.max_quarantine_fraction"),
        ({"validation": {"min_class_fraction": float("inf")}}, "validation.min_class_fraction"),
        ({"data": {"split": {"train": float("nan"), "val": 0.2, "test": 0.2}}}, "data.split.train"),
        ({"validation": {"max_quarantine_fraction": 1.5}}, "validation.max_quarantine_fraction"),
        ({"seed": 2**70}, "seed"),
        ({"seed": 2**32}, "seed"),  # numpy's seeding stops at 2**32 - 1
        ({"data": {"synthetic": {"seed": -1}}}, "data.synthetic.seed"),
        ({"evaluate": {"intervals": {"bootstrap_seed": 2**40}}}, "evaluate.intervals.bootstrap_seed"),
        ({"evaluate": {"attacks": [{"name": "pgd", "eps": [8]}]}}, "evaluate.attacks[0].eps"),  # 8, not 8/255
        ({"advgen": {"attacks": [{"name": "fgsm", "eps": [1.5]}]}}, "advgen.attacks[0].eps"),
        ({"register": {"gates": [{"name": "g", "metric": "clean.accuracy", "lower_bound": 90}]}},
         "register.gates[0].lower_bound"),  # 90 (percent) for 0.9
        ({"register": {"gates": [{"name": "g", "metric": "clean.accuracy", "upper_bound": float("nan")}]}},
         "register.gates[0].upper_bound"),
        ({"register": {"gates": [{"name": "g", "metric": "clean.accuracy", "lower_bound": 0.5, "max_regression": 2}]}},
         "register.gates[0].max_regression"),
    ],
)
def test_bad_values_name_their_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_params(raw)


def test_the_largest_seed_and_the_largest_linf_budget_are_accepted():
    p = parse_params({"seed": 2**32 - 1, "evaluate": {"attacks": [{"name": "pgd", "eps": [1.0, "8/255"]}]}})
    assert p.seed == 2**32 - 1 and p.evaluate.attacks[0].eps[0] == 1.0


def test_a_key_written_twice_is_refused_naming_it_and_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys without a word; params.yaml must not."""
    from medrobust.params import params_from_text

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 3\n  method: trades\n  epochs: 5\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and "duplicate key 'epochs' (first on line 2)" in str(err.value)
    assert "line 4" in str(err.value)
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        params_from_text('{"seed": 1, "seed": 2}')  # the Kubeflow tasks' JSON form too


def test_eps_fractions():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps(0.5) == 0.5
    p = parse_params({"evaluate": {"attacks": [{"name": "pgd", "eps": "8/255"}]}})
    assert p.evaluate.attacks[0].eps == (pytest.approx(8 / 255),)


def test_load_params_reports_file_and_key(tmp_path):
    path = write_params(tmp_path / "params.yaml", {"seed": 1, "bogus": 2})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and "'bogus'" in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_attack_errors_list_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        parse_params({"evaluate": {"attacks": [{"name": "deepfool"}]}})
    assert "autoattack" in str(err.value) and "pgdl2" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_params({"evaluate": {"attacks": [{"name": "fgsm", "steps": 3}]}})
    assert "takes no 'steps'" in str(err.value)


def test_the_old_data_dicom_max_pixels_is_refused_with_where_it_moved(tmp_path):
    """``data.dicom.max_pixels`` limits every image format now, as ``data.max_pixels`` (issue 14)."""
    with pytest.raises(ConfigError, match=r"data\.dicom\.max_pixels is now data\.max_pixels"):
        load_params(write_params(tmp_path / "params.yaml", {"data": {"dicom": {"max_pixels": 1000}}}))
    assert load_params(write_params(tmp_path / "ok.yaml", {"data": {"max_pixels": 1000}})).data.max_pixels == 1000
