"""Experts keyed by their code, and the demo presets' stage-1 experts shipped with the app (assets/experts/)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from configs import tiny_run_config

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import RunConfig, apply_overrides, as_static, load_preset
from seqmatch_engine.core.seeding import machine_signature
from seqmatch_engine.interfaces import cli
from seqmatch_engine.orchestration import context
from seqmatch_engine.orchestration.context import RunContext
from seqmatch_engine.orchestration.driver import Distiller, EventKind
from seqmatch_engine.orchestration.jobs import train_expert
from seqmatch_engine.storage.expert_cache import SHIPPED_PRESETS, ExpertCache, shipped_sets, without_code, write_shipped
from seqmatch_engine.storage.files import StorageError, write_json
from seqmatch_engine.storage.runs import RunFolder

pytestmark = pytest.mark.usefixtures("isolated_home")


def preset_on_cpu(preset: str, *overrides: str) -> RunConfig:
    """`preset` on the CPU (where the shipped experts were trained), with `overrides` (key=value)."""
    return RunConfig.from_dict(apply_overrides({**load_preset(preset), "device": "cpu"}, list(overrides)))


def short_run(preset: str) -> RunConfig:
    """`preset` cut short around its untouched stage-1 expert recipe: expert 0 only, 2 iterations per subset against
    the stage-1 experts (no retrained ones), 1 evaluation net x 2 epochs, no baseline."""
    subsets = [{**s, "iterations": 2} for s in load_preset(preset)["distill"]["subsets"]]
    return preset_on_cpu(preset, "experts.num_experts=1", f"distill.subsets={json.dumps(subsets)}",
                         "distill.expert_source=window", "distill.select_points=0", "distill.select_every=0",
                         "eval.epochs=2", "eval.num_nets=1", "eval.baseline=false")


def run_to_end(home, config, observer=None):
    run = RunFolder.create(home / "runs" / "run", config)
    return run, Distiller(run, home / "experts", observer).run()


def expert_files(ctx: RunContext, recipe) -> list[str]:
    return sorted(p.name for p in ctx.cache.folder(recipe).glob("expert_*.safetensors"))


# -------------------------------------------------------------------------- the shipped asset matches the code
@pytest.mark.parametrize("preset", SHIPPED_PRESETS)
def test_the_shipped_experts_are_what_the_current_code_trains(preset, tmp_path):
    config = preset_on_cpu(preset)
    ctx = RunContext(config, tmp_path)
    recipe, path = ctx.stage1_recipe(), paths.shipped_experts_file(preset)
    regenerate = f"run `python scripts/make_demo_experts.py {preset}` on a CPU and commit {path.name}"
    shipped = next((s for s in shipped_sets(paths.SHIPPED_EXPERTS_DIR) if s.path == path), None)
    assert shipped, f"{path} is missing; {regenerate}"
    changed = {k: (shipped.recipe.get(k), recipe.get(k)) for k in recipe.keys() | shipped.recipe.keys()
               if shipped.recipe.get(k) != recipe.get(k)}
    assert not changed, f"{path} was made for another recipe or code (shipped, now: {changed}); {regenerate}"
    assert (shipped.count, shipped.shape) == (config.experts.num_experts, (config.experts.epochs + 1, ctx.spec.num_params))
    retrained = train_expert(dataclasses.replace(ctx.stage1_jobs(recipe, 1)[0], epochs=2))
    assert not torch.equal(retrained[2], retrained[0])  # two epochs of training moved the net: the check can fail
    differs = (f"expert 0 retrained for 2 epochs differs from the first rows of {path}: this code trains other "
               f"numbers; {regenerate}")
    if shipped.machine == machine_signature():
        assert torch.equal(retrained, shipped.read(0)[:3]), differs
    else:  # another CPU or torch build rounds differently and SGD amplifies it (experts made with AVX2, retrained
        # with AVX-512: 3.6 % of how far the net moved after 2 epochs of cpu-demo); another recipe moves it elsewhere
        reference = shipped.read(0)[:3]
        drift = (retrained[2] - reference[2]).norm() / (reference[2] - reference[0]).norm()
        assert drift < 0.1, f"{differs} (by {drift:.1%} of how far training moved the net)"


@pytest.mark.parametrize("preset", SHIPPED_PRESETS)
def test_a_fresh_home_finds_the_shipped_experts_for_the_preset_and_its_static_counterpart(preset, tmp_path):
    for config in (preset_on_cpu(preset), as_static(preset_on_cpu(preset))):  # the Compare tab's pair
        ctx = RunContext(config, tmp_path / "experts")
        recipe, count = ctx.stage1_recipe(), config.experts.num_experts
        shipped = ctx.cache.shipped_set(recipe)
        assert shipped and shipped.path == paths.shipped_experts_file(preset)
        assert ctx.cache.cached_count(recipe, count) == count
        assert ctx.cache.retrain_note(recipe, count) is None
        experts = ctx.stage1_experts()
        assert torch.equal(experts, torch.stack([shipped.read(i) for i in range(count)]))
        assert expert_files(ctx, recipe) == []  # read from assets/experts/, nothing trained or copied


# -------------------------------------------------------------------------- a fresh home distils with them
@pytest.mark.parametrize("preset", [pytest.param("cpu-demo", marks=pytest.mark.slow), "cpu-smoke"])
def test_a_fresh_home_distils_with_the_shipped_experts_as_with_its_own(preset, tmp_path, monkeypatch):
    config = short_run(preset)
    asset = paths.shipped_experts_file(preset)
    asset_bytes = asset.read_bytes()
    shipped_run, shipped_result = run_to_end(tmp_path / "fresh", config)
    recipe = RunContext(config, tmp_path).stage1_recipe()
    assert expert_files(RunContext(config, tmp_path / "fresh" / "experts"), recipe) == []
    assert shipped_run.status().experts_cached == shipped_run.status().experts_total == 1
    monkeypatch.setattr(paths, "SHIPPED_EXPERTS_DIR", tmp_path / "nothing-shipped")
    own_run, own_result = run_to_end(tmp_path / "own", config)
    assert expert_files(RunContext(config, tmp_path / "own" / "experts"), recipe) == ["expert_000.safetensors"]
    assert asset.read_bytes() == asset_bytes
    shipped = ExpertCache(tmp_path).shipped_set(recipe) or next(s for s in shipped_sets(asset.parent) if s.path == asset)
    if shipped.machine != machine_signature():
        pytest.skip(f"the shipped experts were trained on {shipped.machine}; on {machine_signature()} experts trained "
                    f"here round differently, so the runs are not expected to agree bit for bit")
    assert own_result == shipped_result
    for ours, theirs in zip(shipped_run.subsets(), own_run.subsets(), strict=True):
        assert torch.equal(ours.images, theirs.images) and ours.lr == theirs.lr


# -------------------------------------------------------------------------- experts of other code
@pytest.mark.parametrize("earlier", ["other code", "a folder from before experts were keyed by code"])
def test_experts_of_other_code_are_trained_again_and_the_run_says_why(earlier, tmp_path, monkeypatch):
    config = tiny_run_config("tiny", 3, (1,))
    first = RunContext(config, tmp_path / "experts")
    old_recipe = first.stage1_recipe()
    before = first.stage1_experts()
    if earlier == "other code":
        monkeypatch.setattr(context, "expert_code_version", lambda: "edited")  # the expert-training code changed
    else:
        old_recipe = without_code(old_recipe)
        first.cache.folder(first.stage1_recipe()).rename(first.cache.folder(old_recipe))
        write_json(first.cache.folder(old_recipe) / "recipe.json", old_recipe)
    events = []
    run, _ = run_to_end(tmp_path, config, events.append)
    again = RunContext(config, tmp_path / "experts")
    assert again.stage1_recipe()["code"] != old_recipe.get("code")
    assert expert_files(again, again.stage1_recipe()) == ["expert_000.safetensors", "expert_001.safetensors"]
    note = (f"the experts in {first.cache.folder(old_recipe)} were trained by other code (code "
            f"{old_recipe.get('code', 'not recorded')}, now {again.stage1_recipe()['code']}")
    assert "trained again; delete that folder to free its space" in run.status().messages[0].text
    assert note in run.status().messages[0].text
    (phase,) = [e for e in events if e.kind == EventKind.PHASE and e.data["name"] == "experts 1"]
    assert note in phase.data["message"]
    assert torch.equal(again.cached_stage1_experts(), before)  # the "edit" changed no bits: same trajectories


def test_the_experts_command_says_why_it_trains_experts_again(tmp_path, monkeypatch, capsys):
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(tiny_run_config("tiny", 3, (1,)).to_dict()))
    command = ["--home", str(tmp_path), "experts", "--config", str(config_file)]
    assert cli.main(command) == 0
    assert "note:" not in capsys.readouterr().err
    monkeypatch.setattr(context, "expert_code_version", lambda: "edited")
    assert cli.main(command) == 0
    err = capsys.readouterr().err
    assert "note: the experts in" in err and "were trained by other code" in err and "trained again" in err
    assert len(list((tmp_path / "experts").glob("*/expert_001.safetensors"))) == 2


def test_the_shipped_experts_stand_behind_the_cache_folder_and_bad_files_are_skipped(tmp_path):
    recipe = {"name": "tiny", "code": "now"}
    write_shipped(tmp_path / "assets" / "tiny.safetensors", recipe, torch.zeros(2, 3, 5), "tiny")
    write_shipped(tmp_path / "assets" / "old.safetensors", {**recipe, "code": "then"}, torch.zeros(2, 3, 5), "tiny")
    (tmp_path / "assets" / "broken.safetensors").write_bytes(b"not a safetensors file")
    cache = ExpertCache(tmp_path / "home", shipped=tmp_path / "assets")
    with pytest.warns(UserWarning, match=r"broken.safetensors is not a readable set of shipped experts .* restore the "
                                         r"file from the repository or regenerate it: python scripts/make_demo"):
        assert cache.missing(recipe, 3, (3, 5)) == [2]
        assert cache.retrain_note(recipe, 2) is None  # nothing to train
        assert f"the experts in {cache.folder(recipe)} were trained by other code (code now, now later" in \
            cache.retrain_note({**recipe, "code": "later"}, 1)
        assert (f"the experts in {tmp_path / 'assets' / 'old.safetensors'} were trained by other code (code then, now "
                f"later: the expert-training code or torch changed), so they are not used and these experts are "
                f"trained again; to ship current ones: python scripts/make_demo_experts.py") == \
            ExpertCache(tmp_path / "empty", shipped=tmp_path / "assets").retrain_note({**recipe, "code": "later"}, 1)
        cache.save(recipe, 0, torch.ones(3, 5))
        cache.save(recipe, 2, torch.full((3, 5), 2.0))
        assert cache.load(recipe, 3, (3, 5))[:, 0, 0].tolist() == [1.0, 0.0, 2.0]  # the folder's file wins
        with pytest.raises(StorageError, match=r"tiny.safetensors holds trajectories of shape \(3, 5\), expected "
                                               r"\(4, 5\) for its recipe; regenerate it"):
            cache.missing(recipe, 1, (4, 5))
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == [  # nothing written into the shipped folder
        "broken.safetensors", "old.safetensors", "tiny.safetensors"]
