"""One name per setting: every option from its flag through config.yaml to the dataclass the code reads,
and every option changes what it controls (no dead options). Every section refuses bad values, from
the Python API and from config.yaml alike, naming the setting."""

from __future__ import annotations

import dataclasses
import enum
import math
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_class_folders
from transferlab.cli import build_parser
from transferlab.cli.options import config_from_args
from transferlab.core.config import SettingError, flag_of, leaf_fields, to_dict
from transferlab.core.errors import DataError, TransferlabError
from transferlab.data import load_dataset, make_splits
from transferlab.data.pool import attach_pool
from transferlab.experiments import compare as compare_module
from transferlab.experiments.experiment import CompareConfig, Experiment, load_experiment
from transferlab.models import backbone_spec
from transferlab.train import DataConfig, RunResult, TrainConfig, build_strategy, list_strategies, prepare
from transferlab.train import run as run_module
from transferlab.train.config import SECTIONS

# A value other than the default for every option, as typed on the command line.
OTHER = {"source": "digits:5", "backbone": "test_tiny", "device": "cpu", "strategies": "probe,finetune",
         "head_hidden": "16", "image_size": "24", "max_epochs": "2", "patience": "1", "time_budget": "30",
         "parallel": "data", "unlabelled": "pool", "pseudo_precision": "0.9", "exclude": "exclude.csv"}


def _fields() -> list[tuple[dataclasses.Field, object, type, str]]:
    """Every leaf option of an experiment: (field, type, owning section, dotted config.yaml key)."""
    out = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                out.append((f, hints[f.name], cls, prefix + f.name))
    walk(Experiment, "")
    return out


FIELDS = _fields()


def _other_text(f: dataclasses.Field) -> str | None:
    """The command-line text of a value other than the default (None: a switch)."""
    if f.name in OTHER:
        return OTHER[f.name]
    default, meta = f.default, f.metadata
    if isinstance(default, bool):
        return None
    if meta.get("choices"):
        shown = default.value if isinstance(default, enum.Enum) else default
        return next(c for c in meta["choices"] if c != shown)
    if isinstance(default, int):
        return str(default + 1)
    if isinstance(default, float):
        top = meta.get("maximum")
        return str(default / 2 if default else (top / 2 if top else 0.5))
    raise AssertionError(f"no other value known for {f.name}")


def _changed(f: dataclasses.Field) -> tuple[Experiment, list[str]]:
    """The experiment built by ``compare`` with this one option set otherwise, and the argv used."""
    text = _other_text(f)
    argv = ["compare", "--data", "digits"] if f.name != "source" else ["compare"]
    if text is None:
        argv.append(flag_of(f) if not f.default else "--no-" + f.name.replace("_", "-"))
    else:
        argv += [flag_of(f), text]
    args = build_parser().parse_args(argv)
    exp = Experiment(config_from_args(DataConfig, args), config_from_args(TrainConfig, args),
                     config_from_args(CompareConfig, args))
    return exp, argv


def test_every_option_is_a_flag_of_compare_under_its_own_name():
    compare_parser = next(a for a in build_parser()._actions if a.dest == "command").choices["compare"]
    dests = {a.dest for a in compare_parser._actions}
    for f, _, _, key in FIELDS:
        assert f.name in dests, f"{key} has no --{f.name.replace('_', '-')} option"
    # Leaf names are unique: a flat namespace (argparse) rebuilds the tree.
    names = [f.name for f, _, _, _ in FIELDS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("key", [k for _, _, _, k in FIELDS])
def test_each_flag_reaches_its_field_and_survives_config_yaml(key, tmp_path):
    f = next(f for f, _, _, k in FIELDS if k == key)
    exp, argv = _changed(f)
    default = Experiment(DataConfig("digits"))
    value = _lookup(exp, key)
    assert value != _lookup(default, key) or f.name == "source", (argv, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(exp), sort_keys=False))
    assert load_experiment(path) == exp  # config.yaml holds it under the same key


def _lookup(exp: Experiment, key: str) -> object:
    value: object = exp
    for part in key.split("."):
        value = getattr(value, part)
    return value


# ---------------------------------------------------------------------------------------------
# Each option changes what it controls. An observable per option; an option without one (or whose
# observable does not change) fails.

GROUPS = list(backbone_spec("test_tiny").groups)


def _strategies(exp: Experiment) -> dict:
    return {name: build_strategy(name, GROUPS, exp.train) for name in list_strategies()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = make_class_folders(tmp_path_factory.mktemp("vocab") / "data", n_per_class=6, n_classes=2)
    (root / "class_0" / "broken.png").write_bytes(b"not an image")
    make_class_folders(root.parent / "pool", n_per_class=3, n_classes=2, seed=7)  # --unlabelled pool
    for k in range(3):  # copies, for --dedupe
        shutil.copyfile(root / "class_0" / "img_000.png", root / "class_0" / f"copy_{k}.png")
    (root.parent / "exclude.csv").write_text(f"path\n{root / 'class_1' / 'img_001.png'}\n")  # --exclude
    return root


def _data(exp: Experiment, folder: Path) -> object:
    d = exp.data
    source = str(folder) if d.source == "digits" else d.source
    try:
        ds = load_dataset(source, strict=d.strict, exclude=d.exclude and folder.parent / d.exclude)
        splits = make_splits(ds, seed=d.split_seed)
        ds = attach_pool(ds, d.unlabelled and str(folder.parent / d.unlabelled), source, d.strict)
    except DataError as exc:
        return str(exc)
    return ds.name, len(ds), ds.pool_source, {k: v.tolist() for k, v in splits.items()}


def _copies(exp: Experiment, folder: Path) -> object:
    """The training split compare trains on, after the check for copies (--dedupe)."""
    ds = load_dataset(str(folder))
    cfg = dataclasses.replace(exp.train, model=dataclasses.replace(exp.train.model, backbone="test_tiny"))
    prep = prepare(ds, make_splits(ds), cfg)
    compare_module._check_copies(prep, cfg, exp.data.dedupe, quiet=True)
    return prep.splits["train"].tolist()


def _prepared(exp: Experiment, folder: Path, monkeypatch) -> dict:
    """What ``prepare`` hands the device and torch: Precision.choose's and configure_torch's arguments."""
    seen = {}
    real_choose = run_module.Precision.choose
    monkeypatch.setattr(run_module.Precision, "choose",
                        staticmethod(lambda *a: seen.setdefault("precision", a) and real_choose("cpu")))
    monkeypatch.setattr(run_module, "configure_torch", lambda **kw: seen.setdefault("torch", kw))
    ds = load_dataset(str(folder))
    cfg = dataclasses.replace(exp.train, model=dataclasses.replace(exp.train.model, backbone="test_tiny"))
    prepare(ds, make_splits(ds), cfg)
    return seen


def _batches(exp: Experiment, folder: Path) -> object:
    """The training batches of finetune's whole-model phase and of chain-thaw's first step."""
    ds = load_dataset(str(folder))
    cfg = dataclasses.replace(exp.train, model=dataclasses.replace(exp.train.model, backbone="test_tiny",
                                                                   image_size=16))
    prep = prepare(ds, make_splits(ds), cfg)
    seen = []
    for name, index in (("finetune", 1), ("chain-thaw", 2)):
        strategy = build_strategy(name, GROUPS, cfg)
        model, backbone, _ = run_module._build_model(cfg, strategy, 0, 2)
        inputs = run_module.PhaseInputs(model, prep, cfg, None, quiet=True)
        phase = strategy.phases[index]
        train, _ = inputs.for_phase(phase, pristine=False)
        x, _ = next(iter(train.batches(torch.Generator().manual_seed(0))))
        seen.append((inputs.level(phase), type(train).__name__, tuple(x.shape), train.batch_size, train.balanced,
                     getattr(train, "augment", None), getattr(train, "policy", None),
                     getattr(train, "aspects", None) is not None,
                     tuple(train.tensors.shape) if hasattr(train, "tensors") else None))
    return seen


def _run_context(exp: Experiment, folder: Path, monkeypatch) -> object:
    """The context train_one gives the phases (checkpoint interval, deadline)."""
    class Stop(Exception):
        pass
    seen = {}

    def capture(model, strategy, inputs, ckpt, ctx):
        seen.update(checkpoint_seconds=ctx.checkpoint_seconds, deadline=ctx.deadline is not None)
        raise Stop
    monkeypatch.setattr(run_module, "_run_phases", capture)
    ds = load_dataset(str(folder))
    cfg = dataclasses.replace(exp.train, model=dataclasses.replace(exp.train.model, backbone="test_tiny"))
    with pytest.raises(Stop):
        run_module.train_one(prepare(ds, make_splits(ds), cfg), cfg, "features", 0, folder.parent / "ctx")
    return seen


def _plan(exp: Experiment) -> object:
    """The runs compare would train, after parallel=auto is resolved, and scratch's time budget."""
    resolved = compare_module._resolve_parallel(exp)
    jobs = [(s, seed) for wave in compare_module._waves(exp.compare, exp.train) for s in wave
            for seed in range(exp.compare.seeds)]
    done = [RunResult("features", 0, 0.5, 0.5, 1.0, 1, 12.0)]
    budget = compare_module._equal_compute_budget("scratch", 0, done, exp.train)
    return jobs, resolved.train.runtime.parallel, budget


def _model(exp: Experiment) -> object:
    spec = backbone_spec(exp.train.model.backbone, exp.train.model.image_size)
    cfg = exp.train
    _, _, head = run_module._build_model(dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, backbone="test_tiny")), build_strategy("features", GROUPS), 0, 2)
    return spec.name, spec.data_config["input_size"], head


OBSERVED = {  # option -> what it controls
    **{name: "strategies" for name in (
        "head_lr", "head_epochs", "head_patience", "warmup_epochs", "probe_model", "body_lr", "body_epochs",
        "body_patience", "step_lr", "step_epochs", "step_patience", "body_bn", "body_schedule", "layer_decay",
        "discriminative", "label_smoothing", "ema", "scratch_lr", "scratch_epochs", "scratch_patience", "mixup",
        "cutmix", "class_weights", "max_epochs", "patience", "self_train_rounds", "pseudo_precision",
        "student_rounds", "student_share", "surrogate_objective", "surrogate_size", "surrogate_epochs",
        "surrogate_minutes", "surrogate_lr")},
    **{name: "model" for name in ("backbone", "image_size", "head_hidden", "dropout")},
    **{name: "data" for name in ("source", "split_seed", "strict", "unlabelled", "exclude")},
    "dedupe": "copies",
    **{name: "batches" for name in ("batch_size", "augment", "views", "augment_policy", "crop_from",
                                    "balanced_sampler", "prefix_cache")},
    **{name: "prepared" for name in ("device", "fp32", "fold_bn", "compile", "deterministic")},
    **{name: "context" for name in ("checkpoint_seconds", "time_budget")},
    **{name: "plan" for name in ("strategies", "seeds", "parallel", "equal_compute")},
}


def test_every_option_has_an_observed_effect():
    assert set(OBSERVED) == {f.name for f, _, _, _ in FIELDS}, \
        "an option was added or removed: say here what it controls, and let the test below show it"


@pytest.mark.parametrize("name", sorted(OBSERVED))
def test_each_option_changes_what_it_controls(name, folder, monkeypatch):
    f = next(f for f, _, _, _ in FIELDS if f.name == name)
    changed, argv = _changed(f)
    default = Experiment(DataConfig("digits"))
    if name == "discriminative":  # it sets gradual's decay when --layer-decay is left at 1
        assert changed.train.body.layer_decay == 1
    if name in ("checkpoint_seconds", "time_budget", "device", "fp32", "fold_bn", "compile", "deterministic"):
        observe = {"context": _run_context, "prepared": _prepared}[OBSERVED[name]]
        a, b = observe(default, folder, monkeypatch), observe(changed, folder, monkeypatch)
    else:
        observe = {"strategies": _strategies, "model": _model, "plan": _plan,
                   "data": lambda e: _data(e, folder), "batches": lambda e: _batches(e, folder),
                   "copies": lambda e: _copies(e, folder)}[OBSERVED[name]]
        a, b = observe(default), observe(changed)
    assert a != b, f"{' '.join(argv)} changed nothing that {OBSERVED[name]} shows"


# ---------------------------------------------------------------------------------------------
# Bad values, from the Python API and from config.yaml


def _bad_values(f: dataclasses.Field, tp: object) -> list[object]:
    default, meta = f.default, f.metadata
    bad: list[object] = [[1, 2]] if not str(tp).startswith("tuple") else [5, "x" if "int" in str(tp) else 5]
    if isinstance(default, bool):
        return [*bad, "yes", 1]
    if meta.get("choices"):
        return [*bad, "nonsense", 3]
    if "int" in str(tp) and "tuple" not in str(tp):
        bad += ["two", 3.5, True]
    if "float" in str(tp):
        bad += ["x", math.nan, math.inf, True]
    if meta.get("minimum") is not None:
        bad.append(meta["minimum"] - 1)
    if meta.get("maximum") is not None:
        bad.append(meta["maximum"] * 2 + 1)
    if tp is str:
        bad.append(5)
    return bad


CASES = [(key, value) for f, tp, _, key in FIELDS for value in _bad_values(f, tp)]


@pytest.mark.parametrize("key,value", CASES, ids=[f"{k}={v!r}" for k, v in CASES])
def test_a_bad_value_is_refused_by_the_api_and_by_config_yaml(key, value, tmp_path):
    f, _, section, _ = next(x for x in FIELDS if x[3] == key)
    with pytest.raises(SettingError) as exc:
        section(**({"source": "digits"} if section is DataConfig and f.name != "source" else {}), **{f.name: value})
    assert exc.value.setting == f.name and flag_of(f) in str(exc.value)
    # The same value in a config.yaml: refused naming the file and the key.
    saved = to_dict(Experiment(DataConfig("digits")))
    node = saved
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved, sort_keys=False))  # NaN and inf as YAML's .nan and .inf
    with pytest.raises(TransferlabError) as exc:
        load_experiment(path)
    assert str(path) in str(exc.value) and f"key {key}:" in str(exc.value)


def test_sections_refuse_what_is_not_a_section_and_unknown_keys(tmp_path):
    with pytest.raises(SettingError, match="model"):
        TrainConfig(model={"backbone": "x"})
    path = tmp_path / "config.yaml"
    saved = to_dict(Experiment(DataConfig("digits")))
    saved["train"]["body"]["body_rate"] = 1
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(TransferlabError, match="key train.body.body_rate: unknown setting"):
        load_experiment(path)
    saved = to_dict(Experiment(DataConfig("digits")))
    saved["train"]["model"] = [1, 2]
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(TransferlabError, match="key train.model: .* is not a section"):
        load_experiment(path)


def test_strategies_in_config_yaml_may_be_one_comma_separated_string(tmp_path):
    saved = to_dict(Experiment(DataConfig("digits")))
    saved["compare"]["strategies"] = "probe"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    assert load_experiment(path).compare.strategies == ("probe",)
    saved["compare"]["strategies"] = "probe,nonsense"
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(TransferlabError, match="key compare.strategies: unknown strategy 'nonsense'"):
        load_experiment(path)


def test_compare_and_the_classifier_refuse_before_any_work(tmp_path):
    from transferlab import TransferClassifier, compare

    with pytest.raises(SettingError, match="strategies"):
        compare(DataConfig("digits"), TrainConfig(), tmp_path / "out", CompareConfig(strategies=("probe", "nope")))
    assert not (tmp_path / "out").exists()
    with pytest.raises(SettingError, match="max_epochs"):
        TransferClassifier(max_epochs=0).fit("digits")
    with pytest.raises(SettingError, match="max_epochs"):
        TransferClassifier(max_epochs=math.nan).fit("digits")


def test_help_shows_the_sections_with_the_beginners_options_first():
    compare_parser = next(a for a in build_parser()._actions if a.dest == "command").choices["compare"]
    titles = [g.title for g in compare_parser._action_groups if g._group_actions]
    sections = [s.__doc__.strip().splitlines()[0] for s in SECTIONS]
    assert titles.index(DataConfig.__doc__.strip().splitlines()[0]) < titles.index(sections[0])
    assert [t for t in titles if t in sections] == sections
    assert np.all([len(g._group_actions) <= 15 for g in compare_parser._action_groups])
    assert {f.name for f, _, _ in leaf_fields(TrainConfig)} == {f.name for s in SECTIONS for f, _, _ in leaf_fields(s)}


def test_every_option_of_every_command_says_what_it_does():
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    silent = [f"{name} {action.option_strings[0]}" for name, parser in commands.items() for action in parser._actions
              if action.option_strings and action.dest != "help" and not action.help]
    assert silent == []
