"""The stage driver: SeqMatch over K subsets (static MTT is K = 1), from experts to evaluation.

    for k in 1..K:
        experts_k = stage-1 experts                      (k = 1, or expert_source "window")
                  | nets pre-trained on U_1..U_{k-1}, then trained on real data ("retrained")
        S_k      = trajectory matching of U_{k-1} + S_k, only S_k and alpha_k learned
        keep the S_k with the best validation accuracy
    evaluate the curriculum U_1..U_K (and a random real set of the same IPC) on the test split

Everything is written to a `RunFolder`; observers get `Event`s; a `RunControl` pauses,
resumes and stops the loop between outer iterations.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .augment import DSA_OPERATIONS
from .config import RunConfig
from .evaluate import (
    curriculum_from_subsets,
    evaluate_curriculum,
    random_real_curriculum,
    random_real_subset,
    train_curriculum,
)
from .experts import ExpertCache, recipe_key, tensor_digest, train_trajectory
from .matching import PIXEL_GROWTH, ConvNetStudent, DivergenceError, MatchingState, draw_unroll_plan, outer_step
from .memory import choose_memory_mode
from .models import ConvNet, ConvNetSpec, convnet_forward, default_depth, init_convnet_params
from .parallel import parallel_workers
from .prepare import PreparedData, prepare_data
from .runs import RunError, RunFolder, Subset
from .seeding import make_generator, resolve_device
from .storage import StorageError, read_json, write_json


@dataclass
class Event:
    """Something the driver did.

    kind: phase | progress | stage_start | iteration | selection | stage_done | evaluation | done | error
    """

    kind: str
    stage: int | None = None
    iteration: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


Observer = Callable[[Event], None]


class StopRequested(Exception):
    """Raised inside the driver when RunControl.stop() was called."""


class RunControl:
    """Pause / resume / stop flags a UI thread sets and the driver checks between iterations."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def checkpoint(self) -> None:
        """Block while paused; raise StopRequested when stopped."""
        self._running.wait()
        if self._stop.is_set():
            raise StopRequested()


def class_labels(num_classes: int, ipc: int, device: torch.device) -> torch.Tensor:
    """Labels (num_classes * ipc,) grouped by class: 0,0,..,1,1,.."""
    return torch.arange(num_classes, device=device).repeat_interleave(ipc)


def initial_images(data: PreparedData, ipc: int, init: str, generator: torch.Generator) -> torch.Tensor:
    """Starting pixels (C*ipc, ch, H, W): random real images of each class, or standard noise."""
    if init == "noise":
        shape = (data.num_classes * ipc, data.channels, *data.image_size)
        return torch.randn(shape, generator=generator).to(data.train_images.device)
    images, _ = random_real_subset(data.train_images, data.train_labels, data.num_classes, ipc, generator)
    return images


class Distiller:
    """Runs one run folder to completion (or to a stop), resuming from what the folder holds."""

    def __init__(self, run: RunFolder, experts_root, observer: Observer | None = None,
                 control: RunControl | None = None, data: PreparedData | None = None):
        self.run_folder = run
        self.config: RunConfig = run.config()
        self.cache = ExpertCache(experts_root)
        self.observer = observer or (lambda event: None)
        self.control = control or RunControl()
        self.device = resolve_device(self.config.device)
        self._data = data
        self._phase: str | None = None
        self._phase_started = 0.0
        self._phase_seconds: dict[str, float] = dict(run.status().get("phase_seconds", {}))

    # -- plumbing ----------------------------------------------------------------------------------
    def emit(self, kind: str, stage: int | None = None, iteration: int | None = None, **data: Any) -> None:
        self.observer(Event(kind, stage, iteration, data))

    def phase(self, name: str, stage: int | None = None, **extra: Any) -> None:
        self.run_folder.update_status(state="running", phase=name, stage=stage,
                                      phase_seconds=self._time_phase(name), **extra)
        self.emit("phase", stage, name=name, **extra)

    def _time_phase(self, name: str | None) -> dict[str, float]:
        """Close the current phase's clock, start `name`'s; wall seconds per phase, summed over resumes."""
        now = time.perf_counter()
        if self._phase is not None:
            self._phase_seconds[self._phase] = round(self._phase_seconds.get(self._phase, 0.0)
                                                     + now - self._phase_started, 3)
        self._phase, self._phase_started = name, now
        return dict(self._phase_seconds)

    @property
    def spec(self) -> ConvNetSpec:
        d = self.data
        depth = self.config.model.depth or default_depth(d.image_size)
        return ConvNetSpec(d.channels, d.image_size, d.num_classes, self.config.model.width, depth)

    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return convnet_forward(params, x, self.spec)

    @property
    def pixel_limit(self) -> float:
        """Largest sane per-image RMS of a learned image: PIXEL_GROWTH times the real training images' RMS."""
        return PIXEL_GROWTH * float(self.data.train_images.pow(2).mean().sqrt())

    # -- the whole run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        """Distil every subset, then evaluate. Returns eval.json's content (None when stopped)."""
        cfg = self.config
        try:
            self.phase("loading data")
            self.data = self._data or prepare_data(cfg.data, cfg.seed, self.device)
            self.run_folder.save_transform(self.data.transform)
            self.run_folder.update_status(class_names=list(self.data.class_names), dataset=self.data.name)
            subsets = self.run_folder.subsets()
            stage1 = None
            for k in range(len(subsets), len(cfg.distill.subsets)):
                if k == 0 or cfg.distill.expert_source == "window":
                    stage1 = stage1 if stage1 is not None else self.stage1_experts()
                    experts = stage1
                else:
                    experts = self.retrained_experts(k, subsets)
                subset = self.distil_stage(k, experts, subsets)
                subsets.append(subset)
            self.phase("evaluating")
            result = self.final_evaluation(subsets)
            self.run_folder.update_status(state="done", phase="done", finished=time.time(),
                                          phase_seconds=self._time_phase(None))
            self.emit("done", data=result)
            return result
        except StopRequested:
            self.run_folder.update_status(state="stopped", phase="stopped", phase_seconds=self._time_phase(None))
            self.emit("phase", name="stopped")
            return None
        except Exception as error:
            try:
                self.run_folder.update_status(state="failed", phase="failed", error=f"{type(error).__name__}: {error}",
                                              phase_seconds=self._time_phase(None))
            except RunError:
                pass  # the folder itself is gone: nothing to record it in
            self.emit("error", message=str(error), kind_name=type(error).__name__)
            raise

    # -- experts -----------------------------------------------------------------------------------
    def _expert_recipe(self, stage: int, epochs: int, warm_start: str | None) -> dict[str, Any]:
        cfg = self.config
        d, e = cfg.data, cfg.experts
        return {"dataset": d.dataset, "zca": d.zca, "train_per_class": d.train_per_class,
                "val_per_class": d.val_per_class, "spec": [self.spec.channels, list(self.spec.image_size),
                                                          self.spec.num_classes, self.spec.width, self.spec.depth],
                "epochs": epochs, "lr": e.lr, "batch_size": e.batch_size, "augment": e.augment,
                "seed": cfg.seed, "warm_start": warm_start, "stage": stage}

    def _train_experts(self, stage: int, epochs: int, recipe: dict[str, Any],
                       start_params: Callable[[int, torch.Generator], torch.Tensor]) -> torch.Tensor:
        e = self.config.experts
        count = e.num_experts
        self.phase(f"experts {stage + 1}", stage, experts_total=count,
                   experts_cached=self.cache.cached_count(recipe, count))
        total = count * epochs
        epochs_done = 0  # over all experts, which may train at once (see parallel.run_in_parallel)
        lock = threading.Lock()

        def train_one(i: int) -> torch.Tensor:
            generator = make_generator(self.config.seed, "expert", recipe["warm_start"], i)
            start = start_params(i, generator)

            def on_epoch(epoch: int) -> None:
                nonlocal epochs_done
                self.control.checkpoint()
                with lock:
                    epochs_done += 1
                    self.emit("progress", stage, task="experts", done=epochs_done, total=total)

            return train_trajectory(self.spec, self.data.train_images, self.data.train_labels, start, epochs,
                                    e.lr, e.batch_size, e.augment, generator, on_epoch)

        def on_expert(done: int, count: int) -> None:
            nonlocal epochs_done
            with lock:
                epochs_done = max(epochs_done, done * epochs)
                self.emit("progress", stage, task="experts", done=epochs_done, total=total)

        return self.cache.load_or_train(recipe, count, (epochs + 1, self.spec.num_params), train_one, on_expert,
                                        workers=parallel_workers(self.device))

    def stage1_experts(self) -> torch.Tensor:
        """Trajectories (n, E+1, P) from random init on real data."""
        epochs = self.config.experts.epochs
        recipe = self._expert_recipe(0, epochs, None)
        return self._train_experts(0, epochs, recipe,
                                   lambda i, g: init_convnet_params(self.spec, g, self.device))

    def cached_stage1_experts(self) -> torch.Tensor:
        """The stage-1 trajectories (n, E+1, P) read from the cache, without touching the run's status;
        StorageError when any is missing."""
        epochs, count = self.config.experts.epochs, self.config.experts.num_experts
        recipe = self._expert_recipe(0, epochs, None)

        def missing(i: int) -> torch.Tensor:
            raise StorageError(f"stage-1 expert {i} is not in {self.cache.folder(recipe)}; run the study or "
                               f"`experts` first")

        return self.cache.load_or_train(recipe, count, (epochs + 1, self.spec.num_params), missing)

    def retrained_experts(self, stage: int, subsets: list[Subset]) -> torch.Tensor:
        """Trajectories (n, E_k+1, P) of nets first trained on U_1..U_{k-1}, then on real data."""
        epochs = self.config.experts.stage_epochs
        curriculum = curriculum_from_subsets([(s.images, s.labels) for s in subsets], [s.lr for s in subsets])
        digest = tensor_digest(*[t for s in subsets for t in (s.images, s.labels, torch.tensor(s.lr))])
        recipe = self._expert_recipe(stage, epochs, f"curriculum-{digest}-eval{self.config.eval.epochs}")

        def pretrained(i: int, generator: torch.Generator) -> torch.Tensor:
            net = ConvNet(self.spec, init_convnet_params(self.spec, generator)).to(self.device)
            train_curriculum(net, curriculum, self.config.eval, generator)
            return net.flat.detach()

        return self._train_experts(stage, epochs, recipe, pretrained)

    # -- one subset -----------------------------------------------------------------------------------
    def distil_stage(self, k: int, experts: torch.Tensor, prior: list[Subset]) -> Subset:
        """Learn S_{k+1} (k is 0-based) against `experts` (n, E+1, P) with `prior` subsets frozen."""
        cfg, data = self.config, self.data
        sub, dist = cfg.distill.subsets[k], cfg.distill
        labels_k = class_labels(data.num_classes, sub.ipc, self.device)
        frozen = torch.cat([s.images for s in prior]) if prior else labels_k.new_empty(0).float()
        labels = torch.cat([s.labels.to(self.device) for s in prior] + [labels_k])
        batch_syn = dist.batch_syn or data.num_classes * sub.ipc
        operations = DSA_OPERATIONS
        first_start, last_start = sub.interval[0], sub.interval[1] - dist.expert_epochs - 1

        resumed = self._resume_point(k)
        if resumed:
            state, generator, iteration, best = resumed
        else:
            init = initial_images(data, sub.ipc, dist.init, make_generator(cfg.seed, "init", k))
            state = MatchingState.create(init, sub.lr_init, dist.lr_img, dist.lr_lr, dist.momentum, self.pixel_limit)
            generator = make_generator(cfg.seed, "distill", k)
            iteration, best = 0, {"accuracy": -1.0, "iteration": 0, "images": init.clone(), "lr": sub.lr_init}
        memory = choose_memory_mode(dist.memory_mode, self.spec, batch_syn, dist.syn_steps, len(labels), self.device)
        student = ConvNetStudent(self.spec, memory.mode, memory.replay)  # fused ConvNet step, chosen mode
        self.phase(f"distilling S{k + 1}", k, iteration=iteration, iterations=sub.iterations, memory_mode=memory.mode,
                   memory_note=memory.describe())
        self.emit("stage_start", k, iteration, images=state.images.detach().clone())
        last_good = (state.images.detach().clone(), float(state.lr.detach()))
        from .diagnostics.recorder import GradientRecorder  # here: diagnostics imports this module

        g1 = GradientRecorder(self.run_folder.path, k, [s.labels for s in prior] + [labels_k],
                              dist.nominal_groups if cfg.method == "mtt" else None, dist.diagnose_every, iteration)
        started, started_at = time.perf_counter(), iteration
        for iteration in range(started_at, sub.iterations):
            self.control.checkpoint()
            expert = int(torch.randint(len(experts), (1,), generator=generator))
            t = int(torch.randint(first_start, last_start + 1, (1,), generator=generator))
            start = experts[expert, t].to(self.device)
            target = experts[expert, t + dist.expert_epochs].to(self.device)
            plan = draw_unroll_plan(generator, len(labels), batch_syn, dist.syn_steps, data.image_size, operations)
            try:
                step = outer_step(student, state, frozen, labels, start, target, plan, dist.max_lr,
                                  g1.due(iteration + 1))  # record_gradients: G1 measures, never changes, the step
            except DivergenceError as error:
                return self._stop_diverged(k, iteration, error, best, labels_k)
            loss = step.loss
            g1.record(iteration + 1, step.image_grads, start_epoch=t, loss=loss)
            last_good = (state.images.detach().clone(), float(state.lr.detach()))
            done = iteration + 1
            rate = (time.perf_counter() - started) / (done - started_at)
            record = {"kind": "iteration", "stage": k, "iteration": done, "loss": loss, "lr": float(state.lr.detach()),
                      "start_epoch": t, "expert": expert, "seconds": rate}
            self.run_folder.log(record)
            images = state.images.detach().clone() if done % dist.publish_every == 0 or done == sub.iterations else None
            self.emit("iteration", k, done, loss=loss, lr=float(state.lr.detach()), start_epoch=t, images=images,
                      total=sub.iterations, eta_s=rate * (sub.iterations - done))
            if dist.select_every and (done % dist.select_every == 0 or done == sub.iterations):
                if best["accuracy"] < 0:  # the initial images, measured here so that the first steps show at once
                    self._select(k, best["iteration"], best["images"], best["lr"], prior, best)
                self._select(k, done, state.images.detach(), float(state.lr.detach()), prior, best)
            if done % dist.snapshot_every == 0 or done == sub.iterations:
                self._checkpoint(k, done, state, generator, best)
        images, lr = (best["images"], best["lr"]) if dist.select_every else last_good
        subset = Subset(images.detach().clone(), labels_k, float(lr))
        self._finish_stage(k, subset, best)
        return subset

    def _select(self, k: int, iteration: int, images: torch.Tensor, lr: float, prior: list[Subset],
                best: dict) -> None:
        """Validation accuracy of the curriculum up to S_k with `images` (C*ipc_k, ...) at `lr`, the mean of
        `eval.select_nets` nets; keep the best S_k (never looks at test data). Every candidate of a stage is
        scored by the same nets (same initialisations, minibatches and augmentations), so the comparison
        between candidates is paired."""
        cfg = self.config
        current = Subset(images, class_labels(self.data.num_classes, cfg.distill.subsets[k].ipc, self.device), lr)
        subsets = [*prior, current]
        curriculum = curriculum_from_subsets([(s.images, s.labels) for s in subsets], [s.lr for s in subsets])
        acc = evaluate_curriculum(curriculum, self.spec, cfg.eval, "convnet", cfg.eval.select_nets,
                                  self.data.val_images, self.data.val_labels, cfg.seed, f"select-{k}",
                                  workers=parallel_workers(self.device))
        improved = acc.mean > best["accuracy"]
        if improved:
            best.update(accuracy=acc.mean, iteration=iteration, images=current.images.clone(), lr=current.lr)
        self.run_folder.log({"kind": "selection", "stage": k, "iteration": iteration, "val_accuracy": acc.mean,
                             "best": improved})
        self.emit("selection", k, iteration, val_accuracy=acc.mean, best_accuracy=best["accuracy"],
                  best_iteration=best["iteration"])

    def _checkpoint(self, k: int, iteration: int, state: MatchingState, generator: torch.Generator,
                    best: dict) -> None:
        """Timeline snapshot + resumable checkpoint (pixels, lr, momenta, RNG, best so far)."""
        self.run_folder.save_snapshot(k, iteration, state.images, float(state.lr.detach()))
        tensors = {"images": state.images.detach(), "lr": state.lr.detach(),
                   "generator": generator.get_state(), "best_images": best["images"]}
        for name, optimizer, param in (("image_momentum", state.image_optimizer, state.images),
                                       ("lr_momentum", state.lr_optimizer, state.lr)):
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                tensors[name] = buffer
        info = {"stage": k, "iteration": iteration, "best_accuracy": best["accuracy"],
                "best_iteration": best["iteration"], "best_lr": best["lr"]}
        self.run_folder.save_checkpoint(tensors, info)
        self.run_folder.update_status(state="running", phase=f"distilling S{k + 1}", stage=k, iteration=iteration,
                                      iterations=self.config.distill.subsets[k].iterations)

    def _resume_point(self, k: int):
        """(state, generator, iteration, best) from the run's checkpoint of stage k, or None.

        Without a checkpoint the stage starts over, so records an earlier attempt left are dropped.
        """
        try:
            found = self.run_folder.checkpoint()
        except StorageError as error:  # a damaged checkpoint: set it aside and learn the stage again
            aside = self.run_folder.set_aside_checkpoint()
            self.run_folder.add_message("warning", f"{error}; moved it to {aside.name} and started S{k + 1} again "
                                                   f"from its beginning")
            found = None
        if not found or found[1].get("stage") != k:
            self.run_folder.truncate_metrics(k, 0)
            return None
        tensors, info = found
        dist, sub = self.config.distill, self.config.distill.subsets[k]
        state = MatchingState.create(tensors["images"].to(self.device), float(tensors["lr"]), dist.lr_img,
                                     dist.lr_lr, dist.momentum, self.pixel_limit)
        for name, optimizer, param in (("image_momentum", state.image_optimizer, state.images),
                                       ("lr_momentum", state.lr_optimizer, state.lr)):
            if name in tensors:
                optimizer.state[param]["momentum_buffer"] = tensors[name].to(self.device).clone()
        generator = torch.Generator()
        generator.set_state(tensors["generator"])
        best = {"accuracy": info["best_accuracy"], "iteration": info["best_iteration"],
                "images": tensors["best_images"].to(self.device), "lr": info["best_lr"]}
        self.run_folder.truncate_metrics(k, info["iteration"])
        self.run_folder.add_message("info", f"resumed S{k + 1} at iteration {info['iteration']} of {sub.iterations}")
        return state, generator, info["iteration"], best

    def _stop_diverged(self, k: int, iteration: int, error: DivergenceError, best: dict,
                       labels: torch.Tensor) -> Subset:
        """End stage k at a divergence, keeping images known to be sane: the best validated ones, else the
        initial ones (the last images before the error may already be far off: exploding pixels grow for
        several iterations before any check fires); record why, so that later stages and the report know."""
        validated = best["accuracy"] >= 0
        images, lr = best["images"], best["lr"]  # `best` starts as the initial images and lr
        kept = (f"the best validated images (iteration {best['iteration']})" if validated
                else "the initial images (nothing was validated before)")
        text = f"S{k + 1} stopped at iteration {iteration + 1}: {error}. Kept {kept}, lr {lr:.4g}."
        self.run_folder.add_message("warning", text)
        diverged = [*self.run_folder.status().get("diverged", []), k]
        self.run_folder.update_status(diverged=diverged)
        self.run_folder.log({"kind": "divergence", "stage": k, "iteration": iteration + 1, "message": str(error)})
        self.emit("phase", k, name=f"S{k + 1} diverged", message=text)
        subset = Subset(images.detach().clone(), labels, float(lr))
        self._finish_stage(k, subset, best)
        return subset

    def _finish_stage(self, k: int, subset: Subset, best: dict) -> None:
        info = {"stage": k, "ipc": self.config.distill.subsets[k].ipc, "lr": subset.lr,
                "best_iteration": best["iteration"], "best_val_accuracy": best["accuracy"]}
        self.run_folder.save_subset(k, subset, info)
        self.run_folder.clear_checkpoint()
        self.emit("stage_done", k, data=info, images=subset.images.detach().clone())

    # -- evaluation -----------------------------------------------------------------------------------
    def _cached_baseline(self, arch: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The random-real baseline's accuracy, measured once per recipe: it depends on the data, the
        model, the evaluation settings, the IPC and the seed only, so MTT and SeqMatch runs of a
        comparison share it (saved beside the experts, under baselines/)."""
        cfg = self.config
        recipe = {"kind": "random-real baseline", "data": dataclasses.asdict(cfg.data),
                  "model": dataclasses.asdict(cfg.model), "eval": dataclasses.asdict(cfg.eval), "ipc": cfg.ipc,
                  "arch": arch, "seed": cfg.seed, "device": self.device.type}
        recipe = json.loads(json.dumps(recipe))  # as it reads back from disk (tuples become lists)
        path = self.cache.root / "baselines" / f"{recipe_key(recipe)}.json"
        try:
            stored = read_json(path) if path.is_file() else {}
        except StorageError:
            stored = {}  # a damaged cache file is measured again and replaced
        if isinstance(stored, dict) and stored.get("recipe") == recipe and isinstance(stored.get("accuracy"), dict):
            return stored["accuracy"]
        accuracy = measure()
        write_json(path, {"recipe": recipe, "accuracy": accuracy})
        return accuracy

    def final_evaluation(self, subsets: list[Subset]) -> dict[str, Any]:
        """Test accuracy of the learned curriculum and of a random real set of the same IPC."""
        cfg, data = self.config, self.data
        curriculum = curriculum_from_subsets([(s.images.to(self.device), s.labels.to(self.device)) for s in subsets],
                                             [s.lr for s in subsets])
        baseline = random_real_curriculum(data, cfg)
        jobs = [("synthetic", curriculum)] + ([("random_real", baseline)] if cfg.eval.baseline else [])
        total = len(jobs) * len(cfg.eval.architectures) * cfg.eval.num_nets
        result: dict[str, Any] = {"method": cfg.method, "ipc": cfg.ipc, "budget": cfg.budget,
                                  "diverged": self.run_folder.status().get("diverged", []),
                                  "lrs": [s.lr for s in subsets],
                                  "eval_epochs": cfg.eval.epochs, "num_nets": cfg.eval.num_nets}
        done = 0
        for name, stages in jobs:
            result[name] = {}
            for arch in cfg.eval.architectures:
                def progress(n: int, _total: int, offset: int = done) -> None:
                    self.control.checkpoint()
                    self.emit("progress", task="evaluation", done=offset + n, total=total)

                def measure(stages=stages, name=name, arch=arch, progress=progress) -> dict[str, Any]:
                    return evaluate_curriculum(stages, self.spec, cfg.eval, arch, cfg.eval.num_nets, data.test_images,
                                               data.test_labels, cfg.seed, name, progress,
                                               parallel_workers(self.device)).to_dict()

                acc = measure() if name != "random_real" else self._cached_baseline(arch, measure)
                result[name][arch] = acc
                done += cfg.eval.num_nets
                self.emit("progress", task="evaluation", done=done, total=total)
                self.emit("evaluation", data={"set": name, "arch": arch, **acc})
        self.run_folder.save_eval(result)
        return result

