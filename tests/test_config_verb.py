"""``mgrit-resnet config``: the resolved config as TOML that loads back to itself, each key with its source."""

import tomllib

import pytest
from conftest import ROOT

import mgrit_resnet as mr
from mgrit_resnet.cli import main

CONFIG = ROOT / "examples" / "tiny_train.toml"


def test_config_prints_the_resolved_config_with_the_source_of_every_key(capsys, tmp_path):
    assert main(["config", str(CONFIG), "--set", "train.lr=0.05", "--set", "network.options.width=3", "--set", "network.kind=module",
                 "--set", "network.module=examples/user_block.py:build"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    lines = {line.split("=")[0].strip(): line for line in text.splitlines() if "=" in line and not line.startswith("#")}
    assert lines["lr"].endswith("# --set") and lines["depth"].endswith("# file") and lines["cycle"].endswith("# default")
    copy = tmp_path / "resolved.toml"
    copy.write_text(text)
    tomllib.loads(text)
    again = mr.load_config(copy)
    expected = mr.load_config(CONFIG, {"train.lr": 0.05, "network.options.width": 3, "network.kind": "module",
                                       "network.module": "examples/user_block.py:build"})  # fmt: skip
    assert again.as_dict() == expected.as_dict()


def test_config_refuses_bad_input_like_every_verb(capsys):
    assert main(["config", str(CONFIG), "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"]])
def test_config_is_listed(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    assert "config" in capsys.readouterr().out
