"""A YAML scalar where the config wants a list is an error naming the file and the field (issue 19, item 6):
`known_attacks: A07` used to become the set {'A', '0', '7'}, so the known / unseen breakdown was silently wrong."""

import pytest
import yaml

from training.encoders.ssl_config import load_ssl_yaml
from training.trainer.config import TrainConfig, load_yaml_config, parse_train_config


def write_config(tmp_path, **fields):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data_root": "/x", **fields}))
    return path


@pytest.mark.parametrize(
    "field, value",
    [("known_attacks", "A07"), ("target_modules", "q_proj"), ("layers_to_transform", 3), ("class_weights", 0.5)],
)
def test_a_scalar_for_a_list_field_is_refused_naming_file_and_field(tmp_path, field, value):
    path = write_config(tmp_path, **{field: value})
    message = rf"run\.yaml: `{field}` must be a list .*\[.*\].*, got {value!r}"
    with pytest.raises(ValueError, match=message):
        load_yaml_config(path)
    with pytest.raises(ValueError, match=message):
        parse_train_config(["--config", str(path)])


@pytest.mark.parametrize(
    "field, value, wrong",
    [
        ("known_attacks", ["A07", 7], "7"),
        ("layers_to_transform", [0, 1.5], "1.5"),
        ("layers_to_transform", [True], "True"),
        ("class_weights", [1.0, "heavy"], "'heavy'"),
        ("target_modules", [["q_proj"]], r"\['q_proj'\]"),
    ],
)
def test_a_list_element_of_the_wrong_type_is_refused(tmp_path, field, value, wrong):
    path = write_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=rf"run\.yaml: `{field}` .* {wrong}"):
        load_yaml_config(path)


def test_lists_null_and_integer_weights_are_accepted(tmp_path):
    path = write_config(
        tmp_path, known_attacks=["A07", "A08"], layers_to_transform=None, class_weights=[1, 2.5], target_modules=[]
    )
    config = parse_train_config(["--config", str(path)])
    assert config.known_attacks == ["A07", "A08"] and config.layers_to_transform is None
    assert config.class_weights == [1, 2.5]


def test_a_scalar_given_in_code_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"`known_attacks` must be a list"):
        TrainConfig(data_root="/x", known_attacks="A07")


def test_the_ssl_config_refuses_a_scalar_for_a_list_field_too(tmp_path):
    path = tmp_path / "ssl.yaml"
    path.write_text("conv_dim: 32\n")
    with pytest.raises(ValueError, match=r"ssl\.yaml: `conv_dim` must be a list"):
        load_ssl_yaml(path)
