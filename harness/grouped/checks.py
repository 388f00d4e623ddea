"""The grouped properties, and the engine that runs one grouped trial and classifies its outcome.

* ``reference_agreement``: every real output element within the bound of
  :mod:`harness.grouped.reference` (routing weights included), with the trial's padding poison.
* ``grouped_bytes``: the grouped buffer a quantizing backend builds equals, expert by expert, the
  reference quantizer's bytes of that expert's section with its input global scale (codes and
  scales of the real region; group row padding and K tail zero); zero-token experts occupy no rows.
* ``token_isolation``: poisoning one expert (the victim: its real weight scales, its weight global
  scale and the hidden rows of its tokens) and every group's padding leaves the output of every
  token not routed to the victim unchanged, bit for bit.
* ``zero_token_groups``: poisoning every zero-token expert's weights (packed bytes, scales, global
  scale) changes nothing, bit for bit (``grouped_bytes`` checks that they occupy no rows).

Fused-MoE trials (a :class:`~harness.grouped.problem.MoeProblem`):

* ``reference_agreement``: every output element within the bound of
  :mod:`harness.grouped.moe_reference` (FC1 -> SwiGLU -> requantize -> FC2 -> routed sum), with the
  trial's padding poison;
* ``fused_unfused``: the fused backend equals the unfused composition of the grouped stages
  (:func:`harness.backends.moe_triton.unfused_moe`): bit for bit where the backend declares
  ``bitwise_unfused`` (same arithmetic), otherwise within the sum of both reference bounds
  (``|fused - unfused| <= |fused - ref| + |ref - unfused|``).
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from harness.backends.moe_triton import MoeTritonFused, unfused_moe
from harness.backends.protocol import BackendContractError, Unsupported
from harness.format import reference_quantize, pack_e2m1
from harness.grouped import registry
from harness.grouped.pipeline import GroupedOperands, build_grouped_operands
from harness.grouped.moe import MoeOperands, build_moe_operands
from harness.grouped.moe_reference import moe_error_bound, reference_moe
from harness.grouped.problem import GroupedTrial, MoeProblem, properties_of
from harness.grouped.reference import grouped_error_bound, reference_grouped
from harness.layouts import ScaleLayout, swizzle
from harness.oracle import Reference, compare
from harness.runner import exception_outcome
from harness.trial import Outcome, PropertyResult
from harness import env as env_mod


class NotApplicable(Exception):
    """The property does not apply to this trial (recorded as a skip with the reason)."""


def _device() -> torch.device:
    return env_mod.current().torch_device


def _output(backend, ops: GroupedOperands) -> torch.Tensor:
    out = backend.run(ops)
    p = ops.problem
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != p.tokens or \
            out.shape[1] not in (p.n, ops.w.n_alloc) or out.dtype != ops.out_dtype:
        raise BackendContractError(f"{backend.name} returned {getattr(out, 'shape', out)} "
                                   f"{getattr(out, 'dtype', '')}; expected [{p.tokens}, {p.n} or {ops.w.n_alloc}] "
                                   f"{ops.out_dtype}")
    return out[:, :p.n]


def _token_units(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor,
                 accepted: torch.Tensor | None) -> torch.Tensor:
    """fp64 [tokens]: the largest ``|out - ref| / bound`` of each token's row; an infinity the oracle
    accepted as overflow (``accepted``, :func:`harness.oracle.overflow_accepted`) counts 0, as in
    :func:`harness.oracle.compare`; any other NaN/Inf counts as the largest fp64 value."""
    units = (out.double() - ref.to(out.device)).abs() / bound.to(out.device).clamp_min(1e-300)
    if accepted is not None:
        units = torch.where(accepted.to(units.device), torch.zeros_like(units), units)
    return torch.nan_to_num(units, nan=float("inf")).amax(dim=1).cpu()


def per_expert_errors(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, ops: GroupedOperands,
                      accepted: torch.Tensor | None = None) -> list[dict]:
    """The per-expert view of a comparison: for each expert, its token count and the largest
    ``|out - ref| / bound`` over the tokens routed to it (inf for a rejected non-finite output, 0 for
    an accepted overflow; None for a zero-token expert), and ``bad_tokens``: the tokens of its
    section beyond the bound (the first 32).  A token routed to several experts counts for each of
    them."""
    units = _token_units(out, ref, bound, accepted)
    view = []
    for e, sec in enumerate(ops.problem.sections()):
        worst = max((float(units[t]) for t, _ in sec), default=None)
        bad = [t for t, _ in sec if not float(units[t]) <= 1.0][:32]
        view.append({"expert": e, "tokens": len(sec), "max_err_units": worst, "bad_tokens": bad})
    return view


def reference_agreement(backend, ops: GroupedOperands) -> PropertyResult:
    out = _output(backend, ops)
    ref = reference_grouped(ops)
    bound = grouped_error_bound(ops, ref, backend.requirements.precision, backend.intermediate)
    agr = compare(out, Reference(ref.value, ref.value.abs(), ops.a.k_alloc), bound, ops.out_dtype)
    measure = {"max_err_units": agr.max_err_units, "violations": agr.violations,
               "argmax": list(agr.argmax) if agr.argmax else None, "nan_tokens": agr.nan_rows[:32],
               "splits": list(ops.problem.splits),
               "per_expert": per_expert_errors(out, ref.value, bound, ops, agr.accepted)}
    if agr.ok:
        return PropertyResult("reference_agreement", True, f"within bound ({agr.max_err_units:.3g} of it)", measure)
    t = agr.argmax[0] if agr.argmax else None
    experts = list(ops.problem.topk_ids[t]) if t is not None else []
    bad_experts = [v["expert"] for v in measure["per_expert"] if v["max_err_units"] is not None and
                   not v["max_err_units"] <= 1.0]
    return PropertyResult("reference_agreement", False,
                          f"{agr.violations} elements outside the bound (max {agr.max_err_units:.3g}x at token "
                          f"{t}, experts {experts}; experts with tokens out of bound {bad_experts}; non-finite "
                          f"tokens {agr.nan_rows[:8]})", measure)


def check_quantizes(backend) -> None:
    """NotApplicable for ``grouped_bytes`` on a backend that quantizes nothing itself."""
    if not backend.quantizes:
        raise NotApplicable(f"{backend.name} takes the pipeline's grouped buffer (it quantizes nothing)")


def grouped_bytes(backend, ops: GroupedOperands) -> PropertyResult:
    check_quantizes(backend)
    g = backend.quantize(ops)
    p = ops.problem
    bad: list[str] = []
    bad_experts: list[int] = []
    if tuple(g.splits) != p.splits:
        bad.append(f"splits {list(g.splits)} != {list(p.splits)}")
    for e, sec in enumerate(p.sections()):
        rows = g.row_offsets[e + 1] - g.row_offsets[e]
        if not sec:
            if rows or g.sf_row_offsets[e + 1] != g.sf_row_offsets[e]:
                bad.append(f"zero-token expert {e} occupies {rows} rows")
                bad_experts.append(e)
            continue
        idx = torch.tensor([t for t, _ in sec], device=ops.hidden.device)
        codes, sf = reference_quantize(ops.hidden[idx], ops.input_scales[e])
        q = g.group(e)
        kb = p.k // 16
        want_packed = torch.zeros_like(q.packed)
        want_packed[:len(sec), :p.k // 2] = pack_e2m1(codes)
        lin = torch.zeros((q.scales.shape[0], q.scales.shape[1]), dtype=torch.uint8, device=sf.device)
        lin[:len(sec), :kb] = sf
        want_sf = swizzle(lin, q.layout).reshape(q.scales.shape)
        if not torch.equal(q.packed.cpu(), want_packed.cpu()):
            diff = int((q.packed.cpu() != want_packed.cpu()).sum())
            bad.append(f"expert {e}: {diff} packed bytes differ")
            bad_experts.append(e)
        if not torch.equal(q.scales.cpu(), want_sf.cpu()):
            diff = int((q.scales.cpu() != want_sf.cpu()).sum())
            bad.append(f"expert {e}: {diff} scale bytes differ")
            bad_experts.append(e)
    measure = {"splits": list(p.splits), "mismatches": bad[:16], "bad_experts": sorted(set(bad_experts))}
    if bad:
        return PropertyResult("grouped_bytes", False, "; ".join(bad[:4]), measure)
    return PropertyResult("grouped_bytes", True, "every section equals the reference quantizer's bytes", measure)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bool [rows]: rows whose bytes are identical (NaN payloads included)."""
    va = a.contiguous().view(torch.uint8).reshape(a.shape[0], -1)
    vb = b.contiguous().view(torch.uint8).reshape(b.shape[0], -1)
    return (va == vb).all(dim=1)


def _poison_experts(ops: GroupedOperands, experts: list[int], byte: int, hidden_too: bool) -> GroupedOperands:
    """``ops`` with the given experts' weights poisoned: every real weight scale byte ``byte``, packed
    bytes 0x77 (code 7 = 6.0 in both nibbles), weight global scale NaN; with ``hidden_too`` the
    hidden rows of their tokens become NaN."""
    w = ops.w
    packed, scales, gs = w.packed.clone(), w.scales.clone(), w.global_scales.clone()
    p = ops.problem
    real = torch.zeros((scales.shape[1], scales.shape[2]), dtype=torch.uint8)
    real[:p.n, :p.k // 16] = 1
    mask = swizzle(real, ScaleLayout.SWIZZLED_128x4).reshape(scales.shape[1:]).bool().to(scales.device)
    hidden = ops.hidden.clone()
    alpha = ops.alpha.clone()
    for e in experts:
        scales[e][mask] = byte
        packed[e, :p.n, :p.k // 2] = 0x77
        gs[e] = float("nan")
        alpha[e] = float("nan")
        if hidden_too:
            rows = [t for t, _ in p.sections()[e]]
            if rows:
                hidden[torch.tensor(rows, device=hidden.device)] = float("nan")
    return replace(ops, hidden=hidden, alpha=alpha, w=replace(w, packed=packed, scales=scales, global_scales=gs))


def token_isolation(backend, ops_clean: GroupedOperands, ops_padded: GroupedOperands, victim: int,
                    byte: int) -> PropertyResult:
    base = _output(backend, ops_clean)
    pois = _output(backend, _poison_experts(ops_padded, [victim], byte, hidden_too=True))
    p = ops_clean.problem
    others = [t for t in range(p.tokens) if victim not in p.topk_ids[t]]
    if not others:
        raise NotApplicable(f"every token is routed to expert {victim}")
    same = _same_bits(base, pois)
    changed = [t for t in others if not bool(same[t])]
    measure = {"victim": victim, "victim_byte": byte, "other_tokens": len(others), "changed_tokens": changed[:32],
               "regions": ops_padded.poison.regions()}
    if changed:
        return PropertyResult("token_isolation", False,
                              f"{len(changed)} of {len(others)} tokens not routed to expert {victim} changed when "
                              f"it (and padding {ops_padded.poison.regions() or 'none'}) was poisoned: tokens "
                              f"{changed[:8]}", measure)
    return PropertyResult("token_isolation", True, f"{len(others)} tokens unchanged", measure)


def zero_token_groups(backend, ops: GroupedOperands) -> PropertyResult:
    zeros = list(ops.problem.zero_token_experts)
    if not zeros:
        raise NotApplicable("every expert has tokens")
    base = _output(backend, ops)
    pois = _output(backend, _poison_experts(ops, zeros, 0x7F, hidden_too=False))
    same = _same_bits(base, pois)
    changed = [t for t in range(ops.problem.tokens) if not bool(same[t])]
    measure = {"zero_token_experts": zeros, "changed_tokens": changed[:32]}
    if changed:
        return PropertyResult("zero_token_groups", False,
                              f"poisoning zero-token experts {zeros} changed tokens {changed[:8]}", measure)
    return PropertyResult("zero_token_groups", True, f"zero-token experts {zeros} disturb nothing", measure)


# ----------------------------------------------------------------------------------------------
# fused MoE
# ----------------------------------------------------------------------------------------------
def _moe_output(backend, ops: MoeOperands) -> torch.Tensor:
    out = backend.run(ops)
    p = ops.problem
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != p.tokens or \
            out.shape[1] not in (p.hidden, ops.w2.n_alloc) or out.dtype != ops.out_dtype:
        raise BackendContractError(f"{backend.name} returned {getattr(out, 'shape', out)} "
                                   f"{getattr(out, 'dtype', '')}; expected [{p.tokens}, {p.hidden} or "
                                   f"{ops.w2.n_alloc}] {ops.out_dtype}")
    return out[:, :p.hidden]


def _moe_check_scales(backend, ops: MoeOperands) -> None:
    if ops.problem.fc1_input_scale not in backend.fc1_scale_granularities:
        raise Unsupported(f"{backend.name} takes FC1 input scales {list(backend.fc1_scale_granularities)}; the problem "
                          f"has {ops.problem.fc1_input_scale!r}")


def _moe_view(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, ops: MoeOperands,
              accepted: torch.Tensor | None = None) -> list[dict]:
    units = _token_units(out, ref, bound, accepted)
    return [{"expert": e, "tokens": len(sec), "max_err_units": max((float(units[t]) for t, _ in sec), default=None)}
            for e, sec in enumerate(ops.problem.sections())]


def moe_reference_agreement(backend, ops: MoeOperands) -> PropertyResult:
    _moe_check_scales(backend, ops)
    out = _moe_output(backend, ops)
    ref = reference_moe(ops, getattr(backend, "activation_quant", True))
    bound = moe_error_bound(ops, ref, backend)
    agr = compare(out, Reference(ref.value, ref.value.abs(), ops.problem.intermediate), bound, ops.out_dtype)
    view = _moe_view(out, ref.value, bound, ops, agr.accepted)
    measure = {"max_err_units": agr.max_err_units, "violations": agr.violations,
               "argmax": list(agr.argmax) if agr.argmax else None, "nan_tokens": agr.nan_rows[:32],
               "splits": list(ops.problem.splits), "per_expert": view}
    if agr.ok:
        return PropertyResult("reference_agreement", True, f"within bound ({agr.max_err_units:.3g} of it)", measure)
    t = agr.argmax[0] if agr.argmax else None
    bad = [v["expert"] for v in view if v["max_err_units"] is not None and not v["max_err_units"] <= 1.0]
    return PropertyResult("reference_agreement", False,
                          f"{agr.violations} elements outside the bound (max {agr.max_err_units:.3g}x at token {t}, "
                          f"experts {list(ops.problem.topk_ids[t]) if t is not None else []}; experts with tokens "
                          f"out of bound {bad}; non-finite tokens {agr.nan_rows[:8]})", measure)


def fused_unfused(backend, ops: MoeOperands) -> PropertyResult:
    if not getattr(backend, "activation_quant", True):
        raise NotApplicable(f"{backend.name} is weight-only (W4A16): the unfused grouped stages quantize the "
                            f"activations to NVFP4")
    _moe_check_scales(backend, ops)
    fused = _moe_output(backend, ops)
    unfused = unfused_moe(ops)[:, :ops.problem.hidden]
    p = ops.problem
    if backend.bitwise_unfused:
        same = _same_bits(fused, unfused)
        changed = [t for t in range(p.tokens) if not bool(same[t])]
        measure = {"bitwise": True, "changed_tokens": changed[:32], "splits": list(p.splits)}
        if changed:
            diff = (fused.double() - unfused.double()).abs().nan_to_num(nan=float("inf")).max().item()
            return PropertyResult("fused_unfused", False,
                                  f"{len(changed)} of {p.tokens} tokens differ from the unfused grouped stages "
                                  f"(max |diff| {diff:.3g}): tokens {changed[:8]}", measure)
        return PropertyResult("fused_unfused", True, "bit for bit equal to the unfused grouped stages", measure)
    ref = reference_moe(ops)
    allowed = moe_error_bound(ops, ref, backend) + moe_error_bound(ops, ref, MoeTritonFused())
    diff = (fused.double() - unfused.double()).abs()
    bad = ~(diff <= allowed.to(diff.device))
    measure = {"bitwise": False, "violations": int(bad.sum()), "splits": list(p.splits)}
    if bool(bad.any()):
        t = int(bad.any(dim=1).nonzero()[0])
        return PropertyResult("fused_unfused", False, f"{int(bad.sum())} elements differ from the unfused grouped "
                              f"stages by more than both bounds (first at token {t})", measure)
    return PropertyResult("fused_unfused", True, "within both bounds of the unfused grouped stages", measure)


def check_kind(backend, problem) -> None:
    """NotApplicable unless ``backend`` is of the problem's kind: a fused-MoE layer for a
    :class:`~harness.grouped.problem.MoeProblem`, a grouped GEMM for a grouped GEMM problem."""
    kind = getattr(backend, "kind", "grouped")
    if isinstance(problem, MoeProblem):
        if kind != "moe":
            raise NotApplicable(f"{backend.name} is a grouped GEMM, not a fused-MoE layer")
    elif kind != "grouped":
        raise NotApplicable(f"{backend.name} is a fused-MoE layer; the trial is a grouped GEMM")


def run_moe_property(backend, trial: GroupedTrial, device) -> tuple[PropertyResult, MoeOperands]:
    check_kind(backend, trial.problem)
    ops = build_moe_operands(trial.problem, trial.poison, device=device)
    fn = {"reference_agreement": moe_reference_agreement, "fused_unfused": fused_unfused}[trial.property]
    return fn(backend, ops), ops


def run_property(backend, trial: GroupedTrial, device) -> tuple[PropertyResult, GroupedOperands]:
    p = trial.problem
    if isinstance(p, MoeProblem):
        return run_moe_property(backend, trial, device)
    check_kind(backend, p)
    if trial.property == "token_isolation":
        victim = trial.poison.victim if trial.poison.victim is not None else 0
        clean = build_grouped_operands(p, device=device)
        padded = build_grouped_operands(p, replace(trial.poison, k_tail=0), device=device)
        # the padded run keeps the clean run's input scales (they are inputs of the backend)
        return token_isolation(backend, clean, padded, victim, trial.poison.victim_byte), padded
    ops = build_grouped_operands(p, trial.poison, device=device)
    fn = {"reference_agreement": reference_agreement, "grouped_bytes": grouped_bytes,
          "zero_token_groups": zero_token_groups}[trial.property]
    return fn(backend, ops), ops


def execute(trial: GroupedTrial, device: torch.device | None = None, *, digest: bool = False) -> Outcome:
    """Run a grouped trial and classify it as the GEMM engine does (:func:`harness.runner.execute`)."""
    t0 = time.perf_counter()
    backend = registry.get(trial.backend)
    device = device or _device()
    if trial.property not in properties_of(trial.problem):
        raise ValueError(f"property={trial.property!r}: expected one of {list(properties_of(trial.problem))}")
    sup = backend.support(env_mod.current())
    if not sup:
        return Outcome("skip", sup.reason, duration_s=time.perf_counter() - t0)
    ops = None
    try:
        result, ops = run_property(backend, trial, device)
    except NotApplicable as exc:
        return Outcome("skip", f"not applicable: {exc}", duration_s=time.perf_counter() - t0)
    except Unsupported as exc:
        return Outcome("skip", str(exc), duration_s=time.perf_counter() - t0)
    except BackendContractError as exc:
        msg = f"broke the backend contract: {exc}"
        return Outcome("fail", msg, PropertyResult(trial.property, False, msg, {}), None, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - every backend failure is a result
        return exception_outcome(trial.property, exc, t0)
    dg = ops.digest() if (digest or not result.ok) and ops is not None else None
    return Outcome("pass" if result.ok else "fail", "" if result.ok else result.summary, result, dg,
                   time.perf_counter() - t0)
