"""The verb registry, the helpers every verb shares, and studies that neither parse arguments nor print."""

import ast
import os
import subprocess
import sys
import types

import pytest
from conftest import ROOT

from mgrit_resnet import cli
from mgrit_resnet.cli import VERBS, build_parser, main
from mgrit_resnet.cli._common import check_output, progress, write_json

STUDIES = sorted((ROOT / "mgrit_resnet" / "studies").glob("*.py"))


def parser_verbs(parser):
    (subparsers,) = [a for a in parser._actions if a.dest == "verb"]
    return list(subparsers.choices)


def test_the_registry_is_the_parsers_verbs_and_every_verb_module_has_its_parts():
    assert parser_verbs(build_parser()) == list(VERBS)
    assert list(VERBS) == ["solve", "train", "compare", "sweep", "plot", "verify", "predict", "tune", "config", "info"]
    for name, verb in VERBS.items():
        assert verb.__name__ == f"mgrit_resnet.cli.{name}", "one module per verb, named after it"
        assert isinstance(verb.HELP, str) and verb.HELP
        assert callable(verb.add_arguments) and callable(verb.prepare)


def test_adding_a_verb_is_one_entry_in_the_registry(monkeypatch, capsys):
    def add_arguments(parser):
        parser.add_argument("--who", default="world")

    def prepare(args, comm, rank):
        if args.who == "nobody":
            raise ValueError("--who: nobody is there")
        return lambda: print(f"hello {args.who}") or 7

    monkeypatch.setitem(VERBS, "hello", types.SimpleNamespace(HELP="say hello", add_arguments=add_arguments, prepare=prepare))
    assert "hello" in parser_verbs(build_parser())
    assert main(["hello", "--who", "there"]) == 7
    assert capsys.readouterr().out == "hello there\n"
    assert main(["hello", "--who", "nobody"]) == cli.EXIT_BAD_INPUT
    assert "mgrit-resnet: error: --who: nobody is there" in capsys.readouterr().err


def test_python_m_lists_every_verb_without_importing_torch():
    run = [sys.executable, "-m", "mgrit_resnet", "--help"]
    help_text = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in VERBS:
        assert f"    {name} " in help_text, name
    code = "import sys; from mgrit_resnet.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_studies_neither_parse_arguments_nor_print_nor_prepare_verbs(path):
    tree = ast.parse(path.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "argparse" not in imported
    assert not any("cli" in name.split(".") for name in imported), "studies never import the command line"
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "print" not in calls
    functions = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert not [name for name in functions if name.startswith("prepare")]


# ---------------------------------------------------------------------- the output check
def refusal(option, path, folder):
    with pytest.raises(ValueError) as error:
        check_output(option, path, folder=folder)
    return str(error.value)


def test_a_file_option_and_a_folder_option_are_refused_alike(tmp_path, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    as_file = refusal("--json", blocker / "r.json", folder=False)
    as_folder = refusal("--out", blocker / "run", folder=True)
    assert as_file == f"--json: cannot create {str(blocker / 'r.json')!r}: {str(blocker)!r} is not a writable folder"
    assert as_folder == f"--out: cannot create {str(blocker / 'run')!r}: {str(blocker)!r} is not a writable folder"

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if os.fspath(path) == str(locked) else real_access(path, mode))
    as_file = refusal("--json", locked / "r.json", folder=False)
    as_folder = refusal("--out", locked / "run", folder=True)
    assert as_file.replace("--json", "--out").replace("r.json", "run") == as_folder
    assert as_folder.endswith(f"{str(locked)!r} is not a writable folder")


def test_a_missing_folder_is_refused_for_a_file_and_created_for_a_folder(tmp_path):
    missing = tmp_path / "missing"
    assert refusal("--json", missing / "r.json", folder=False) == f"--json: the folder {str(missing)!r} does not exist"
    check_output("--out", missing / "deeper" / "run", folder=True)  # created, with its parents, when the job starts
    check_output("--json", tmp_path / "r.json")
    check_output("--json", None)
    (tmp_path / "taken").write_text("")
    assert refusal("--out", tmp_path / "taken", folder=True) == f"--out: {str(tmp_path / 'taken')!r} exists and is not a folder"


def test_the_verbs_use_the_one_check(tmp_path, capsys):
    tiny, dahlquist = str(ROOT / "examples" / "tiny_train.toml"), str(ROOT / "examples" / "dahlquist.toml")
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    for verb, option in [("train", "--out"), ("compare", "--out"), ("verify", "--json"), ("tune", "--json"), ("solve", "--plot")]:
        args = [verb, dahlquist if verb == "solve" else tiny, option, str(blocker / "x")] + (["--ranks", "2"] if verb == "tune" else [])
        assert main(args) == cli.EXIT_BAD_INPUT
        assert f"{option}: cannot create {str(blocker / 'x')!r}: {str(blocker)!r} is not a writable folder" in capsys.readouterr().err, verb


# ---------------------------------------------------------------------- JSON and progress
def test_json_is_written_on_rank_0_only(tmp_path):
    assert write_json(tmp_path / "a.json", {"x": [1, 2]}, rank=1) is None and not (tmp_path / "a.json").exists()
    assert write_json(None, {"x": 1}, rank=0) is None
    assert write_json(tmp_path / "a.json", {"x": [1, 2]}, rank=0) == tmp_path / "a.json"
    assert (tmp_path / "a.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'


def test_progress_lines_come_from_rank_0_only(capsys):
    for rank in (0, 1):
        with progress(rank, 3, "test", "it") as bar:
            bar.update()
            bar.goto(2, total=4, loss="0.1")
            bar.write(f"line from rank {rank}")
    captured = capsys.readouterr()
    assert captured.out == "line from rank 0\n"
    assert captured.err == "", "no bar when stderr is not a terminal"
