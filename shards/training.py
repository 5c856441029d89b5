"""Deterministic slice-by-slice SISA training: step j trains on slices 1..j from step j-1's checkpoint.

Gradient models (``SisaModel``) run epochs of Adam per step; sufficient-statistics models
(``SufficientStatisticsModel``) add slice j's contributions to step j-1's sums.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch._compile import _disable_dynamo
from torch.autograd import graph as _autograd_graph
from torch.autograd.variable import Variable
from torch.optim.optimizer import _device_dtype_check_for_fused, _get_scalar_dtype
from torch.overrides import has_torch_function_unary

from expunge.shards.checkpoint_format import decode_checkpoint, encode_checkpoint
from expunge.shards.config import TrainingConfig
from expunge.shards.errors import StorageCorruptError
from expunge.shards.models.protocol import SisaModel, SufficientStatisticsModel
from expunge.shards.rows import SUBJECT_DIGEST
from expunge.shards.schedule import SliceScope, StepRecipe, allocate_epochs, derive_seed

__all__ = [
    "StateSnapshot",
    "TrainedState",
    "accumulate_steps",
    "configure_determinism",
    "decode_checkpoint",
    "encode_checkpoint",
    "load_checkpoint",
    "restore_snapshot",
    "serialize_state",
    "set_deterministic",
    "snapshot_state",
    "train_steps",
]

log = logging.getLogger(__name__)
_ENGINE = Variable._execution_engine  # what torch.autograd.backward runs (through graph._engine_run_backward)


def set_deterministic(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode)`` without importing torch's compiler stack.

    torch's function also sets ``torch._inductor.config.deterministic``, and importing that
    module imports ``torch._dynamo``: 1.5-7 s of CPU in every process that trains, for a
    setting only ``torch.compile`` reads. Expunge never compiles; the kernel switch is the
    same call torch makes (``torch._C._set_deterministic_algorithms``). Where the compiler
    is already loaded (a caller compiles), its setting is kept in step.
    """
    torch._C._set_deterministic_algorithms(mode, warn_only=False)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = mode  # type: ignore[attr-defined]


def configure_determinism(threads: int) -> None:
    """Fixed intra-op threads and deterministic kernels: what makes erasure provably exact."""
    torch.set_num_threads(threads)
    set_deterministic(True)


def _disabled_once_loaded(fn: Callable[..., Any], recursive: bool) -> Callable[..., Any]:
    """``fn``, called directly while ``torch._dynamo`` is not loaded; ``torch._dynamo.disable(fn)`` once it is."""

    def call(*args: Any, **kwargs: Any) -> Any:
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None:  # nothing can be compiling: torch.compile imports torch._dynamo first
            return fn(*args, **kwargs)
        disabled = dynamo.disable(fn, recursive, wrapping=False)
        setattr(fn, "__dynamo_disable", disabled)  # what torch's wrapper caches and calls from now on
        return disabled(*args, **kwargs)

    return call


@functools.cache  # once per process
def _optimizer_without_compiler() -> None:
    """Let ``torch.optim.Optimizer``'s methods run without importing ``torch._dynamo`` while nothing compiles.

    torch wraps ``__init__`` (through ``add_param_group``), ``zero_grad``, ``state_dict`` and
    ``load_state_dict`` in ``torch._disable_dynamo``, whose first call imports ``torch._dynamo``
    (about 1 s of CPU, sympy and the distributed packages with it) to wrap the method so that a
    compiler skips it. In a process where the compiler is not loaded nothing can be compiling, so
    the method itself is what that wrapper runs; once the compiler is loaded, torch's own wrapper
    is built and used. Changes no bits: the same methods run. Idempotent; a torch whose wrapper
    differs is left as it is (the methods then import the compiler as before).
    """
    probe = _disable_dynamo(lambda: None)
    for method in vars(torch.optim.Optimizer).values():
        if getattr(method, "__code__", None) is not probe.__code__ or method.__closure__ is None:
            continue
        cells = dict(zip(method.__code__.co_freevars, (c.cell_contents for c in method.__closure__), strict=True))
        fn, recursive = cells.get("fn"), cells.get("recursive", True)
        if callable(fn) and getattr(fn, "__dynamo_disable", None) is None:
            setattr(fn, "__dynamo_disable", _disabled_once_loaded(fn, bool(recursive)))


def _clear_grads(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)``: every parameter's gradient set to None, as that does.

    Without its profiler range (about 0.15 ms of a shard's 1.1 ms MF step).
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


def _backward(loss: torch.Tensor) -> None:
    """``loss.backward()``: for a plain CPU float scalar, the engine call ``torch.autograd.backward`` makes, directly.

    The same call (a gradient of ones like ``loss``, graph freed, gradients accumulated into the
    leaves), without the Python checks around it (about 40 us of an MF shard's 0.7 ms step): a tensor
    subclass or torch function mode, a functorch transform, autograd debug logging, another device,
    a non-scalar or non-float loss take ``loss.backward()`` itself (which raises where it should).
    """
    if (
        type(loss) is not torch.Tensor
        or has_torch_function_unary(loss)
        or loss.dim() != 0
        or not loss.dtype.is_floating_point
        or not loss.requires_grad
        or not loss.is_cpu
        or torch._C._are_functorch_transforms_active()
        or _autograd_graph.log.isEnabledFor(logging.DEBUG)
    ):
        loss.backward()  # type: ignore[no-untyped-call]
        return
    ones = torch.ones_like(loss, memory_format=torch.preserve_format)
    _ENGINE.run_backward((loss,), (ones,), False, False, (), allow_unreachable=True, accumulate_grad=True)


def _step_with(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    return functools.partial(_step, optimizer)


def _step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` without the wrappers that only profiling and compiling read; the same update, bit for bit.

    torch wraps every optimizer's ``step`` in a profiler range with step hooks (none are
    registered here) and in ``_use_grad_for_differentiable``, which imports ``torch._dynamo``
    on every call and runs the step with gradients off; this runs the step itself, gradients off.
    """
    with torch.no_grad():
        inspect.unwrap(type(optimizer).step)(optimizer)


class _FusedAdamStep:
    """``optimizer.step()`` of a fused ``torch.optim.Adam`` whose every parameter has its state: the same
    two kernels on the same tensors, bit for bit, without the per-step Python that re-collects them.

    ``Adam.step`` gathers every parameter's gradient and state each step (``_init_group``: a few
    microseconds per tensor, and a shard's MF module holds 3 + 2 per slice tensors), groups them by
    device and dtype, then runs ``torch._foreach_add_(steps, 1)`` and ``torch._fused_adam_``. Here the
    state lists are gathered once (the step counts into one tensor); a step collects the gradients,
    counts the steps and calls the fused kernel. ``of``
    returns None where that would not be the same update (another optimizer, several groups or
    dtypes, a tensor learning rate, a gradient scaler, state not yet created); a step where a
    parameter has no gradient (Adam skips it) runs ``optimizer.step()`` itself.
    """

    def __init__(self, optimizer: torch.optim.Adam, params: list[torch.Tensor], state: list[dict[str, Any]]) -> None:
        group = optimizer.param_groups[0]
        self.optimizer, self.params = optimizer, params
        self.exp_avgs = [s["exp_avg"] for s in state]
        self.exp_avg_sqs = [s["exp_avg_sq"] for s in state]
        self.max_exp_avg_sqs = [s["max_exp_avg_sq"] for s in state] if group["amsgrad"] else []
        # Every step count in one tensor, each state's "step" a view of it: one add_ per step counts them
        # all (what torch._foreach_add_(steps, 1) does to each, value for value: 25 vs 2 us at 8 tables).
        self.counts = torch.stack([s["step"].detach() for s in state])
        self.steps = list(self.counts.unbind())
        for values, count in zip(state, self.steps, strict=True):
            values["step"] = count
        beta1, beta2 = group["betas"]
        self.options = {
            "amsgrad": group["amsgrad"],
            "lr": group["lr"],
            "beta1": float(beta1),
            "beta2": float(beta2),
            "weight_decay": group["weight_decay"],
            "eps": group["eps"],
            "maximize": group["maximize"],
            "grad_scale": None,
            "found_inf": None,
        }

    @staticmethod
    def _fits(optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer`` is a fused ``Adam`` whose step is this kernel call (its state aside)."""
        if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
            return False
        group = optimizer.param_groups[0]
        if not group["fused"] or group["capturable"] or group["differentiable"] or group["decoupled_weight_decay"]:
            return False
        if isinstance(group["lr"], torch.Tensor) or any(isinstance(b, torch.Tensor) for b in group["betas"]):
            return False
        if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
            return False
        params = list(group["params"])
        # One (device, dtype): else Adam's kernels would run once per group of them.
        return (
            bool(params) and len({(p.device, p.dtype) for p in params}) == 1 and not any(map(torch.is_complex, params))
        )

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> _FusedAdamStep | None:
        if not cls._fits(optimizer) or not isinstance(optimizer, torch.optim.Adam):
            return None
        group = optimizer.param_groups[0]
        params = list(group["params"])
        state = [optimizer.state.get(p, {}) for p in params]
        keys = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group["amsgrad"] else set())
        if not all(keys <= s.keys() for s in state):
            return None
        if len({(s["step"].dtype, s["step"].device, s["step"].dim()) for s in state}) != 1 or state[0]["step"].dim():
            return None  # step counts that one tensor cannot hold
        return cls(optimizer, params, state)

    @classmethod
    def first(cls, optimizer: torch.optim.Optimizer) -> _FusedAdamStep | None:
        """``of`` for the step that creates the state of parameters grown since the last (after the backward).

        The state ``Adam.step`` would create first, as it creates it (``Adam._init_group``, fused: a float32
        step count of 0 and zero moments, for each parameter with a gradient and no state, in parameter
        order), then ``of``: the kernel call replaces a whole ``Adam.step`` (about 0.4 ms of Python a
        slice). Creates nothing where ``of`` cannot apply; where ``of`` then returns None anyway (a parameter
        without gradient or state), ``Adam.step`` finds the state it would have created.
        """
        if not cls._fits(optimizer):
            return None
        group = optimizer.param_groups[0]
        for param in group["params"]:
            if param.grad is None or optimizer.state.get(param):
                continue
            _device_dtype_check_for_fused(param)
            state = optimizer.state[param]
            dtype = _get_scalar_dtype(is_fused=True)  # type: ignore[no-untyped-call]
            state["step"] = torch.zeros((), dtype=dtype, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return cls.of(optimizer)

    def __call__(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if len(grads) != len(self.params):
            _step(self.optimizer)
            return
        enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # what torch.no_grad() sets and restores, without its Python
        try:
            self.counts.add_(1)
            torch._fused_adam_(
                self.params, grads, self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs, self.steps, **self.options
            )
        finally:
            torch._C._set_grad_enabled(enabled)


@dataclass
class TrainedState:
    """A module and its optimizer state after some number of completed slice steps."""

    module: torch.nn.Module
    optimizer_state: dict[str, Any] | None
    steps_done: int


def _serialize(model: SisaModel | SufficientStatisticsModel, state: TrainedState, lineage: Sequence[str]) -> bytes:
    return encode_checkpoint(
        {
            "model": state.module.state_dict(),
            "optimizer": state.optimizer_state,
            "layout": model.layout(state.module),
            "steps_done": state.steps_done,
            # Record-id digests of the slices this checkpoint was trained on (for scans).
            "lineage": list(lineage[: state.steps_done]),
        }
    )


def serialize_state(model: SisaModel | SufficientStatisticsModel, state: TrainedState, lineage: Sequence[str]) -> bytes:
    """The stored checkpoint bytes of ``state`` (as a training step writes them)."""
    return _serialize(model, state, lineage)


def load_checkpoint(model: SisaModel | SufficientStatisticsModel, data: bytes) -> TrainedState:
    """A module and optimizer state from stored checkpoint bytes (raises ``StorageCorruptError``)."""
    payload = decode_checkpoint(data)
    try:
        module = model.rebuild(payload["layout"])
        module.load_state_dict(payload["model"])
        return TrainedState(module, payload["optimizer"], int(payload["steps_done"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        # Decoded, but not a checkpoint of this model: damaged bytes of the checksum-less format 1
        # (the plain torch.save zip), or another model's checkpoint. A storage fault, typed.
        raise StorageCorruptError(f"a checkpoint does not fit its model ({type(exc).__name__}: {exc})"[:500]) from exc


_SCALARS = (str, int, float, bool)


def _copied(value: Any) -> Any:
    """``value`` with every dict, list and tuple rebuilt (same types, in order) and every tensor cloned."""
    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        copied = type(value)((k, _copied(v)) for k, v in value.items())
        metadata = getattr(value, "_metadata", None)  # a module's state dict carries its versions here
        if metadata is not None:
            copied._metadata = _copied(metadata)  # type: ignore[attr-defined]
        return copied
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copied(v) for v in value)
    return value


@dataclass(frozen=True)
class StateSnapshot:
    """A copy of a ``TrainedState`` (``snapshot_state``) that the training it came from can no longer change.

    ``restore_snapshot`` gives what ``load_checkpoint`` of the same state's checkpoint gives, bit for
    bit (format 4 holds tensors exactly), without reading and decoding it. ``nbytes``: its tensor bytes.
    """

    layout: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    steps_done: int
    nbytes: int


def _copied_optimizer(saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """``_copied(saved)`` for an optimizer's state dict, at one clone per tensor (half the time on MF's 60)."""
    if saved is None or set(saved) != {"state", "param_groups"} or type(saved["state"]) is not dict:
        return _copied(saved)
    state = {}
    for index, values in saved["state"].items():
        if type(values) is not dict:
            return _copied(saved)
        state[index] = {k: v.detach().clone() if isinstance(v, torch.Tensor) else _copied(v) for k, v in values.items()}
    return {"state": state, "param_groups": _copied(saved["param_groups"])}


def snapshot_state(model: SisaModel, state: TrainedState) -> StateSnapshot:
    """A copy of ``state`` (weights, optimizer state, layout): a memory copy of its tensors, no encoding."""
    weights = state.module.state_dict()
    tensors = type(weights)((k, v.detach().clone()) for k, v in weights.items())
    metadata = getattr(weights, "_metadata", None)
    if metadata is not None:
        tensors._metadata = _copied(metadata)  # type: ignore[attr-defined]
    optimizer = _copied_optimizer(state.optimizer_state)
    nbytes = sum(t.nbytes for t in tensors.values())
    for values in (optimizer or {}).get("state", {}).values():
        nbytes += sum(t.nbytes for t in values.values() if isinstance(t, torch.Tensor))
    return StateSnapshot(_copied(model.layout(state.module)), tensors, optimizer, state.steps_done, nbytes)


def restore_snapshot(model: SisaModel, snapshot: StateSnapshot) -> TrainedState:
    """A module and optimizer state of their own from ``snapshot`` (which stays as it is): ``load_checkpoint``'s result."""
    module = model.rebuild(snapshot.layout)
    module.load_state_dict(snapshot.model)
    return TrainedState(module, _copied_optimizer(snapshot.optimizer), snapshot.steps_done)


def _optimizer(module: torch.nn.Module, config: TrainingConfig, saved: dict[str, Any] | None) -> torch.optim.Optimizer:
    _optimizer_without_compiler()
    params = list(module.parameters())
    fused = config.optimizer_kernel == "fused"
    optimizer = torch.optim.Adam(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, foreach=False, fused=fused or None
    )
    if saved is not None:
        # Parameters grown since the save keep their registration order after the old ones,
        # so the saved per-index state still lines up; new ones start with fresh state.
        restored = {"state": saved["state"], "param_groups": [dict(saved["param_groups"][0])]}
        restored["param_groups"][0]["params"] = list(range(len(params)))
        optimizer.load_state_dict(restored)
    return optimizer


def _carried(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> bool:
    """Give ``optimizer`` the parameters ``module`` grew since it was built, at the end of its one group.

    What rebuilding it on the module and loading its state gives, without the rebuild: the held
    parameters keep their state tensors and hyperparameters, the new ones get fresh state on their
    first step. False (nothing changed) where the module's parameters do not start with the held ones.
    """
    held = optimizer.param_groups[0]["params"]
    params = list(module.parameters())
    if len(optimizer.param_groups) != 1 or len(params) < len(held):
        return False
    if any(a is not b for a, b in zip(held, params[: len(held)], strict=True)):
        return False
    held.extend(params[len(held) :])
    return True


#: An epoch's encoded rows are gathered in shuffled order once where they hold at most this many
#: bytes (that copy lives for the epoch); larger ones are gathered batch by batch.
_EPOCH_GATHER_BYTES = 64 << 20


def _batches(data: dict[str, torch.Tensor], permutation: torch.Tensor, size: int) -> Iterator[dict[str, torch.Tensor]]:
    """An epoch's batches: ``{name: tensor[permutation[b : b + size]]}`` for b = 0, size, 2 size, ..., value for value.

    ``data``: tensors of at least ``len(permutation)`` rows (dim 0); ``permutation``: int64 row indexes.
    Where they hold at most ``_EPOCH_GATHER_BYTES``, each tensor is gathered once in ``permutation``'s
    order and cut into views of ``size`` rows: one index kernel per tensor an epoch instead of one a
    batch (an MF shard's step: 3 of about 60 kernels, ~5% of its CPU), the same rows in the same order.
    """
    rows = len(permutation)
    if sum(tensor.nbytes for tensor in data.values()) > _EPOCH_GATHER_BYTES:
        for begin in range(0, rows, size):
            index = permutation[begin : begin + size]
            yield {name: tensor[index] for name, tensor in data.items()}
        return
    sizes = [size] * (rows // size) + ([rows % size] if rows % size else [])  # torch.split's, without its Python
    parts = {name: tensor[permutation].split_with_sizes(sizes) for name, tensor in data.items()}
    for number in range(len(sizes)):
        yield {name: batches[number] for name, batches in parts.items()}


def train_steps(
    model: SisaModel,
    config: TrainingConfig,
    shard_id: int,
    slices: Sequence[pa.Table],
    start: TrainedState | None,
    on_checkpoint: Callable[[int, bytes], None],
    progress: Callable[[int, int], None] | None = None,
    lineage: Sequence[str] = (),
    recipes: Sequence[StepRecipe] | None = None,
    on_state: Callable[[int, TrainedState], None] | None = None,
    encodings: dict[int, dict[str, torch.Tensor]] | None = None,
) -> TrainedState:
    """Run slice steps ``start.steps_done .. len(slices)-1`` and hand each checkpoint to ``on_checkpoint``.

    Seeds derive from (seed, shard, step, epoch) only, so the same slices give the same
    tensors bit for bit, whether the run starts from scratch or from a saved checkpoint.
    ``recipes`` gives each step's (epochs, scope) (``expunge.shards.schedule.step_recipes``);
    None: ``allocate_epochs(config.epochs, len(slices))`` epochs on the prefix at every step.
    Only the slices a step reads are indexed (``slices`` may load lazily). ``on_state``: called with
    each step's state after ``on_checkpoint`` (its tensors go on training: ``snapshot_state`` keeps a copy).
    ``encodings``: for a model that ``encodes_rows_independently``, slice index -> ``model.encode`` of that
    slice, read instead of encoding it (the caller vouches that slice and those before it are the rows
    they were encoded with: a slice's user indexes come from the tables grown up to it) and filled with
    every slice this run encodes; the tensors are only read. Ignored for other models.
    """
    steps: Sequence[StepRecipe] = (
        [(e, "prefix") for e in allocate_epochs(config.epochs, len(slices))] if recipes is None else recipes
    )
    if len(steps) != len(slices):
        raise ValueError(f"{len(steps)} step recipes for {len(slices)} slices")
    if start is None:
        init = torch.Generator().manual_seed(derive_seed(config.seed, shard_id, "init"))
        start = TrainedState(model.build(init), None, 0)
    state = start
    by_slice: dict[int, dict[str, torch.Tensor]] = encodings if encodings is not None else {}

    def encoded(step: int, scope: SliceScope) -> dict[str, torch.Tensor]:
        """The step's rows encoded: each slice's rows once per run where the model encodes rows independently."""
        if not getattr(model, "encodes_rows_independently", False):
            seen = pa.concat_tables(list(slices[: step + 1])) if scope == "prefix" else slices[step]
            whole: dict[str, torch.Tensor] = model.encode(state.module, seen)
            return whole
        for index in range(step + 1) if scope == "prefix" else (step,):
            if index not in by_slice:
                by_slice[index] = model.encode(state.module, slices[index])
        if scope == "slice" or step == 0:
            return by_slice[step]
        return {name: torch.cat([by_slice[i][name] for i in range(step + 1)]) for name in by_slice[step]}

    optimizer: torch.optim.Optimizer | None = None  # built once per run, then carried from slice to slice
    for step in range(state.steps_done, len(slices)):
        grow = torch.Generator().manual_seed(derive_seed(config.seed, shard_id, "grow", step))
        model.grow(state.module, slices[step], grow)
        if optimizer is None or not _carried(optimizer, state.module):
            optimizer = _optimizer(state.module, config, state.optimizer_state)
        epochs, scope = steps[step]
        data = encoded(step, scope)
        rows = sum(len(slices[i]) for i in range(step + 1)) if scope == "prefix" else len(slices[step])
        state.module.train()
        fast: Callable[[], None] | None = None
        for epoch in range(epochs if rows else 0):
            order = torch.Generator().manual_seed(derive_seed(config.seed, shard_id, step, epoch))
            for batch in _batches(data, torch.randperm(rows, generator=order), config.batch_size):
                _clear_grads(optimizer)
                _backward(model.loss(state.module, batch))
                if fast is None:  # the first step creates the state of parameters grown for this slice
                    fast = _FusedAdamStep.first(optimizer) or _step_with(optimizer)
                fast()
        state = TrainedState(state.module, optimizer.state_dict(), step + 1)
        on_checkpoint(step, _serialize(model, state, lineage))
        if on_state is not None:
            on_state(step, state)
        if progress is not None:
            progress(step + 1, len(slices))
        log.debug("shard %d: step %d/%d done on %d rows", shard_id, step + 1, len(slices), rows)
    return state


def accumulate_steps(
    model: SufficientStatisticsModel,
    slices: Sequence[pa.Table],
    start: TrainedState | None,
    on_checkpoint: Callable[[int, bytes], None],
    lineage: Sequence[str] = (),
    final_only: bool = False,
) -> TrainedState:
    """Sum slice steps ``start.steps_done .. len(slices)-1``: step j's state is step j-1's plus slice j's rows.

    The checkpoints are the cumulative sums, in the same format as ``train_steps`` writes
    (no optimizer state). With exact sums, restarting from step k-1 without a subject's rows
    gives the tensors that summing from scratch without them gives, bit for bit.
    ``final_only``: checkpoint the last step only (a decremental model changes its final sums
    in place of restarting, ``DecrementalStatisticsModel``).
    """
    state = start or TrainedState(model.empty(), None, 0)
    if final_only and state.steps_done < len(slices):
        # The sums are exact, so the slices' rows summed in one pass give the state step by step
        # would, bit for bit, without a merge of the running sums per slice.
        remaining = [slices[step] for step in range(state.steps_done, len(slices))]
        _one_slice_per_subject(remaining)
        schema = remaining[0].schema
        rows = pa.concat_tables([t.select(schema.names).cast(schema) for t in remaining])
        state = TrainedState(model.accumulate(state.module, rows), None, len(slices))
        on_checkpoint(len(slices) - 1, _serialize(model, state, lineage))
        log.debug("statistics: steps %d-%d summed on %d rows", len(slices) - len(remaining) + 1, len(slices), len(rows))
        return state
    for step in range(state.steps_done, len(slices)):
        state = TrainedState(model.accumulate(state.module, slices[step]), None, step + 1)
        on_checkpoint(step, _serialize(model, state, lineage))
        log.debug("statistics: step %d/%d done on %d rows", step + 1, len(slices), len(slices[step]))
    return state


def _one_slice_per_subject(slices: Sequence[pa.Table]) -> None:
    """Refuse slices that share a subject: a subject-specific statistic needs all its rows in one slice.

    Raises:
        ValueError: a subject digest occurs in two of ``slices`` (as summing them one by one would).
    """
    seen: set[str] = set()
    for table in slices:
        digests = (
            set(pc.unique(table.column(SUBJECT_DIGEST)).to_pylist()) if SUBJECT_DIGEST in table.column_names else set()
        )
        shared = seen & digests
        if shared:
            example = sorted(shared)[0]
            raise ValueError(
                f"{len(shared)} subject(s) (e.g. digest {example[:12]}...) occur in more than one slice: the "
                "statistics need each subject's rows in one slice (sharding.placement 'balanced' or 'hash')"
            )
        seen |= digests
