"""Linear-level experiments: a serving engine's NVFP4 linear layer (quantize, pad, GEMM, slice, bias).

:class:`LinearExperiment` gives the layer activations of the problem's shape (``batch`` leading
dimensions), a checkpoint weight shard (ModelOpt / compressed-tensors layout) and a bias, and
compares with :func:`harness.oracle.reference_linear`.  Stale-memory poison fills and frees device
memory before each call (:func:`harness.experiments.poison_allocator`).

A merged-partition problem (``GemmProblem.partitions``: QKV, gate/up) hands the layer a
:class:`~harness.pipeline.MergedCheckpoint` instead: one checkpoint shard per partition with its
own global scale (or one fused-on-disk shard), and the engine's per-partition scale slots as
allocated, every byte ``poison.partition_slots``; the reference multiplies with
:func:`harness.oracle.reference_merged_weight`, computed from the shards alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from dataclasses import replace

from harness import checks, guard
from harness.backends.protocol import BackendContractError, LinearBackend, Unsupported
from harness.data import generate
from harness.experiments import (
    NotApplicable,
    graph_replayer,
    check_guards,
    poison_allocator,
    refusal,
    sync,
)
from harness.input_layout import CONTIGUOUS, StridedInput, snapshot, storage_changed, strided_view
from harness.layouts import round_up
from harness.oracle import error_bound, reference_linear, reference_merged_weight
from harness.pipeline import CheckpointWeight, MergedCheckpoint, merged_checkpoint
from harness.problem import GemmProblem, Poison, slot_poison_kind
from harness.trial import PropertyResult, Trial


def linear_inputs(problem: GemmProblem, device, poison: Poison | None = None
                  ) -> tuple[torch.Tensor, CheckpointWeight | MergedCheckpoint, torch.Tensor]:
    """x [*batch or m, k] in the input dtype, the checkpoint weight (a :class:`MergedCheckpoint` when
    ``problem.partitions``, its slot buffers filled with ``poison.partition_slots``) and bias [n]."""
    shape = tuple(problem.batch) if problem.batch else (problem.m,)
    x = generate(problem.distribution, (*shape, problem.k), 2 * problem.seed, problem.torch_in_dtype, device)
    # ModelOpt's static activation scale: the decode multiplier calibrated amax / 2688
    input_scale = None if problem.calibration is None else \
        (1.0 / problem.activation_global_scale(x)).to(torch.float32)
    weight: CheckpointWeight | MergedCheckpoint
    if problem.partitions is not None:
        weight = merged_checkpoint(problem.weights(device), problem.partitions, fused_on_disk=problem.fused_on_disk,
                                   input_scale=input_scale, slot_byte=(poison or Poison()).partition_slots)
    else:
        weight = CheckpointWeight.from_dense(problem.weights(device))
        if input_scale is not None:
            weight = replace(weight, input_scale=input_scale)
    bias = problem.bias(device).to(problem.torch_in_dtype)
    return x, weight, bias


class LinearExperiment:
    """The linear-level properties of ``backend`` on ``trial``: a serving engine's NVFP4 linear layer
    on activations of the problem's shape and a checkpoint weight shard."""

    def __init__(self, backend: LinearBackend, trial: Trial, device):
        self.backend, self.trial, self.problem, self.dev = backend, trial, trial.problem, device
        if self.problem.calibration is not None and backend.requirements.activation != "bf16" and \
                not getattr(backend, "static_input_scale", False):
            raise NotApplicable("the layer quantizes activations dynamically (no static input_scale path), "
                                f"the problem's calibration={self.problem.calibration:g} needs one")
        if (self.problem.m == 0) != (trial.property == "empty_batch"):
            raise NotApplicable("the empty_batch property, and only it, takes an empty batch (m=0); "
                                f"problem.m={self.problem.m}")
        if self.problem.partitions is not None and not getattr(backend, "merged_partitions", False):
            raise NotApplicable("the layer loads no merged-partition weights (no per-partition scale slots), "
                                f"the problem's partitions={list(self.problem.partitions)} need them")
        self.x, self.weight, self.bias = linear_inputs(self.problem, device, trial.poison)
        #: the weight the layer must multiply with (for a merged layer: from the shards alone)
        self.reference_weight: CheckpointWeight = reference_merged_weight(self.weight) \
            if isinstance(self.weight, MergedCheckpoint) else self.weight

    def _weight_tensors(self) -> dict[str, torch.Tensor]:
        w = self.weight
        if isinstance(w, MergedCheckpoint):
            return {f"weight.{name}": t for name, t in w.tensors().items()}
        out = {"weight.packed": w.packed, "weight.scales": w.scales, "weight.weight_scale_2": w.weight_scale_2}
        if w.input_scale is not None:
            out["weight.input_scale"] = w.input_scale
        return out

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.x, *self._weight_tensors().values(), self.bias):
            h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _guarded_weight(self) -> CheckpointWeight | MergedCheckpoint:
        """A copy of the weight inside guard bytes (every shard and slot buffer of a merged one)."""
        w = self.weight
        if isinstance(w, MergedCheckpoint):
            shards = [replace(sh, packed=guard.guarded(sh.packed), scales=guard.guarded(sh.scales),
                              weight_scale_2=guard.guarded(sh.weight_scale_2),
                              input_scale=None if sh.input_scale is None else guard.guarded(sh.input_scale))
                      for sh in w.shards]
            return replace(w, shards=shards, weight_scale_2=guard.guarded(w.weight_scale_2),
                           input_scale=None if w.input_scale is None else guard.guarded(w.input_scale))
        return replace(w, packed=guard.guarded(w.packed), scales=guard.guarded(w.scales),
                       weight_scale_2=guard.guarded(w.weight_scale_2),
                       input_scale=None if w.input_scale is None else guard.guarded(w.input_scale))

    def _guarded(self, x: torch.Tensor | StridedInput):
        """(x, weight, bias, handed): copies of what the layer receives inside guard bytes, and those
        tensors by name (a :class:`StridedInput`: its view, over its guarded storage; a merged
        weight: every shard and slot buffer)."""
        storage = x.storage if isinstance(x, StridedInput) else None
        x = x.view if isinstance(x, StridedInput) else guard.guarded(x)
        weight = self._guarded_weight()
        bias = guard.guarded(self.bias)
        handed = {"x" if storage is None else "x (storage)": x if storage is None else storage, "bias": bias}
        if isinstance(weight, MergedCheckpoint):
            handed.update({f"weight.{name}": t for name, t in weight.tensors().items()})
        else:
            handed.update({"weight.packed": weight.packed, "weight.scales": weight.scales,
                           "weight.weight_scale_2": weight.weight_scale_2})
            if weight.input_scale is not None:
                handed["weight.input_scale"] = weight.input_scale
        return x, weight, bias, handed

    def _checked(self, out, x: torch.Tensor) -> torch.Tensor:
        want = (*x.shape[:-1], self.weight.n)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise BackendContractError(f"output shape {got}, expected {want} for input {tuple(x.shape)}")
        return out

    def call(self, x=None, layout: str | None = None) -> torch.Tensor:
        """The layer on ``x`` (default: the problem's activations, handed in the problem's
        ``input_layout``; ``x`` given: contiguous unless ``layout`` says otherwise), every buffer
        inside guard bytes; raises BackendContractError for a write outside them (or into x's
        storage) and for an output of the wrong shape."""
        layout = layout or (self.problem.input_layout if x is None else CONTIGUOUS)
        x = self.x if x is None else x
        strided = strided_view(x, layout, self.problem.seed) if layout != CONTIGUOUS else None
        x, weight, bias, handed = self._guarded(x if strided is None else strided)
        before = snapshot(strided) if strided is not None else None
        if self.trial.poison.stale_memory:
            poison_allocator(self.dev)
        try:
            out = self.backend.run(x, weight, bias)
            sync()
        except Exception as exc:
            if strided is None or isinstance(exc, Unsupported):
                raise
            # refusing a view is allowed (layout_invariance reports it): nothing to compare here
            raise Unsupported(f"refused the {layout} view: {refusal(exc)}") from exc
        check_guards(handed)
        if strided is not None and (changed := storage_changed(strided, before)):
            raise BackendContractError(f"wrote into its input: {changed}")
        out = self._checked(out, x)
        self.geometry = {"input_layout": CONTIGUOUS} if strided is None else strided.describe()
        return out

    def agreement(self, out: torch.Tensor) -> PropertyResult:
        """:func:`checks.reference_agreement` of the layer's output ``out`` on the problem's activations."""
        req = self.backend.requirements
        ref = reference_linear(self.x, self.reference_weight, self.bias, round_up(self.problem.k, req.k_align),
                               dense_activation=req.activation == "bf16")
        bound = error_bound(ref, req.precision, out.dtype, bias_in_out_dtype=True)
        flat = out.reshape(-1, out.shape[-1])
        return checks.reference_agreement(flat, ref, bound, out.dtype, bias_in_out_dtype=True)

    def reference_agreement(self) -> PropertyResult:
        res = self.agreement(self.call())
        if self.problem.input_layout != CONTIGUOUS:
            res.measure.update(self.geometry)
        return res

    def determinism(self) -> PropertyResult:
        return checks.determinism(self.call().clone(), self.call().clone())

    def batch_invariance(self) -> PropertyResult:
        x2 = self.x.reshape(-1, self.problem.k)
        extra = generate(self.problem.distribution, (1 + self.problem.seed % 97, self.problem.k), 2 * self.problem.seed + 2,
                         self.problem.torch_in_dtype, self.dev) * 0.5
        small = self.call(x2)
        large = self.call(torch.cat([x2, extra]))
        return checks.batch_invariance(small, large, x2.shape[0])

    def input_isolation(self) -> PropertyResult:
        x2 = self.x.reshape(-1, self.problem.k)
        m = x2.shape[0]
        if m < 2:
            raise NotApplicable("one row: no other row to isolate")
        bad_row, col = self.problem.seed % m, (self.problem.seed * 7) % self.problem.k
        kind = ("nan", "inf")[(self.problem.seed // m) % 2]
        dirty_x = x2.clone()
        dirty_x[bad_row, col] = float("nan") if kind == "nan" else float("inf")
        clean = self.call(x2)
        dirty = self.call(dirty_x)
        return checks.input_isolation(clean, dirty, bad_row, kind, self.reference_weight.input_scale is not None)

    def partition_isolation(self) -> PropertyResult:
        """Each partition's output columns of the merged layer equal that partition's own unfused layer
        (its shard's codes, block scales re-expressed under the merged global scale, bias slice) within
        the derived bound, and the global scales the layer merged to are the max over the loaded
        partitions only: finite, whatever its unwritten scale slots hold."""
        w = self.weight
        if not getattr(self.backend, "merged_partitions", False):
            raise NotApplicable("the layer loads no merged-partition weights (QKV / gate-up with a scale slot per "
                                "partition): nothing to put to partition_isolation")
        if not isinstance(w, MergedCheckpoint):
            raise NotApplicable("one partition: the problem has no merged partitions")
        merged = self.backend.merge_partitions(self._guarded_weight())
        want = self.reference_weight
        scales = [("weight_scale_2", merged.weight_scale_2, want.weight_scale_2)]
        if want.input_scale is not None:
            scales.append(("input_scale", merged.input_scale, want.input_scale))
        out = self.call()
        req = self.backend.requirements
        flat = out.reshape(-1, out.shape[-1])
        results = []
        for start, end in self.problem.partition_bounds:
            own = CheckpointWeight(want.packed[start:end], want.scales[start:end], want.weight_scale_2,
                                   want.input_scale)
            ref = reference_linear(self.x, own, self.bias[start:end], round_up(self.problem.k, req.k_align),
                                   dense_activation=req.activation == "bf16")
            bound = error_bound(ref, req.precision, out.dtype, bias_in_out_dtype=True)
            results.append(checks.reference_agreement(flat[:, start:end], ref, bound, out.dtype,
                                                      bias_in_out_dtype=True))
        byte = self.trial.poison.partition_slots
        return checks.partition_isolation(
            [(name, None if got is None else got.reshape(-1).float().cpu(), exp.reshape(-1).float().cpu())
             for name, got, exp in scales],
            results, self.problem.partitions, self.problem.fused_on_disk, byte, slot_poison_kind(byte))

    def graph_replay(self, replay: Callable | None = None) -> PropertyResult:
        """Load the weight once (:meth:`~harness.backends.protocol.LinearBackend.load`), capture the
        layer's per-call part (:meth:`~harness.backends.protocol.LinearBackend.forward`) on the
        problem's activations in a CUDA graph, write new activations into the captured input buffer
        in place, replay, and compare with an eager call of the layer on the new activations.  The
        layer pads internally, so the padding a replay may find stale lives in its own buffers, not in
        any the harness owns.  ``replay``: as :meth:`GemmExperiment.graph_replay`."""
        replay = graph_replayer(self.backend.requirements, self.dev, replay, "the layer")
        p = self.problem
        x, weight, bias, handed = self._guarded(self.x)
        x_new = generate(p.distribution, tuple(self.x.shape), 2 * p.seed + 3, p.torch_in_dtype, self.dev)
        loaded = self.backend.load(weight)
        if self.trial.poison.stale_memory:
            poison_allocator(self.dev)
        out = replay(lambda: self.backend.forward(loaded, x, bias), lambda: x.copy_(x_new))
        sync()
        check_guards(handed)
        out = self._checked(out, x)
        eager = self.call(x_new)
        n = self.weight.n
        return checks.graph_replay(eager.reshape(-1, n), out.reshape(-1, n), x_new.numel() // p.k, n)

    def layout_invariance(self) -> PropertyResult:
        """The outputs on the problem's ``input_layout`` view equal those on the contiguous copy bit
        for bit, or (reported) differ only within the reference's bound, or the layer refuses the
        view (:func:`harness.checks.layout_invariance`)."""
        dense = self.call(layout=CONTIGUOUS).clone()
        layout = self.problem.input_layout
        try:
            view = self.call(layout=layout).clone()
        except Exception as exc:  # noqa: BLE001 - a refusal is an allowed answer to a view
            return checks.layout_invariance({}, strided_view(self.x, layout, self.problem.seed).describe(),
                                            refusal(exc))
        n, geometry = dense.shape[-1], self.geometry
        res = checks.layout_invariance({"outputs": (dense.reshape(-1, n), view.reshape(-1, n))}, geometry)
        if res.ok or "shapes" in res.measure:
            return res
        # bits differ: a strided operand may legitimately round differently; garbage fails the reference
        return checks.layout_invariance({"outputs": (dense.reshape(-1, n), view.reshape(-1, n))}, geometry,
                                        agreement=self.agreement(view))

    def empty_batch(self) -> PropertyResult:
        """An empty batch (m=0, x of shape ``[*batch, k]`` with a 0 leading dim) gives an empty
        output ``[*batch, n]`` in x's dtype, or a refusal; guard bytes intact
        (:func:`harness.checks.empty_batch`)."""
        want = (*self.x.shape[:-1], self.weight.n)
        try:
            out = self.call()
        except Unsupported:
            raise  # the backend declares it does not run this here: a skip, as for every property
        except Exception as exc:  # noqa: BLE001 - a refusal is an allowed answer to an empty batch
            return checks.empty_batch({}, {}, refusal(exc))
        return checks.empty_batch({"output": (tuple(out.shape), want)},
                                  {"output": (str(out.dtype), str(self.x.dtype))})
