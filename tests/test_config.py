"""Tests for seqmatch_engine.core.config: strict parsing, validation messages, presets, helpers."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from seqmatch_engine.core.config import (
    ConfigError,
    RunConfig,
    SubsetConfig,
    apply_overrides,
    as_static,
    expert_horizon,
    load_config_file,
    load_preset,
    preset_names,
    split_ipc,
)
from seqmatch_engine.core.paths import PRESETS_DIR
from seqmatch_engine.data.datasets import DATASET_NAMES


def raw_config(**groups: dict[str, Any]) -> dict[str, Any]:
    """A small valid raw config; `groups` replace/extend whole groups, e.g. distill={...}."""
    raw: dict[str, Any] = {
        "name": "t",
        "device": "cpu",
        "data": {"train_per_class": 20},
        "model": {"width": 8},
        "experts": {"num_experts": 1, "epochs": 3, "stage_epochs": 3},
        "distill": {"subsets": [{"ipc": 1, "interval": [0, 3], "iterations": 2},
                                {"ipc": 1, "interval": [0, 3], "iterations": 3}]},
        "eval": {"epochs": 2, "num_nets": 1},
    }
    for group, values in groups.items():
        if isinstance(values, dict) and isinstance(raw.get(group), dict):
            raw[group] = {**raw[group], **values}
        else:
            raw[group] = values
    return raw


def error_of(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw)
    return str(info.value)


# ----------------------------------------------------------------------------- presets


def test_cpu_demo_preset_validates():
    assert "cpu-demo" in preset_names()
    assert preset_names() == sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
    raw = json.loads((PRESETS_DIR / "cpu-demo.json").read_text())
    assert load_preset("cpu-demo") == raw
    config = RunConfig.from_dict(raw)
    assert config.name == "cpu-demo"
    assert config.data.dataset == "fashion-mnist-small"  # the bundled data: runs without downloads
    assert config.method == "seqmatch" and len(config.distill.subsets) >= 2
    assert [(s.ipc, s.interval, s.iterations) for s in config.distill.subsets] == \
        [(s["ipc"], tuple(s["interval"]), s["iterations"]) for s in raw["distill"]["subsets"]]
    assert all(isinstance(s, SubsetConfig) for s in config.distill.subsets)
    assert config.ipc == sum(s["ipc"] for s in raw["distill"]["subsets"])
    assert config.model.width == raw["model"]["width"]
    assert config.experts.epochs == raw["experts"]["epochs"]


def test_load_preset_returns_a_fresh_raw_dict():
    first = load_preset("cpu-demo")
    first["seed"] = 99
    assert load_preset("cpu-demo")["seed"] == 0


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError) as info:
        load_preset("nope")
    message = str(info.value)
    assert message.startswith("preset 'nope' not found in ")
    available = sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
    assert "cpu-demo" in available
    assert message.endswith(f"available: {', '.join(available)}")


# ----------------------------------------------------------------------------- unknown keys, types


def test_defaults_are_valid():
    config = RunConfig.from_dict({})
    assert config == RunConfig()
    assert config.method == "mtt"  # the default is a single subset
    assert config.ipc == 10


def test_unknown_top_level_key_is_rejected():
    message = error_of(raw_config(nmae="x"))
    assert message.startswith("nmae: unknown setting; known settings here: ")
    assert "data, device, distill, eval, experts, model, name, precision, seed" in message


def test_unknown_nested_key_names_the_dotted_field():
    raw = raw_config(distill={"syn_stepz": 20})
    message = error_of(raw)
    assert message.startswith("distill.syn_stepz: unknown setting")
    assert "syn_steps" in message


def test_every_unknown_key_is_named_with_the_known_ones():
    message = error_of(raw_config(distill={"syn_stepz": 20, "lr_imgg": 3}))
    assert message.startswith("distill.lr_imgg, distill.syn_stepz: unknown settings; known settings here: ")
    assert "lr_img" in message and "syn_steps" in message


def test_unknown_key_inside_a_subset_names_its_index():
    raw = raw_config()
    raw["distill"]["subsets"][1]["ipcc"] = 2
    assert error_of(raw).startswith("distill.subsets[1].ipcc: unknown setting")


@pytest.mark.parametrize(("group", "key", "value", "expected"), [
    (None, "seed", "1", 'seed: expected a whole number, got "1"'),
    (None, "seed", True, "seed: expected a whole number, got true"),
    (None, "seed", 2.7, "seed: expected a whole number, got 2.7"),
    ("experts", "epochs", 2.5, "experts.epochs: expected a whole number, got 2.5"),
    ("model", "width", False, "model.width: expected a whole number, got false"),
    ("data", "train_per_class", "20", 'data.train_per_class: expected a whole number, got "20"'),
    ("experts", "lr", "0.01", 'experts.lr: expected a number, got "0.01"'),
    ("experts", "lr", True, "experts.lr: expected a number, got true"),
    ("data", "zca", 1, "data.zca: expected true or false, got 1"),
    (None, "name", 5, "name: expected text, got 5"),
    ("eval", "architectures", "convnet", 'eval.architectures: expected a list, got "convnet"'),
    ("eval", "architectures", ["convnet", 3], "eval.architectures[1]: expected text, got 3"),
    ("distill", "subsets", {"ipc": 1}, 'distill.subsets: expected a list, got {"ipc": 1}'),
])
def test_wrong_types_are_rejected(group, key, value, expected):
    raw = raw_config()
    (raw if group is None else raw[group])[key] = value
    assert error_of(raw) == expected


def test_a_group_that_is_not_an_object_is_rejected():
    assert error_of(raw_config(data=5)) == "data: expected an object, got int"
    assert error_of([]) == "config: expected an object, got list"


def test_interval_must_be_a_pair():
    raw = raw_config()
    raw["distill"]["subsets"][0]["interval"] = [0, 3, 5]
    assert error_of(raw) == "distill.subsets[0].interval: expected a pair [start, end], got [0, 3, 5]"
    raw["distill"]["subsets"][0]["interval"] = [0, "3"]
    assert error_of(raw) == "distill.subsets[0].interval[1]: expected a whole number, got \"3\""


def test_missing_required_subset_setting_is_named():
    raw = raw_config(distill={"subsets": [{"ipc": 1}]})
    assert error_of(raw) == "distill.subsets[0]: missing required setting interval"


def test_several_missing_required_settings_are_named_cleanly():
    message = error_of(raw_config(distill={"subsets": [{}]}))
    assert message.startswith("distill.subsets[0]: missing required setting")
    assert "ipc" in message and "interval" in message
    assert "setting s:" not in message and message.count("'") % 2 == 0, message


def test_types_are_coerced():
    raw = raw_config(experts={"lr": 1}, data={"train_per_class": None}, model={"width": 8, "depth": None})
    config = RunConfig.from_dict(raw)
    assert config.experts.lr == 1.0 and isinstance(config.experts.lr, float)
    assert config.data.train_per_class is None
    assert config.model.depth is None
    assert config.distill.subsets[0].interval == (0, 3)
    assert isinstance(config.distill.subsets[0].interval, tuple)


# ----------------------------------------------------------------------------- impossible values


@pytest.mark.parametrize(("group", "values", "expected"), [
    ("model", {"width": 0}, "model.width: must be >= 1"),
    ("model", {"depth": 7}, "model.depth: must be between 1 and 6, or null for automatic"),
    ("experts", {"lr": -0.01}, "experts.lr: must be > 0"),
    ("experts", {"lr": 0}, "experts.lr: must be > 0"),
    ("experts", {"num_experts": 0}, "experts.num_experts: must be >= 1"),
    ("data", {"train_per_class": 0}, "data.train_per_class: must be at least the total IPC (2): subsets start "
     "from, and the baseline draws, that many real images per class; or null for all"),
    ("data", {"val_per_class": -1}, "data.val_per_class: must be >= 0"),
    ("distill", {"lr_img": -100.0}, "distill.lr_img: must be > 0"),
    ("distill", {"lr_lr": -1e-5}, "distill.lr_lr: must be >= 0"),
    ("distill", {"momentum": 1.0}, "distill.momentum: must be in [0, 1)"),
    ("distill", {"momentum": -0.1}, "distill.momentum: must be in [0, 1)"),
    ("distill", {"select_every": -1}, "distill.select_every: must be >= 0 (0 turns selection off)"),
    ("distill", {"snapshot_every": 0}, "distill.snapshot_every: must be >= 1"),
    ("distill", {"syn_steps": 0}, "distill.syn_steps: must be >= 1"),
    ("distill", {"expert_source": "foo"}, "distill.expert_source: must be one of retrained, window"),
    ("distill", {"init": "zeros"}, "distill.init: must be one of real, noise"),
    ("distill", {"subsets": []}, "distill.subsets: needs at least one subset"),
    ("eval", {"epochs": 0}, "eval.epochs: must be >= 1"),
    ("eval", {"num_nets": 0}, "eval.num_nets: must be from 1 to 100, got 0"),
    ("eval", {"num_nets": 1_000_000_000}, "eval.num_nets: must be from 1 to 100, got 1000000000"),
    ("eval", {"architectures": []}, "eval.architectures: needs at least one architecture"),
    ("eval", {"architectures": ["convnet", "resnet50"]},
     "eval.architectures: unknown 'resnet50'; choose from convnet, resnet18, vgg11, alexnet"),
])
def test_impossible_values_are_rejected(group, values, expected):
    assert error_of(raw_config(**{group: values})) == expected


def test_zero_ipc_is_rejected():
    raw = raw_config()
    raw["distill"]["subsets"][1]["ipc"] = 0
    assert error_of(raw) == "distill.subsets[1].ipc: must be >= 1 image per class"


def test_non_positive_lr_init_is_rejected():
    raw = raw_config()
    raw["distill"]["subsets"][0]["lr_init"] = 0
    assert error_of(raw) == "distill.subsets[0].lr_init: must be > 0"


def test_unknown_dataset_lists_the_choices():
    message = error_of(raw_config(data={"dataset": "imagenet"}))
    assert message == f"data.dataset: unknown dataset 'imagenet'; choose one of {', '.join(DATASET_NAMES)}"
    assert "fashion-mnist-small" in message and "cifar10" in message


@pytest.mark.parametrize("interval", [[2, 4], [3, 3], [5, 2], [-1, 3]])
def test_interval_without_a_start_epoch_is_rejected(interval):
    raw = raw_config(experts={"epochs": 10, "stage_epochs": 10})
    raw["distill"]["subsets"][0]["interval"] = interval
    a, b = interval
    assert error_of(raw) == (f"distill.subsets[0].interval: [{a}, {b}) leaves no start epoch: need 0 <= start "
                             f"and start + expert_epochs (2) < end")


def test_interval_start_check_follows_expert_epochs():
    raw = raw_config(experts={"epochs": 10, "stage_epochs": 10}, distill={"expert_epochs": 3})
    raw["distill"]["subsets"][1]["interval"] = [1, 5]
    raw["distill"]["subsets"][0]["interval"] = [0, 3]
    assert error_of(raw) == ("distill.subsets[0].interval: [0, 3) leaves no start epoch: need 0 <= start "
                             "and start + expert_epochs (3) < end")
    raw["distill"]["subsets"][0]["interval"] = [0, 4]
    assert [s.interval for s in RunConfig.from_dict(raw).distill.subsets] == [(0, 4), (1, 5)]


def test_stage_one_interval_past_the_horizon_names_experts_epochs():
    raw = raw_config(experts={"epochs": 5, "stage_epochs": 20})
    raw["distill"]["subsets"][0]["interval"] = [0, 7]
    assert error_of(raw) == ("distill.subsets[0].interval: ends at epoch 7 but its experts have only 5 epochs; "
                             "lower the end or raise experts.epochs")


def test_interval_may_end_one_past_the_horizon():
    # targets are at most epoch end-1, so an interval ending at E+1 uses epochs up to E
    raw = raw_config(experts={"epochs": 5, "stage_epochs": 5})
    raw["distill"]["subsets"][0]["interval"] = [0, 6]
    assert RunConfig.from_dict(raw).distill.subsets[0].interval == (0, 6)


def test_later_stage_interval_past_the_horizon_names_stage_epochs():
    raw = raw_config(experts={"epochs": 20, "stage_epochs": 4})
    raw["distill"]["subsets"][1]["interval"] = [0, 8]
    assert error_of(raw) == ("distill.subsets[1].interval: ends at epoch 8 but its experts have only 4 epochs; "
                             "lower the end or raise experts.stage_epochs")


def test_window_experts_use_the_stage_one_horizon():
    raw = raw_config(experts={"epochs": 6, "stage_epochs": 20}, distill={"expert_source": "window"})
    raw["distill"]["subsets"][1]["interval"] = [2, 8]
    message = error_of(raw)
    assert message == ("distill.subsets[1].interval: ends at epoch 8 but its experts have only 6 epochs; "
                       "lower the end or raise experts.epochs")
    raw["distill"]["subsets"][1]["interval"] = [2, 7]
    config = RunConfig.from_dict(raw)
    assert expert_horizon(config, 1) == 6
    raw["distill"]["expert_source"] = "retrained"
    raw["experts"]["stage_epochs"] = 9
    assert expert_horizon(RunConfig.from_dict(raw), 1) == 9
    assert expert_horizon(RunConfig.from_dict(raw), 0) == 6


# ----------------------------------------------------------------------------- split_ipc, as_static


@pytest.mark.parametrize(("ipc", "k", "expected"), [
    (50, 3, [17, 17, 16]),
    (10, 2, [5, 5]),
    (10, 1, [10]),
    (3, 3, [1, 1, 1]),
    (7, 4, [2, 2, 2, 1]),
])
def test_split_ipc(ipc, k, expected):
    assert split_ipc(ipc, k) == expected
    assert sum(expected) == ipc


def test_split_ipc_into_too_many_subsets_explains_the_fix():
    with pytest.raises(ConfigError) as info:
        split_ipc(3, 5)
    message = str(info.value)
    assert "IPC 3" in message and "5 subsets" in message
    assert "use at most 3 subsets or raise IPC to 5" in message


def test_split_ipc_needs_a_subset():
    with pytest.raises(ConfigError, match="number of subsets: must be >= 1"):
        split_ipc(10, 0)


def three_subsets() -> RunConfig:
    raw = raw_config(experts={"epochs": 8, "stage_epochs": 8})
    raw["distill"]["subsets"] = [
        {"ipc": 3, "interval": [1, 6], "iterations": 4, "lr_init": 0.02},
        {"ipc": 2, "interval": [0, 4], "iterations": 5, "lr_init": 0.05},
        {"ipc": 2, "interval": [0, 3], "iterations": 6},
    ]
    return RunConfig.from_dict(raw)


@pytest.mark.parametrize("budget, iterations", [
    ("per-image", 5),  # (3 * 4 + 2 * 5 + 2 * 6) / 7 = 34 / 7 = 4.86 updates per image on average
    ("total", 15),     # 4 + 5 + 6
])
def test_as_static_under_each_budget_convention(budget, iterations):
    config = three_subsets()
    static = as_static(config, budget)
    assert static.method == "mtt" and static.name == "t-mtt" and static.budget == budget
    assert static.ipc == config.ipc == 7
    assert static.distill.subsets == [SubsetConfig(ipc=7, interval=(1, 6), iterations=iterations, lr_init=0.02)]
    assert static.distill.nominal_groups == 3  # G1 draws static MTT in as many groups as SeqMatch has subsets
    assert static.distill.syn_steps == config.distill.syn_steps
    assert static.experts == config.experts and static.eval == config.eval
    assert len(config.distill.subsets) == 3 and config.budget is None, "the original config is not changed"
    assert RunConfig.from_dict(static.to_dict()) == static


def test_as_static_defaults_to_the_authors_convention():
    config = RunConfig.from_dict(load_preset("cpu-demo"))
    static = as_static(config)
    assert (static.ipc, static.method, static.name, static.budget) == (config.ipc, "mtt", "cpu-demo-mtt", "per-image")
    assert static.distill.subsets[0].iterations == config.distill.subsets[0].iterations  # equal subsets: I, not K I
    assert as_static(config, "total").distill.subsets[0].iterations == sum(s.iterations for s in config.distill.subsets)
    assert static.distill.subsets[0].interval == config.distill.subsets[0].interval
    assert as_static(RunConfig()).name == "mtt"
    with pytest.raises(ConfigError, match="budget: unknown convention 'half'; use one of per-image, total"):
        as_static(config, "half")
    with pytest.raises(ConfigError, match="budget: must be one of per-image, total"):
        RunConfig.from_dict({**config.to_dict(), "budget": "half"})


# ----------------------------------------------------------------------------- overrides


def test_apply_overrides_parses_json_values_and_dotted_keys():
    raw = {"seed": 0, "distill": {"syn_steps": 20}}
    before = copy.deepcopy(raw)
    result = apply_overrides(raw, [
        "seed=3",
        "device=cpu",
        "data.zca=true",
        "distill.lr_lr=1e-6",
        "model.depth=null",
        'distill.subsets=[{"ipc": 2, "interval": [0, 4]}]',
        "name=a=b",
    ])
    assert raw == before, "the input dict is not modified"
    assert result == {
        "seed": 3,
        "device": "cpu",
        "name": "a=b",
        "data": {"zca": True},
        "model": {"depth": None},
        "distill": {"syn_steps": 20, "lr_lr": 1e-6, "subsets": [{"ipc": 2, "interval": [0, 4]}]},
    }


def test_later_overrides_win():
    assert apply_overrides({}, ["seed=1", "seed=2"]) == {"seed": 2}


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["distill.syn_steps"])
    assert str(info.value) == "override 'distill.syn_steps': expected key=value, e.g. distill.syn_steps=20"


def test_override_through_a_plain_setting_is_rejected():
    with pytest.raises(ConfigError, match="override seed.x: seed is not a group of settings"):
        apply_overrides({"seed": 0}, ["seed.x=1"])


def test_override_of_an_unknown_key_is_caught_by_validation():
    raw = apply_overrides(load_preset("cpu-demo"), ["distill.syn_stepz=3"])
    assert error_of(raw).startswith("distill.syn_stepz: unknown setting")


def test_override_with_a_text_value_for_a_number_is_caught_by_validation():
    raw = apply_overrides(load_preset("cpu-demo"), ["model.width=wide"])
    assert error_of(raw) == "model.width: expected a whole number, got \"wide\""


# ----------------------------------------------------------------------------- config files, round trip


def test_load_config_file_reads_an_object(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw_config()))
    assert load_config_file(path) == raw_config()
    assert load_config_file(str(path)) == raw_config()


def test_missing_config_file_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config_file("sub/missing.json")
    assert str(info.value) == f"config file {tmp_path.resolve() / 'sub' / 'missing.json'} does not exist"


def test_invalid_json_config_file_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text('{"seed": 1,')
    with pytest.raises(ConfigError) as info:
        load_config_file("bad.json")
    assert str(info.value).startswith(f"config file {tmp_path.resolve() / 'bad.json'} is not valid JSON: ")


def test_binary_config_file_is_not_valid_json(tmp_path):
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config_file(path)


def test_non_object_config_file_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError) as info:
        load_config_file("list.json")
    assert str(info.value) == (f"config file {tmp_path.resolve() / 'list.json'}: "
                               f"expected a JSON object at the top level")


def test_config_path_that_is_a_folder_gives_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path.resolve())):
        load_config_file(tmp_path)


def test_to_dict_from_dict_round_trip():
    for config in (RunConfig(), RunConfig.from_dict(load_preset("cpu-demo")), RunConfig.from_dict(raw_config())):
        data = config.to_dict()
        assert json.loads(json.dumps(data)) == data, "to_dict is plain JSON"
        assert data["distill"]["subsets"][0]["interval"] == list(config.distill.subsets[0].interval)
        again = RunConfig.from_dict(data)
        assert again == config
        assert again.to_dict() == data


def test_to_dict_is_a_copy():
    config = RunConfig.from_dict(raw_config())
    data = config.to_dict()
    data["eval"]["architectures"].append("vgg11")
    assert config.eval.architectures == ["convnet"]


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates(name):
    config = RunConfig.from_dict(load_preset(name))
    assert config.ipc >= 1
    schedule = "mtt" if len(config.distill.subsets) == 1 else "seqmatch"
    expected = schedule if config.distill.objective == "mtt" else ("datm" if schedule == "mtt" else "seqmatch-datm")
    assert config.method == expected


@pytest.mark.parametrize("iterations, every, points, expected", [
    (1000, 0, 4, [250, 500, 750, 1000]),
    (100, 0, 4, [25, 50, 75, 100]),
    (10, 0, 4, [3, 5, 8, 10]),
    (3, 0, 4, [1, 2, 3]),          # fewer iterations than points: every iteration, once
    (100, 30, 0, [30, 60, 90, 100]),
    (100, 25, 0, [25, 50, 75, 100]),
    (100, 0, 0, []),
    (0, 0, 4, []),
])
def test_selection_points_are_evenly_spaced_and_end_at_the_last_iteration(iterations, every, points, expected):
    from seqmatch_engine.core.config import selection_iterations

    assert selection_iterations(iterations, every, points) == expected


def test_select_every_keeps_todays_points():
    """select_every's points are the ones the driver used before select_points existed: every multiple, and the end."""
    from seqmatch_engine.core.config import selection_iterations

    for iterations in (1, 7, 25, 100, 101):
        for every in (1, 2, 25, 30):
            old = [done for done in range(1, iterations + 1) if done % every == 0 or done == iterations]
            assert selection_iterations(iterations, every, 0) == old


def test_negative_select_points_is_refused():
    raw = RunConfig().to_dict()
    raw["distill"]["select_points"] = -1
    with pytest.raises(ConfigError, match=r"distill.select_points: must be >= 0"):
        RunConfig.from_dict(raw)


def test_select_points_and_select_every_together_are_refused():
    raw = RunConfig().to_dict()
    raw["distill"].update(select_points=4, select_every=25)
    with pytest.raises(ConfigError, match=r"distill.select_points: 4 and distill.select_every 25 both place the "
                                          r"selection points; set one of them to 0"):
        RunConfig.from_dict(raw)


def test_bf16_is_refused_with_the_measured_reason_and_fp32_is_the_default():
    assert RunConfig().precision == "fp32"
    raw = RunConfig().to_dict()
    raw["precision"] = "bf16"
    with pytest.raises(ConfigError, match=r"precision: 'bf16' is not offered: fp32 is the only precision\. .* "
                                          r"bench --only precision"):
        RunConfig.from_dict(raw)
