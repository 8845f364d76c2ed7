"""The command line agrees with itself and with the library: what a listing prints, a command accepts;
a setting has one spelling everywhere; a run can be repeated from its config.yaml; importing the
package changes nothing in the caller's process; no module imports from a layer above its own."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_class_folders
from transferlab.cli import build_parser, main
from transferlab.models import backbone_spec
from transferlab.train import build_strategy

PACKAGE = Path(__file__).parent.parent / "transferlab"
# Data flows down this list: a module may import from its own layer or the ones before it.
LAYERS = ["core", "runtime", "data", "models", "train", "reporting", "experiments", "inference", "cli"]
SHARED = {"--out", "--device", "--quiet", "--split-seed", "--batch-size", "--max-epochs"}
TRAINING_COMMANDS = ["compare", "train", "demo", "sweep", "transferability"]
# Commands that train nothing offer no training option (backbones --benchmark times forward passes).
NOT_TRAINING = ["backbones", "predict", "export", "data", "classify", "strategies"]
RUN_COMMANDS = ["compare", "train", "demo"]


def _commands() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def _options(sub) -> dict[str, str]:
    return {flag: action.dest for action in sub._actions for flag in action.option_strings}


def _listed(capsys, command: str) -> list[str]:
    assert main([command, "--json"]) == 0
    return [row["name"] for row in json.loads(capsys.readouterr().out)]


def test_every_listed_backbone_is_accepted(capsys):
    names = _listed(capsys, "backbones")
    assert "efficientnet_lite0" in names and "small_cnn" in names
    for name in names:
        for command in ("train", "compare", "sweep"):
            args = build_parser().parse_args([command, "--data", "digits", "--backbone", name])
            assert args.backbone == name
        spec = backbone_spec(name)  # resolved without weights or a network
        assert spec.groups and spec.num_features > 0, name


def test_every_listed_strategy_is_accepted(capsys):
    assert main(["strategies", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [row["name"] for row in rows]
    assert {"scratch", "features", "probe", "finetune", "chain-thaw", "gradual"} <= set(names)
    # What each does is a whole sentence (a docstring's first paragraph, not its first line).
    assert all(row["description"].endswith(".") and "\n" not in row["description"] for row in rows)
    groups = backbone_spec("efficientnet_lite0").groups
    for name in names:
        assert build_parser().parse_args(["train", "--data", "digits", "--strategy", name]).strategy == name
        args = build_parser().parse_args(["compare", "--data", "digits", "--strategies", name])
        assert args.strategies == (name,)
        assert build_strategy(name, groups).phases


def test_shared_options_have_one_spelling():
    commands = _commands()
    dests: dict[str, set[str]] = {}
    for name, sub in commands.items():
        options = _options(sub)
        for flag, dest in options.items():
            dests.setdefault(flag, set()).add(dest)
        assert not {"--seed", "--batch", "--epochs", "--output", "--no-pretrained"} & set(options), name
        if name in TRAINING_COMMANDS:
            assert SHARED <= set(options), (name, SHARED - set(options))
        if name in NOT_TRAINING:
            training = {"--max-epochs", "--head-lr", "--body-epochs", "--views", "--class-weights", "--strategies"}
            assert not training & set(options), (name, training & set(options))
        if name in RUN_COMMANDS:
            assert {"--seeds", "--resume", "--config", "--data", "--backbone"} <= set(options), name
    assert all(len(d) == 1 for d in dests.values()), {f: d for f, d in dests.items() if len(d) > 1}
    assert "--split-seed" in _options(commands["data"]) and "--out" in _options(commands["export"])


@pytest.mark.parametrize("argv,flag", [
    (["compare", "--data", "digits", "--batch-size", "0"], "--batch-size"),
    (["compare", "--data", "digits", "--ema", "1.5"], "--ema"),  # above its maximum
    (["sweep", "--data", "digits", "--per-class", "1,x"], "--per-class"),
    (["transferability", "--data", "digits", "--cuts", "3..1"], "--cuts"),
    (["compare"], "--data"),
])
def test_bad_values_are_refused_naming_the_option(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_a_run_is_repeated_from_its_config_yaml(tmp_path):
    from transferlab.experiments.compare import Experiment, load_experiment

    data = make_class_folders(tmp_path / "data", n_per_class=8, n_classes=2)
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "features,probe",
                 "--max-epochs", "3", "--batch-size", "8", "--head-hidden", "16", "--out", str(first), "--quiet"]) == 0
    exp = load_experiment(first / "config.yaml")
    assert isinstance(exp, Experiment) and exp.train.head.head_hidden == (16,) and exp.compare.seeds == 1
    assert main(["compare", "--config", str(first / "config.yaml"), "--out", str(again), "--quiet"]) == 0
    assert (again / "config.yaml").read_text() == (first / "config.yaml").read_text()
    runs = [json.loads((d / "metrics.json").read_text())["runs"] for d in (first, again)]
    assert [(r["strategy"], r["test_acc"], r["test_loss"]) for r in runs[0]] == \
        [(r["strategy"], r["test_acc"], r["test_loss"]) for r in runs[1]]
    # An option given beside --config wins over the file.
    override = tmp_path / "override"
    assert main(["compare", "--config", str(first / "config.yaml"), "--strategies", "probe", "--out", str(override),
                 "--quiet"]) == 0
    assert load_experiment(override / "config.yaml").compare.strategies == ("probe",)


NO_SIDE_EFFECTS = """
import sys
import PIL.Image
limit = PIL.Image.MAX_IMAGE_PIXELS
import transferlab
from transferlab import DataConfig, TrainConfig, ModelConfig, load_dataset, make_splits
from transferlab.runtime import allocator
from transferlab.train import prepare
ds = load_dataset("digits:3")
prepare(ds, make_splits(ds), TrainConfig(ModelConfig(backbone="small_cnn", image_size=16)), quiet=True)
import transferlab.cli, transferlab.experiments.sweep, transferlab.reporting
print(PIL.Image.MAX_IMAGE_PIXELS == limit, allocator._allocator_tuned, "matplotlib.pyplot" in sys.modules)
"""


def test_importing_and_using_the_library_changes_no_process_settings(tmp_path):
    env = {"PATH": "", "TRANSFERLAB_HOME": str(tmp_path)}
    if "PYTHONPATH" in os.environ:  # where the package is found without being installed
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    out = subprocess.run([sys.executable, "-c", NO_SIDE_EFFECTS], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["True", "False", "False"]


def test_python_dash_m_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "transferlab", "strategies", "--json"], capture_output=True, text=True,
                         check=True)
    assert "chain-thaw" in {row["name"] for row in json.loads(out.stdout)}


def _imported_layers(path: Path) -> set[str]:
    """The transferlab subpackages a module imports from."""
    found = set()
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(parts[:-1])[: len(parts) - node.level]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            if len(target) > 1 and target[0] == "transferlab":
                found.add(target[1])
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if len(rel) < 2:
            continue  # the package's __init__ and __main__ sit on top of everything
        own = LAYERS.index(rel[0])
        above = {layer for layer in _imported_layers(path) if layer in LAYERS and LAYERS.index(layer) > own}
        assert not above, f"{path.relative_to(PACKAGE)} imports from {above}"


def test_every_section_of_the_settings_is_importable_from_the_package():
    import dataclasses

    import transferlab

    sections = {type(getattr(transferlab.TrainConfig(), f.name)) for f in dataclasses.fields(transferlab.TrainConfig)}
    assert {s.__name__ for s in sections} <= set(transferlab.__all__)
    assert all(getattr(transferlab, s.__name__) is s for s in sections)
