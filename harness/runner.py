"""Run one property of one backend on one case: the engine behind properties/, replay and selftest.

A :class:`~harness.trial.Trial` names everything needed to rebuild a case bit for bit (backend,
property, problem, poison, activation layout, TP split).  :func:`execute` builds the operands with the pipeline, calls
the backend, evaluates the property with :mod:`harness.checks` and classifies what happened:

* ``pass`` / ``fail``: the property held or not (a backend that raises on a call it declared
  supported, or returns the wrong shape, fails);
* ``skip``: the backend does not run here (declared, or :class:`Unsupported` at call time), with
  the reason;
* ``crash``: a sticky CUDA error (illegal address, ...): the CUDA context is unusable and the
  process must end before the next case (:class:`ContextLost`).
"""

from __future__ import annotations

import hashlib
import time
import traceback
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from harness import env as env_mod
from harness.backends import registry
from harness.backends.protocol import (
    CheckpointBackend,
    GemmBackend,
    LinearBackend,
    LoadedLinear,
    QuantizerBackend,
    Unsupported,
)
from harness import checks
from harness.data import generate
from harness.format import (
    BLOCK_SIZE,
    FP4_AMAX_PRODUCT,
    block_scale_and_inverse,
    global_scale_encode_divisor,
    reference_dequantize,
    reference_quantize,
    unpack_e2m1,
)
from harness.layouts import ScaleLayout, round_up, unswizzle
from harness.oracle import error_bound, reference_gemm, reference_linear
from harness.pipeline import CheckpointWeight, operands_from
from harness.problem import CLEAN, GemmProblem, Poison, poison_kind
from harness.trial import Outcome, PropertyResult, Trial, properties_for

STICKY_CUDA_ERRORS = ("illegal memory access", "illegal instruction", "misaligned address",
                      "unspecified launch failure", "device-side assert", "an illegal address",
                      "cuda error: unknown error", "context is destroyed")


class ContextLost(RuntimeError):
    """A sticky CUDA error: every later CUDA call in this process would fail."""


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(status, message) for an exception raised by a backend call."""
    msg = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, Unsupported):
        return "skip", f"unsupported: {exc}"
    low = msg.lower()
    if any(s in low for s in STICKY_CUDA_ERRORS):
        return "crash", msg
    return "fail", msg


def _device() -> torch.device:
    return env_mod.current().torch_device


NOT_APPLICABLE = "not applicable: "
"""Reason prefix of a skip that holds for every example of the test (the property cannot be checked
on this backend at all), as opposed to one example the backend refused."""


def interpreter_overflow_quiet(env: "env_mod.Environment | None" = None):
    """Under the Triton interpreter, numpy's "overflow encountered in cast" warnings off, for one trial.

    The interpreter emulates a kernel's fp32 -> fp16/bf16/e4m3 conversions with numpy ``astype``,
    which warns where the GPU silently saturates to inf.  The harness provokes such values on purpose
    (poisoned padding: NaN, 448, 0xFF bytes; fp16 outputs of real models' TP shards), and the checks
    judge the resulting inf/NaN themselves, so the warning says nothing.  Only numpy's overflow
    reporting is changed, only while a trial runs, only under the interpreter; every other warning
    (and overflow anywhere else) is untouched.  Returns a context manager."""
    env = env or env_mod.current()
    return np.errstate(over="ignore") if env.interpreter else nullcontext()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def poison_allocator(device: torch.device, byte: int = 0x7F, sizes: tuple[int, ...] = ()) -> None:
    """Fill and free memory with ``byte`` so the next ``torch.empty`` of a similar size starts dirty
    (the stale-buffer bug class: vLLM #27439, #45741).  Deterministic under the CUDA caching
    allocator; best effort on the CPU allocator."""
    sizes = sizes or tuple(1 << s for s in range(6, 22, 2))
    bufs = [torch.full((s,), byte, dtype=torch.uint8, device=device) for s in sizes]
    del bufs


# ----------------------------------------------------------------------------------------------
# GEMM level
# ----------------------------------------------------------------------------------------------
class _Gemm:
    def __init__(self, backend: GemmBackend, trial: Trial, device: torch.device):
        self.b = backend
        self.t = trial
        self.p = trial.problem
        self.dev = device
        req = backend.requirements
        self.layout = ScaleLayout.parse(trial.a_layout) if trial.a_layout else req.a_layouts[0]
        if self.layout not in req.a_layouts:
            raise ValueError(f"a_layout={self.layout.value!r}: backend {backend.name!r} takes "
                             f"{[l.value for l in req.a_layouts]}")
        self.x = self.p.activations(device)
        self.w = self.p.weights(device)
        self.first_ops = None  # the digest is taken of the first operands built, when asked for

    @property
    def digest(self) -> str | None:
        return self.first_ops.digest() if self.first_ops is not None else None

    def _gs(self, which: str, t: torch.Tensor) -> torch.Tensor:
        cache = self.__dict__.setdefault("_gs_cache", {})
        if which not in cache:
            cache[which] = global_scale_encode_divisor(t.float().abs().amax()).reshape(1).to(t.device)
        return cache[which]

    def ops(self, poison: Poison, x=None, w=None, **kw):
        req = self.b.requirements
        args = dict(a_layout=self.layout, w_layout=req.w_layout, n_align=req.n_align, k_align=req.k_align,
                    poison=poison, activation=req.activation)
        # the problem's own tensors: their global scales once per case, not per operand build
        if x is None:
            args["gs_a"] = self._gs("a", self.x)
        if w is None:
            args["gs_w"] = self._gs("w", self.w)
        args.update(kw)
        ops = operands_from(self.x if x is None else x, self.w if w is None else w, self.p, **args)
        if self.first_ops is None:
            self.first_ops = ops
        return ops

    def call(self, ops, out=None) -> torch.Tensor:
        res = self.b.run(ops, out=out) if out is not None else self.b.run(ops)
        _sync()
        want = (ops.m, ops.w.rows_alloc)
        if not isinstance(res, torch.Tensor) or tuple(res.shape) != want or res.dtype != ops.out_dtype:
            got = (tuple(res.shape), res.dtype) if isinstance(res, torch.Tensor) else type(res).__name__
            raise _ContractViolation(f"returned {got}, expected shape {want} dtype {ops.out_dtype}")
        return res

    def reference(self, ops):
        ref = reference_gemm(ops)
        return ref, error_bound(ref, self.b.requirements.precision, ops.out_dtype)

    def agreement(self, ops, out) -> PropertyResult:
        ref, bound = self.reference(ops)
        return checks.reference_agreement(out, ref, bound, ops.out_dtype, (out.shape[0], out.shape[1]))

    # --- properties -------------------------------------------------------------------------
    def reference_agreement(self) -> PropertyResult:
        ops = self.ops(replace(self.t.poison, k_tail=0, stale_memory=False))
        return self.agreement(ops, self.call(ops))

    def _isolation(self, region: str) -> PropertyResult:
        byte = getattr(self.t.poison, region) or 0x7F
        pois = Poison(**{region: byte}, data=self.t.poison.data)
        clean = self.call(self.ops(CLEAN))
        dirty = self.call(self.ops(pois))
        fn = checks.row_isolation if region == "m_pad" else checks.column_isolation
        return fn(clean, dirty, self.p.m, self.p.n, region, poison_kind(byte))

    def row_isolation(self) -> PropertyResult:
        return self._isolation("m_pad")

    def column_isolation(self) -> PropertyResult:
        return self._isolation("n_pad")

    def k_tail(self) -> PropertyResult:
        byte = self.t.poison.k_tail or 0x7F
        clean_ops = self.ops(CLEAN)
        clean = self.call(clean_ops)
        dirty = self.call(self.ops(Poison(k_tail=byte)))
        kb = clean_ops.a.k_alloc // BLOCK_SIZE
        has_tail = (kb != self.p.k // BLOCK_SIZE) or any(
            q.scales.shape[1] != self.p.k // BLOCK_SIZE for q in (clean_ops.a, clean_ops.w))
        res = checks.k_tail(clean, dirty, self.p.m, self.p.n, poison_kind(byte), has_tail)
        # and the pipeline itself always zeroes the tail
        for q in (clean_ops.a, clean_ops.w):
            z = checks.pipeline_zeroes_k_tail(q.scales, q.padding_map().regions)
            if not z.ok:
                return z
        return res

    def output_coverage(self) -> PropertyResult:
        ops = self.ops(CLEAN)
        out = torch.full((ops.m, ops.w.rows_alloc), float("nan"), dtype=ops.out_dtype, device=self.dev)
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
        req = self.b.requirements
        p = self.p
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
            raise _NotApplicable("the backend declares no shape or dtype limit to probe")
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
        self.p = prob
        ops = self.ops(CLEAN, x=x, w=w, **kw)
        try:
            out = self.b.run(ops)
            _sync()
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
        tp, p = max(2, self.t.tp), self.p
        if self.t.parallel == "column":
            w_full = generate(p.distribution, (p.n * tp, p.k), 2 * p.seed + 1, p.torch_in_dtype, self.dev)
            gs_w = global_scale_encode_divisor(w_full.float().abs().amax()).reshape(1).to(self.dev)
            gs_a = global_scale_encode_divisor(self.x.float().abs().amax()).reshape(1).to(self.dev)
            full = self.call(self.ops(CLEAN, w=w_full, gs_a=gs_a, gs_w=gs_w))[:, :p.n * tp]
            shard_ops = [self.ops(CLEAN, w=w_full[i * p.n:(i + 1) * p.n], gs_a=gs_a, gs_w=gs_w) for i in range(tp)]
            shards = [self.call(o)[:, :p.n] for o in shard_ops]
            if self.b.requirements.column_bitwise:
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

    def batch_invariance(self) -> PropertyResult:
        p = self.p
        extra = generate(p.distribution, (1 + p.seed % 97, p.k), 2 * p.seed + 2, p.torch_in_dtype, self.dev)
        gs_a = global_scale_encode_divisor(self.x.float().abs().amax()).reshape(1).to(self.dev)
        small = self.call(self.ops(CLEAN, gs_a=gs_a))
        large = self.call(self.ops(CLEAN, x=torch.cat([self.x, extra]), gs_a=gs_a))
        return checks.batch_invariance(small[:, :p.n], large[:, :p.n], p.m)


class _ContractViolation(Exception):
    pass


class _NotApplicable(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# Linear level
# ----------------------------------------------------------------------------------------------
def linear_inputs(problem: GemmProblem, device) -> tuple[torch.Tensor, CheckpointWeight, torch.Tensor]:
    shape = tuple(problem.batch) if problem.batch else (problem.m,)
    x = generate(problem.distribution, (*shape, problem.k), 2 * problem.seed, problem.torch_in_dtype, device)
    weight = CheckpointWeight.from_dense(problem.weights(device))
    bias = problem.bias(device).to(problem.torch_in_dtype)
    return x, weight, bias


class _Linear:
    def __init__(self, backend: LinearBackend, trial: Trial, device):
        self.b, self.t, self.p, self.dev = backend, trial, trial.problem, device
        self.x, self.weight, self.bias = linear_inputs(self.p, device)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.x, self.weight.packed, self.weight.scales, self.weight.weight_scale_2, self.bias):
            h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def call(self, x=None) -> torch.Tensor:
        x = self.x if x is None else x
        if self.t.poison.stale_memory:
            poison_allocator(self.dev)
        out = self.b.run(x, self.weight, self.bias)
        _sync()
        want = (*x.shape[:-1], self.weight.n)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise _ContractViolation(f"output shape {got}, expected {want} for input {tuple(x.shape)}")
        return out

    def reference_agreement(self) -> PropertyResult:
        out = self.call()
        req = self.b.requirements
        ref = reference_linear(self.x, self.weight, self.bias, round_up(self.p.k, req.k_align),
                               dense_activation=req.activation == "bf16")
        bound = error_bound(ref, req.precision, out.dtype, bias_in_out_dtype=True)
        flat = out.reshape(-1, out.shape[-1])
        return checks.reference_agreement(flat, ref, bound, out.dtype, bias_in_out_dtype=True)

    def determinism(self) -> PropertyResult:
        return checks.determinism(self.call().clone(), self.call().clone())

    def batch_invariance(self) -> PropertyResult:
        x2 = self.x.reshape(-1, self.p.k)
        extra = generate(self.p.distribution, (1 + self.p.seed % 97, self.p.k), 2 * self.p.seed + 2,
                         self.p.torch_in_dtype, self.dev) * 0.5
        small = self.call(x2)
        large = self.call(torch.cat([x2, extra]))
        return checks.batch_invariance(small, large, x2.shape[0])


# ----------------------------------------------------------------------------------------------
# Quantizer level
# ----------------------------------------------------------------------------------------------
def _bytes_against_reference(x: torch.Tensor, gs: torch.Tensor, packed: torch.Tensor, logical: torch.Tensor,
                             declared: tuple[str, ...], prop: str) -> PropertyResult:
    """:func:`checks.quantizer_agreement` of (packed, linear scale bytes) against the reference
    quantizer run on x [rows, k] with encode divisor gs."""
    rows, k = x.shape
    codes, sf = reference_quantize(x.cpu(), gs.cpu())
    if packed.shape[0] < rows or packed.shape[1] < k // 2:
        raise _ContractViolation(f"packed output {tuple(packed.shape)} smaller than ({rows}, {k // 2})")
    xf = x.cpu().float().reshape(rows, k // 16, 16)
    _, inv = block_scale_and_inverse(xf.abs().amax(-1), gs.cpu())
    scaled = (xf * inv.unsqueeze(-1)).reshape(rows, k)
    prerounding = (gs.cpu() * xf.abs().amax(-1)) / 6.0
    return checks.quantizer_agreement(packed.view(torch.uint8).cpu(), logical, codes, sf, scaled, declared,
                                      prerounding, prop=prop)


def _input_digest(*tensors: torch.Tensor):
    def digest() -> str:
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    return digest


def _quantizer_agreement(backend: QuantizerBackend, trial: Trial, device) -> tuple[PropertyResult, object]:
    p = trial.problem
    x = p.activations(device)
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1).to(device)
    packed, scales = backend.quantize(x, gs)
    _sync()
    logical = unswizzle(scales.reshape(scales.shape[0], -1).view(torch.uint8).cpu(), backend.layout) \
        if backend.layout is not ScaleLayout.LINEAR else scales.view(torch.uint8).cpu()
    declared = tuple(getattr(backend, "known_differences", ()))
    return _bytes_against_reference(x, gs, packed, logical, declared, "quantizer_agreement"), _input_digest(x)


# ----------------------------------------------------------------------------------------------
# Checkpoint level
# ----------------------------------------------------------------------------------------------
def evaluate_checkpoint(w: torch.Tensor, x_amax: torch.Tensor, loaded: LoadedLinear,
                        declared: tuple[str, ...] = ()) -> PropertyResult:
    """:func:`checks.checkpoint_convention` of a loaded layer against the reference NVFP4 form of the
    dense weight ``w`` [n, k] and the exact global scales of ``w`` and of activations calibrated to
    ``x_amax`` (the static input scale).  Raises :class:`_ContractViolation` on wrong shapes."""
    n, k = w.shape
    packed = loaded.packed.view(torch.uint8)
    scales = loaded.scales.view(torch.uint8)
    if tuple(packed.shape) != (n, k // 2) or scales.numel() != n * (k // BLOCK_SIZE):
        raise _ContractViolation(f"loaded weight {tuple(packed.shape)} / scales {tuple(loaded.scales.shape)}, "
                                 f"expected ({n}, {k // 2}) / ({n}, {k // BLOCK_SIZE})")
    scales = scales.reshape(n, k // BLOCK_SIZE).cpu()
    w_amax = w.float().abs().amax()
    gs_w = global_scale_encode_divisor(w_amax).reshape(1).to(w.device)
    bytes_check = _bytes_against_reference(w, gs_w, packed, scales, declared, "checkpoint_convention")
    # exact conventions, in fp64: weight decode amax_w/2688, activation encode 2688/amax_x, alpha their
    # quotient (an all-zero tensor's global scale is 1, as format.global_scale_encode_divisor says)
    wa, xa = float(w_amax), float(x_amax)
    w_decode = wa / FP4_AMAX_PRODUCT if wa > 0 else 1.0
    x_encode = FP4_AMAX_PRODUCT / xa if xa > 0 else 1.0
    exact = {"weight_decode": w_decode, "input_encode": x_encode, "alpha": w_decode / x_encode}
    got = {"weight_decode": float(loaded.weight_decode.reshape(-1)[0]),
           "input_encode": float(loaded.input_encode.reshape(-1)[0]),
           "alpha": float(loaded.alpha.reshape(-1)[0])}
    deq = loaded.dequantize().cpu()
    codes, sf = reference_quantize(w.cpu(), gs_w.cpu())
    ref = reference_dequantize(codes, sf) * w_decode
    same = (unpack_e2m1(packed.cpu()) == codes) & (scales == sf).repeat_interleave(BLOCK_SIZE, dim=1)
    rel = ((deq - ref).abs() / ref.abs().clamp_min(torch.finfo(torch.float64).tiny))[same & (ref != 0)]
    rel_err = float(rel.max()) if rel.numel() else 0.0
    return checks.checkpoint_convention(bytes_check, {name: (got[name], exact[name]) for name in exact}, rel_err)


def _checkpoint_convention(backend: CheckpointBackend, trial: Trial, device) -> tuple[PropertyResult, object]:
    """Export the problem's weight [n, k] with its activations' amax as the calibrated input amax,
    load it as the engine would, compare with the reference quantizer and exact global scales."""
    p = trial.problem
    w = p.weights(device)
    x_amax = p.activations(device).float().abs().amax()
    loaded = backend.load(backend.export(w, x_amax.reshape(())))
    _sync()
    declared = tuple(getattr(backend, "known_differences", ()))
    return evaluate_checkpoint(w, x_amax, loaded, declared), _input_digest(w)


# ----------------------------------------------------------------------------------------------
def execute(trial: Trial, device: torch.device | None = None, *, digest: bool = False) -> Outcome:
    """Run ``trial`` and classify the outcome; raises :class:`ContextLost` only after a sticky
    CUDA error (the caller records the crash and ends the process).

    The operands' sha256 digest (for case files and replay) is taken when ``digest`` is set or the
    trial did not pass; hashing every byte of every passing case would dominate large shapes."""
    t0 = time.perf_counter()
    backend = registry.get(trial.backend)
    device = device or _device()
    env = env_mod.current()
    if trial.property not in properties_for(backend):
        raise ValueError(f"property={trial.property!r} does not apply to {backend.level}-level backend "
                         f"{backend.name!r}; it has {list(properties_for(backend))}")
    sup = backend.support(env)
    if not sup:
        return Outcome("skip", sup.reason, duration_s=time.perf_counter() - t0)
    if backend.level == "gemm":
        shape_ok = backend.shape_support(trial.problem.m, trial.problem.n, trial.problem.k,
                                         trial.problem.torch_out_dtype)
        if not shape_ok and trial.property != "clean_rejection":
            return Outcome("skip", f"outside declared support: {shape_ok.reason}", duration_s=time.perf_counter() - t0)
    holder = None  # what can compute the digest

    def take_digest(force: bool = False) -> str | None:
        if holder is None or not (digest or force):
            return None
        try:
            return holder() if callable(holder) else holder.digest
        except Exception:  # noqa: BLE001 - a digest must never hide the outcome
            return None

    a_layout = trial.a_layout
    try:
        with interpreter_overflow_quiet(env):
            if backend.level == "gemm":
                holder = _Gemm(backend, trial, device)  # type: ignore[arg-type]
                a_layout = holder.layout.value
                result = getattr(holder, trial.property)()
            elif backend.level == "linear":
                holder = _Linear(backend, trial, device)  # type: ignore[arg-type]
                result = getattr(holder, trial.property)()
            elif backend.level == "checkpoint":
                result, holder = _checkpoint_convention(backend, trial, device)  # type: ignore[arg-type]
            else:
                result, holder = _quantizer_agreement(backend, trial, device)  # type: ignore[arg-type]
    except _NotApplicable as exc:
        return Outcome("skip", f"{NOT_APPLICABLE}{exc}", duration_s=time.perf_counter() - t0, a_layout=a_layout)
    except _ContractViolation as exc:
        return Outcome("fail", f"broke the backend contract: {exc}", digest=take_digest(True),
                       duration_s=time.perf_counter() - t0, a_layout=a_layout,
                       result=PropertyResult(trial.property, False, f"broke the backend contract: {exc}", {}))
    except Exception as exc:  # noqa: BLE001 - every backend failure is a result
        status, msg = classify_exception(exc)
        if status == "crash":
            raise ContextLost(msg) from exc
        if status == "fail":
            msg = f"raised on a call it declared supported: {msg}"
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            return Outcome("fail", msg, PropertyResult(trial.property, False, msg, {"exception": tb[:500]}),
                           take_digest(True), time.perf_counter() - t0, a_layout)
        return Outcome(status, msg, None, take_digest(), time.perf_counter() - t0, a_layout)
    status = "pass" if result.ok else "fail"
    return Outcome(status, "" if result.ok else result.summary, result, take_digest(not result.ok),
                   time.perf_counter() - t0, a_layout)
