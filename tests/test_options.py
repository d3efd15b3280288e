"""Method options: typed from YAML/--set, unknown ones refused, the config file's model honoured."""

import math

import pytest

from safeedit.errors import ConfigError, SafeEditError, UserError
from safeedit.methods import DINMConfig, get_method
from safeedit.methods.options import choose_model, coerce_options, parse_set_options, read_config_file


def test_set_values_take_the_declared_type():
    # YAML 1.1 reads 1e-5 and 1e30 (no dot) as strings: they must still become floats
    options = coerce_options(DINMConfig, parse_set_options(["lr=1e-5", "steps=3", "suffix=null", "fast=false",
                                                            "layer=2.0", "kl_weight=1"]), "--set")
    assert options == {"lr": 1e-5, "steps": 3, "suffix": None, "fast": False, "layer": 2, "kl_weight": 1.0}
    assert isinstance(options["kl_weight"], float) and isinstance(options["layer"], int)
    assert coerce_options(DINMConfig, parse_set_options(["lr=1e30"]), "--set")["lr"] == 1e30
    assert get_method("dinm", lr="5e-4").config.lr == 5e-4


@pytest.mark.parametrize("item, message", [
    ("lr=fast", "option lr"), ("steps=2.5", "option steps"), ("fast=maybe", "option fast"),
    ("lr=nan", "NaN"), ("learning_rate=1", "learning_rate"),
])
def test_bad_values_name_the_option(item, message):
    with pytest.raises(ConfigError, match=message):
        coerce_options(DINMConfig, parse_set_options([item]), "--set")


def test_set_needs_key_value():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(["lr"])


def test_config_file_model_is_the_default_and_a_mismatch_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("method: dinm\nmodel: org/big-model\nlr: 1e-5\n")
    config = read_config_file(path)
    assert config.model == "org/big-model" and config.options == {"lr": "1e-5"}
    assert choose_model(None, config, "smollm2-135m") == "org/big-model"
    assert choose_model("org/big-model", config, "smollm2-135m") == "org/big-model"
    assert choose_model(None, None, "smollm2-135m") == "smollm2-135m"
    with pytest.raises(ConfigError, match="holds values for model 'org/big-model'"):
        choose_model("smollm2-135m", config, "smollm2-135m")
    assert get_method("dinm", config).config.lr == 1e-5
    with pytest.raises(ConfigError, match="not 'none'"):
        get_method("none", config)


def test_error_classes_share_one_base_and_exit_codes():
    assert issubclass(ConfigError, UserError) and issubclass(UserError, SafeEditError)
    assert ConfigError.exit_code == 2 and SafeEditError.exit_code == 1
    assert issubclass(ConfigError, ValueError)  # callers catching ValueError keep working
    assert not math.isnan(DINMConfig().lr)
