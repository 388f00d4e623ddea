"""GEMM-level experiments: the nine properties of a backend that takes pipeline operands.

:class:`GemmExperiment` holds one trial's activations and weights (from the problem's
distribution and seed) and builds operands in the backend's declared layouts and alignment, with
one global scale per tensor per case.  Its methods are the GEMM properties
(:data:`harness.trial.GEMM_PROPERTIES`); each returns the :class:`~harness.trial.PropertyResult`
of :mod:`harness.checks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from harness import checks, guard
from harness.backends.protocol import BackendContractError, GemmBackend, Unsupported
from harness.data import generate
from harness.experiments import (
    NotApplicable,
    graph_replayer,
    check_guards,
    classify_exception,
    sync,
)
from harness.format import BLOCK_SIZE, global_scale_encode_divisor
from harness.layouts import ScaleLayout, round_up
from harness.oracle import error_bound, reference_gemm
from harness.pipeline import GemmOperands, operands_from
from harness.problem import CLEAN, Poison, poison_kind
from harness.trial import PropertyResult, Trial


def operand_tensors(ops: GemmOperands) -> dict[str, torch.Tensor]:
    """Every tensor of ``ops`` a backend reads, by name (``a_dense`` only for W4A16 operands)."""
    named = {"a.packed": ops.a.packed, "a.scales": ops.a.scales, "a.global_scale": ops.a.global_scale,
             "w.packed": ops.w.packed, "w.scales": ops.w.scales, "w.global_scale": ops.w.global_scale,
             "alpha": ops.alpha}
    if ops.a_dense is not None:
        named["a_dense"] = ops.a_dense
    return named


def refill_operands(static: GemmOperands, fresh: GemmOperands) -> None:
    """Copy every byte of ``fresh`` (new real data and its padding, poison included) into the buffers
    of ``static`` in place: what changes between two replays of a captured call.  Raises ValueError
    when the two do not have the same buffers (shapes, dtypes)."""
    dst, src = operand_tensors(static), operand_tensors(fresh)
    if dst.keys() != src.keys():
        raise ValueError(f"refill_operands: buffers {sorted(src)} do not match the captured {sorted(dst)}")
    for name, t in dst.items():
        if t.shape != src[name].shape or t.dtype != src[name].dtype:
            raise ValueError(f"refill_operands: {name} is {tuple(src[name].shape)} {src[name].dtype}, the captured "
                             f"buffer {tuple(t.shape)} {t.dtype}")
        t.copy_(src[name])


def guard_operands(ops: GemmOperands) -> tuple[GemmOperands, dict[str, torch.Tensor]]:
    """``ops`` with every tensor a backend receives copied inside guard bytes (:mod:`harness.guard`),
    and those tensors by name."""
    a = replace(ops.a, packed=guard.guarded(ops.a.packed), scales=guard.guarded(ops.a.scales),
                global_scale=guard.guarded(ops.a.global_scale))
    w = replace(ops.w, packed=guard.guarded(ops.w.packed), scales=guard.guarded(ops.w.scales),
                global_scale=guard.guarded(ops.w.global_scale))
    dense = guard.guarded(ops.a_dense) if ops.a_dense is not None else None
    guarded = replace(ops, a=a, w=w, alpha=guard.guarded(ops.alpha), a_dense=dense)
    return guarded, operand_tensors(guarded)


class GemmExperiment:
    """The GEMM properties of ``backend`` on ``trial`` (inputs made on ``device``)."""

    def __init__(self, backend: GemmBackend, trial: Trial, device: torch.device):
        self.backend = backend
        self.trial = trial
        self.problem = trial.problem
        self.dev = device
        if self.problem.m == 0:
            raise NotApplicable("an empty batch (m=0) is put to the test at the linear and quantizer levels "
                                "(empty_batch); GEMM operands need m >= 1")
        req = backend.requirements
        self.layout = ScaleLayout.parse(trial.a_layout) if trial.a_layout else req.a_layouts[0]
        if self.layout not in req.a_layouts:
            raise ValueError(f"a_layout={self.layout.value!r}: backend {backend.name!r} takes "
                             f"{[l.value for l in req.a_layouts]}")
        self.x = self.problem.activations(device)
        self.w = self.problem.weights(device)
        self.first_ops = None  # the digest is taken of the first operands built, when asked for

    @property
    def digest(self) -> str | None:
        return self.first_ops.digest() if self.first_ops is not None else None

    def _gs(self, which: str, t: torch.Tensor) -> torch.Tensor:
        cache = self.__dict__.setdefault("_gs_cache", {})
        if which not in cache:
            cache[which] = self.problem.activation_global_scale(t) if which == "a" else \
                global_scale_encode_divisor(t.float().abs().amax()).reshape(1).to(t.device)
        return cache[which]

    def ops(self, poison: Poison, x=None, w=None, **kw):
        req = self.backend.requirements
        args = dict(a_layout=self.layout, w_layout=req.w_layout, n_align=req.n_align, k_align=req.k_align,
                    poison=poison, activation=req.activation)
        # the problem's own tensors: their global scales once per case, not per operand build
        # activations: dynamic, or the problem's static (calibrated) scale
        args["gs_a"] = self._gs("a", self.x) if x is None else self.problem.activation_global_scale(x)
        if w is None:
            args["gs_w"] = self._gs("w", self.w)
        args.update(kw)
        ops = operands_from(self.x if x is None else x, self.w if w is None else w, self.problem, **args)
        if self.first_ops is None:
            self.first_ops = ops
        return ops

    def call(self, ops, out=None) -> torch.Tensor:
        ops, handed = guard_operands(ops)
        if out is not None:
            handed["out"] = out
        res = self.backend.run(ops, out=out) if out is not None else self.backend.run(ops)
        sync()
        check_guards(handed)
        return self._checked(res, ops)

    @staticmethod
    def _checked(res, ops) -> torch.Tensor:
        """``res`` when it honours the protocol (shape [m, n_alloc], the operands' output dtype)."""
        want = (ops.m, ops.w.rows_alloc)
        if not isinstance(res, torch.Tensor) or tuple(res.shape) != want or res.dtype != ops.out_dtype:
            got = (tuple(res.shape), res.dtype) if isinstance(res, torch.Tensor) else type(res).__name__
            raise BackendContractError(f"returned {got}, expected shape {want} dtype {ops.out_dtype}")
        return res

    def reference(self, ops):
        ref = reference_gemm(ops)
        return ref, error_bound(ref, self.backend.requirements.precision, ops.out_dtype)

    def agreement(self, ops, out) -> PropertyResult:
        ref, bound = self.reference(ops)
        return checks.reference_agreement(out, ref, bound, ops.out_dtype, (out.shape[0], out.shape[1]))

    # --- properties -------------------------------------------------------------------------
    def reference_agreement(self) -> PropertyResult:
        ops = self.ops(replace(self.trial.poison, k_tail=0, stale_memory=False))
        return self.agreement(ops, self.call(ops))

    def _isolation(self, region: str) -> PropertyResult:
        byte = getattr(self.trial.poison, region) or 0x7F
        pois = Poison(**{region: byte}, data=self.trial.poison.data)
        clean = self.call(self.ops(CLEAN))
        dirty = self.call(self.ops(pois))
        fn = checks.row_isolation if region == "m_pad" else checks.column_isolation
        return fn(clean, dirty, self.problem.m, self.problem.n, region, poison_kind(byte))

    def row_isolation(self) -> PropertyResult:
        return self._isolation("m_pad")

    def column_isolation(self) -> PropertyResult:
        return self._isolation("n_pad")

    def k_tail(self) -> PropertyResult:
        byte = self.trial.poison.k_tail or 0x7F
        clean_ops = self.ops(CLEAN)
        clean = self.call(clean_ops)
        dirty = self.call(self.ops(Poison(k_tail=byte)))
        kb = clean_ops.a.k_alloc // BLOCK_SIZE
        has_tail = (kb != self.problem.k // BLOCK_SIZE) or any(
            q.scales.shape[1] != self.problem.k // BLOCK_SIZE for q in (clean_ops.a, clean_ops.w))
        res = checks.k_tail(clean, dirty, self.problem.m, self.problem.n, poison_kind(byte), has_tail)
        # and the pipeline itself always zeroes the tail
        for q in (clean_ops.a, clean_ops.w):
            z = checks.pipeline_zeroes_k_tail(q.scales, q.padding_map().regions)
            if not z.ok:
                return z
        return res

    def output_coverage(self) -> PropertyResult:
        ops = self.ops(CLEAN)
        out = guard.guarded(torch.empty((ops.m, ops.w.rows_alloc), dtype=ops.out_dtype, device=self.dev),
                            fill=float("nan"))
        res = self.call(ops, out=out)
        ref, _ = self.reference(ops)
        if res.data_ptr() != out.data_ptr():
            return PropertyResult("output_coverage", False,
                                  "the backend ignored the provided output buffer and returned another tensor", {})
        return checks.output_coverage(res, ops.m, ops.n, torch.isfinite(ref.value))

    def determinism(self) -> PropertyResult:
        ops = self.ops(CLEAN)
        return checks.determinism(self.call(ops).clone(), self.call(ops).clone())

    def clean_rejection(self) -> PropertyResult:
        req = self.backend.requirements
        p = self.problem
        options = []
        if req.m_max is not None:
            options.append(("m", f"m={req.m_max + p.m} > m_max={req.m_max}"))
        missing = [d for d in (torch.bfloat16, torch.float16) if d not in req.out_dtypes]
        if missing:
            options.append(("dtype", f"out_dtype={missing[0]} not in {list(req.out_dtypes)}"))
        if req.k_align > BLOCK_SIZE:
            options.append(("k", f"K not padded to the declared k_align={req.k_align}"))
        if req.n_align > 1:
            options.append(("n", f"N not padded to the declared n_align={req.n_align}"))
        if not options:
            raise NotApplicable("the backend declares no shape or dtype limit to probe")
        kind, why = options[p.seed % len(options)]
        x, w, kw, prob = self.x, self.w, {}, p
        if kind == "m":
            x = generate(p.distribution, (req.m_max + p.m, p.k), 2 * p.seed, p.torch_in_dtype, self.dev)
        elif kind == "dtype":
            prob = p.with_(out_dtype=str(missing[0]).replace("torch.", ""))
        elif kind == "k":
            k = round_up(p.k, req.k_align) + BLOCK_SIZE
            x = generate(p.distribution, (x.shape[0], k), 2 * p.seed, p.torch_in_dtype, self.dev)
            w = generate(p.distribution, (p.n, k), 2 * p.seed + 1, p.torch_in_dtype, self.dev)
            kw["k_align"] = BLOCK_SIZE
        else:
            n = round_up(p.n, req.n_align) + 1
            w = generate(p.distribution, (n, p.k), 2 * p.seed + 1, p.torch_in_dtype, self.dev)
            kw["n_align"] = 1
        self.problem = prob
        ops = self.ops(CLEAN, x=x, w=w, **kw)
        try:
            out = self.backend.run(ops)
            sync()
        except Unsupported as exc:
            return checks.clean_rejection(exc, None, why)
        except Exception as exc:
            status, _ = classify_exception(exc)
            if status == "crash":
                raise
            return checks.clean_rejection(exc, None, why)
        m, n = ops.m, ops.n
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] < m or out.shape[1] < n:
            return PropertyResult("clean_rejection", False,
                                  f"returned a wrong-shaped result instead of rejecting ({why})", {"outside": why})
        return checks.clean_rejection(None, self.agreement(ops, out), why)

    def tp_consistency(self) -> PropertyResult:
        tp, p = max(2, self.trial.tp), self.problem
        if self.trial.parallel == "column":
            w_full = generate(p.distribution, (p.n * tp, p.k), 2 * p.seed + 1, p.torch_in_dtype, self.dev)
            gs_w = global_scale_encode_divisor(w_full.float().abs().amax()).reshape(1).to(self.dev)
            gs_a = self._gs("a", self.x)
            full = self.call(self.ops(CLEAN, w=w_full, gs_a=gs_a, gs_w=gs_w))[:, :p.n * tp]
            shard_ops = [self.ops(CLEAN, w=w_full[i * p.n:(i + 1) * p.n], gs_a=gs_a, gs_w=gs_w) for i in range(tp)]
            shards = [self.call(o)[:, :p.n] for o in shard_ops]
            if self.backend.requirements.column_bitwise:
                return checks.tp_column_consistency(full, shards, p.m)
            worst, accepted = None, 0
            for o, s in zip(shard_ops, shards):
                agr = self.agreement(o, s)
                accepted += agr.measure.get("accepted_overflow", 0)
                if worst is None or not agr.ok or agr.measure["max_err_units"] > worst.measure["max_err_units"]:
                    worst = agr
                if not agr.ok:
                    break
            return checks.tp_column_consistency(full, shards, p.m, bitwise=False, agreement=worst,
                                                accepted_overflow=accepted)
        x_full = generate(p.distribution, (p.m, p.k * tp), 2 * p.seed, p.torch_in_dtype, self.dev)
        w_full = generate(p.distribution, (p.n, p.k * tp), 2 * p.seed + 1, p.torch_in_dtype, self.dev)
        gs_w = global_scale_encode_divisor(w_full.float().abs().amax()).reshape(1).to(self.dev)
        outs, refs, bounds = [], [], []
        for i in range(tp):
            sl = slice(i * p.k, (i + 1) * p.k)
            ops = self.ops(CLEAN, x=x_full[:, sl].contiguous(), w=w_full[:, sl].contiguous(), gs_w=gs_w)
            outs.append(self.call(ops)[:, :p.n])
            ref, bound = self.reference(ops)
            refs.append(ref)
            bounds.append(bound)
        return checks.tp_row_consistency(outs, refs, bounds, p.torch_out_dtype)

    def graph_replay(self, replay: Callable | None = None) -> PropertyResult:
        """Capture the backend's call on clean operands in a CUDA graph; then write new activations
        (new real data; weights unchanged, as in serving) into the captured buffers and poison every
        padding region the trial names (NaN 0x7F unless it draws another byte), replay, and compare
        with eager execution on exactly those operands.  ``replay`` (default
        :func:`~harness.experiments.capture_and_replay`) does capture, refill and replay; another
        one is for testing the orchestration without a GPU."""
        replay = graph_replayer(self.backend.requirements, self.dev, replay, "the backend")
        p = self.problem
        poison = replace(self.trial.poison, stale_memory=False)
        static, handed = guard_operands(self.ops(CLEAN))
        x_new = generate(p.distribution, (p.m, p.k), 2 * p.seed + 3, p.torch_in_dtype, self.dev)
        fresh = self.ops(poison, x=x_new)
        out = replay(lambda: self.backend.run(static), lambda: refill_operands(static, fresh))
        sync()
        check_guards(handed)
        out = self._checked(out, static)
        eager = self.call(fresh)
        return checks.graph_replay(eager, out, p.m, p.n, tuple(poison.regions()))

    def batch_invariance(self) -> PropertyResult:
        p = self.problem
        extra = generate(p.distribution, (1 + p.seed % 97, p.k), 2 * p.seed + 2, p.torch_in_dtype, self.dev)
        gs_a = self._gs("a", self.x)
        small = self.call(self.ops(CLEAN, gs_a=gs_a))
        large = self.call(self.ops(CLEAN, x=torch.cat([self.x, extra]), gs_a=gs_a))
        return checks.batch_invariance(small[:, :p.n], large[:, :p.n], p.m)
