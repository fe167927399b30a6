"""Your own network in the config: network.module and network.options, data.path, the config.toml round trip, the builder."""

import textwrap
import tomllib

import pytest
from conftest import ROOT
from torch import nn

from mgrit_resnet.config import ConfigError, get_dotted, load_config, parse_overrides, toml_value
from mgrit_resnet.nn.builder import load_builder, network_parts
from mgrit_resnet.training.loop import write_config

EXAMPLE = ROOT / "examples" / "user_block.toml"
MODULE = {"network.kind": "module", "network.module": "examples/user_block.py:build"}


def build(options):
    """A builder given from Python."""
    return (lambda layer: nn.Linear(options.get("width", 2), options.get("width", 2))), None, None


# --- config -----------------------------------------------------------------------------------------------------------


def test_the_example_config_reads_its_options_table():
    cfg = load_config(EXAMPLE)
    assert cfg.network.kind == "module" and cfg.network.module == "examples/user_block.py:build"
    assert cfg.network.options == {"width": 4, "groups": 2}


def test_defaults_and_dotted_overrides_into_the_options_table():
    assert load_config(None).network.module == "" and load_config(None).network.options == {}
    cfg = load_config(EXAMPLE, parse_overrides(["network.options.width=8", "network.options.deep.a=1", "network.options.act=gelu"]))
    assert cfg.network.options == {"width": 8, "groups": 2, "deep": {"a": 1}, "act": "gelu"}
    again = cfg.with_overrides({"network.options.width": 16})
    assert again.network.options["width"] == 16 and cfg.network.options["width"] == 8  # a copy, not the same table
    assert cfg.with_overrides({"network.options": {"x": 1}}).network.options == {"x": 1}


def test_get_dotted_reads_keys_and_options():
    cfg = load_config(EXAMPLE, {"network.options.deep.a": 1})
    assert get_dotted(cfg, "network.depth") == 8 and get_dotted(cfg, "network.options.width") == 4
    assert get_dotted(cfg, "network.options.deep.a") == 1
    for key in ("network.options.nope", "network.depth.x", "nowhere.x", "network"):
        with pytest.raises(ConfigError, match="no config key"):
            get_dotted(cfg, key)


def test_a_callable_module_from_python():
    cfg = load_config(EXAMPLE, overrides={"network.module": build})
    assert cfg.network.module is build
    assert cfg.with_overrides({"network.depth": 4}).network.module is build


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"network.kind": "module"}, r"network.kind = 'module' needs network.module"),
        ({"network.module": "examples/user_block.py:build"}, r"network.module is set .* network.kind = 'dense'"),
        ({"network.options": {"width": 4}}, r"network.options is set but network.kind = 'dense'"),
        ({**MODULE, "network.module": "examples/user_block.py"}, r"network.module must be \"path/to/file.py:NAME\""),
        ({**MODULE, "network.module": 3}, r"network.module must be"),
        ({**MODULE, "network.options": [1, 2]}, r"network.options must be a table"),
        ({**MODULE, "network.width.x": 3}, r"unknown config key 'network.width.x'"),
        ({**MODULE, "network.opts": {}}, r"unknown config key 'network.opts'"),
        ({"mgrit.levels": {"a": 1}}, r"mgrit.levels must be an integer"),
        ({"data.name": "npz"}, r"data.name = 'npz' needs data.path"),
        ({"data.path": "d.npz"}, r"data.path is set .* data.name = 'peaks'"),
        ({"data.name": "npz", "data.path": 3}, r"data.path must be a string"),
    ],
)
def test_bad_keys_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_an_options_key_below_a_value_is_an_error():
    with pytest.raises(ConfigError, match=r"network.options.width is not a table"):
        load_config(EXAMPLE, {"network.options.width.x": 1})


def test_options_table_only_under_network(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[data]\nname = "peaks"\n[data.options]\nx = 1\n')
    with pytest.raises(ConfigError, match=r"unknown config key 'data.options'"):
        load_config(path)


# --- config.toml round trip -------------------------------------------------------------------------------------------


def test_config_toml_round_trips_the_options_table(tmp_path):
    options = {"width": 8, "name": "a b", "list": [1, 2.5, "x"], "nested": {"k": True}, "odd key": 1e-10}
    cfg = load_config(EXAMPLE, {"network.options": options, "data.name": "npz", "data.path": "d.npz"})
    write_config(cfg, tmp_path / "config.toml")
    text = (tmp_path / "config.toml").read_text()
    assert "[network.options]" in text
    assert load_config(tmp_path / "config.toml").as_dict() == cfg.as_dict()


def test_config_toml_names_a_callable_module_and_comments_python_objects(tmp_path):
    cfg = load_config(EXAMPLE, {"network.module": build, "network.options.activation": nn.ReLU, "network.options.w": 2})
    write_config(cfg, tmp_path / "config.toml", data_given=True)
    text = (tmp_path / "config.toml").read_text()
    assert 'module = "test_config_module:build"  # given from Python' in text
    assert "# activation = " in text and "given from Python; not a TOML value" in text
    assert "data given from Python" in text
    read = tomllib.loads(text)
    assert read["network"]["module"] == "test_config_module:build" and read["network"]["options"] == {"width": 4, "groups": 2, "w": 2}


def test_toml_value_of_tables_and_callables():
    assert toml_value({"a": 1, "b c": [True, "x"]}) == '{a = 1, "b c" = [true, "x"]}'
    assert toml_value(build) == '"test_config_module:build"'


# --- the builder ------------------------------------------------------------------------------------------------------


def write(tmp_path, text, name="user.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_example_builder_gives_the_three_parts(monkeypatch):
    monkeypatch.chdir(ROOT)
    make_block, opening, closing = network_parts(load_config(EXAMPLE).network)
    assert isinstance(make_block(0), nn.Module) and isinstance(opening, nn.Conv2d) and isinstance(closing, nn.Sequential)
    assert opening.out_channels == 4


def test_builders_from_a_package_module_and_from_python(tmp_path, monkeypatch):
    write(tmp_path, "from torch import nn\ndef build(o):\n    return (lambda n: nn.Identity()), None, nn.Identity()\n", "mymod_xyz.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert network_parts({"module": "mymod_xyz:build", "options": {}})[1] is None
    make_block, _, _ = network_parts({"module": build, "options": {"width": 3}})
    assert make_block(0).in_features == 3


def test_options_reach_the_builder_as_a_copy(tmp_path):
    seen = []

    def builder(options):
        seen.append(options)
        options["changed"] = True
        return (lambda n: nn.Identity()), None, None

    options = {"width": 3}
    network_parts({"module": builder, "options": options})
    assert seen == [{"width": 3, "changed": True}] and options == {"width": 3}


@pytest.mark.parametrize(
    "source, ref, error, message",
    [
        (None, "missing.py:build", ValueError, r"network.module = '.*missing.py:build': no file '.*missing.py'"),
        ("def other(o):\n    pass\n", "{path}:build", ValueError, r"has no attribute 'build' \(it defines: other\)"),
        ("build = 3\n", "{path}:build", TypeError, r"build is a int, not a function build\(options\)"),
        ("import not_a_module_xyz\n", "{path}:build", ImportError, r"running '.*user.py' failed: ModuleNotFoundError: .*not_a_module_xyz"),
        ("def build(o:\n", "{path}:build", ImportError, r"running .* failed: SyntaxError"),
        ("raise RuntimeError('boom')\n", "{path}:build", ImportError, r"failed: RuntimeError: boom"),
        (None, "not_a_package_xyz.sub:build", ImportError, r"no module named 'not_a_package_xyz'"),
        (
            "def build(o):\n    return 1, 2\n",
            "{path}:build",
            TypeError,
            r"must return \(make_block, opening, closing\); got a tuple of length 2",
        ),
        ("def build(o):\n    return None\n", "{path}:build", TypeError, r"must return \(make_block, opening, closing\); got None"),
        ("def build(o):\n    return 1, None, None\n", "{path}:build", TypeError, r"make_block, the first result .* must be callable"),
        (
            "def build(o):\n    return print, 'stem', None\n",
            "{path}:build",
            TypeError,
            r"opening must be a torch.nn.Module or None; got str",
        ),
        ("def build(o):\n    return print, None, 3\n", "{path}:build", TypeError, r"closing must be a torch.nn.Module or None; got int"),
    ],
)
def test_builder_errors_name_the_key_and_the_problem(tmp_path, source, ref, error, message):
    path = write(tmp_path, source) if source is not None else None
    with pytest.raises(error, match=message) as caught:
        network_parts({"module": ref.format(path=path), "options": {}})
    assert "network.module" in str(caught.value)


def test_an_empty_module_is_an_error():
    with pytest.raises(ValueError, match=r"network.kind = 'module' needs network.module"):
        load_builder("")
