"""Real linear-layer shapes of public models, and their tensor-parallel shards, as plain data.

Each :class:`LayerShape` is one MLP / MoE-expert projection of a public model, full size
(``n_full`` x ``k_full``, i.e. the weight is [n, k] and the GEMM computes x[m, k] @ W[n, k]^T):

* gate_up (or up) projection: column-parallel, ``n = 2 * intermediate`` for gated (SwiGLU) MLPs,
  ``n = intermediate`` for the non-gated relu2 MLPs of Nemotron-H; ``k = hidden`` (the expert input
  width, which is the *latent* width for Nemotron-3-Super's LatentMoE experts);
* down projection: row-parallel, ``n = hidden``, ``k = intermediate``.

Column-parallel layers split N over the ranks, row-parallel layers split K
(:func:`shard`).  A 16-element NVFP4 scale block cannot straddle two ranks, so a
per-rank K that is not a multiple of 16 raises :class:`ShardError`; per-rank Ns
and Ks that are multiples of 16 but not of 32, 64 or 128 (464 = 29 blocks, 720 = 45 blocks) are
exactly the shapes that break kernels' alignment assumptions (vLLM PR #31099, NVFP4-NOTES.md
"TP splits that break alignment").

Where the numbers come from.  ``source`` names the model's Hugging Face repository and the
config.json keys the shape is computed from.  Every number below was checked (this session) with
the project's public-text search against copies of those config.json files; :data:`EVIDENCE` says
which copies.  Where a copy could not be found, ``source`` says
``"NVFP4-NOTES.md (not verified against config)"`` instead (no entry needs that today).
Model structure (which projections exist, gated or not, what an expert's input width is) follows
the serving code, e.g. vLLM ``vllm/model_executor/models/nemotron_h.py`` (``NemotronHMLP`` has
``up_proj``/``down_proj`` only; routed experts use ``moe_latent_size`` as their hidden width when it
is set; the shared expert uses ``hidden_size``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from harness.format import BLOCK_SIZE

Parallel = Literal["column", "row"]


class ShardError(ValueError):
    """A TP split that cannot be run as NVFP4 (e.g. a per-rank K that is not a multiple of 16)."""


@dataclass(frozen=True)
class TPShard:
    n: int
    k: int
    tp: int
    parallel: Parallel


def shard(n_full: int, k_full: int, tp: int, parallel: Parallel) -> TPShard:
    """Per-rank (n, k) of a linear layer [n_full, k_full] split over ``tp`` ranks.

    Column-parallel (gate_up, qkv) splits N; row-parallel (down, o) splits K.  A block of 16 K
    elements cannot straddle ranks, so a row-parallel shard's K must be a multiple of 16.
    """
    if tp < 1:
        raise ShardError(f"tp={tp}: expected a TP degree >= 1")
    if parallel not in ("column", "row"):
        raise ShardError(f"parallel={parallel!r}: expected 'column' or 'row'")
    dim, name = (n_full, "n") if parallel == "column" else (k_full, "k")
    if dim % tp:
        raise ShardError(f"{name}={dim} does not split evenly over tp={tp}")
    per = dim // tp
    if parallel == "row" and per % BLOCK_SIZE:
        raise ShardError(f"row-parallel shard k={per} (k={k_full} / tp={tp}) is not a multiple of {BLOCK_SIZE}: "
                         f"an NVFP4 scale block would straddle two ranks")
    return TPShard(n=per if parallel == "column" else n_full, k=per if parallel == "row" else k_full,
                   tp=tp, parallel=parallel)


UNVERIFIED = "NVFP4-NOTES.md (not verified against config)"
"""The ``source`` of an entry whose numbers could not be checked against a public config.json."""

DEFAULT_DEGREES: tuple[int, ...] = (1, 2, 4, 8)


@dataclass(frozen=True)
class LayerShape:
    """One linear layer of a public model at full (unsharded) size.

    ``model``: short model name; ``layer``: which projection ("moe down", "dense gate_up", ...);
    ``n_full`` x ``k_full``: the weight's [N, K]; ``parallel``: how TP splits it (column splits N,
    row splits K); ``source``: repository + config.json keys the numbers come from.
    """
    model: str
    layer: str
    n_full: int
    k_full: int
    parallel: Parallel
    source: str

    def __post_init__(self) -> None:
        if self.parallel not in ("column", "row"):
            raise ValueError(f"LayerShape.parallel={self.parallel!r}: expected 'column' or 'row'")
        for name in ("n_full", "k_full"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LayerShape.{name}={v!r}: expected a positive integer")
        if not self.source:
            raise ValueError(f"LayerShape {self.model} {self.layer}: source must cite a config")

    @property
    def split_dim(self) -> int:
        """The full dimension TP splits: N for column-parallel, K for row-parallel."""
        return self.n_full if self.parallel == "column" else self.k_full

    @property
    def verified(self) -> bool:
        """Whether the numbers were checked against a public config.json."""
        return not self.source.startswith(UNVERIFIED)

    def shard(self, tp: int) -> TPShard:
        """Per-rank shape at TP degree ``tp`` (raises :class:`ShardError` when it cannot be NVFP4)."""
        return shard(self.n_full, self.k_full, tp, self.parallel)


def _mlp(model: str, prefix: str, *, hidden: int, intermediate: int, gated: bool, repo: str,
         hidden_key: str, intermediate_key: str, up_name: str | None = None) -> tuple[LayerShape, LayerShape]:
    """The (gate_)up and down projections of one MLP / expert, with their config citations."""
    cfg = f"{repo} config.json: {intermediate_key}={intermediate}, {hidden_key}={hidden}"
    up = up_name or ("gate_up" if gated else "up")
    n_up = 2 * intermediate if gated else intermediate
    return (
        LayerShape(model, f"{prefix} {up}", n_up, hidden, "column",
                   cfg + (" (gate and up fused: n = 2*intermediate)" if gated else " (non-gated relu2 MLP)")),
        LayerShape(model, f"{prefix} down", hidden, intermediate, "row", cfg),
    )


NANO = "Nemotron-3-Nano-30B-A3B"
SUPER = "Nemotron-3-Super-120B-A12B"
QWEN25 = "Qwen2.5-72B"
QWEN3 = "Qwen3-30B-A3B"
GLM_AIR = "GLM-4.5-Air"
GPT_OSS = "gpt-oss-120b"
DSV3 = "DeepSeek-V3"
LLAMA3_8B = "Llama-3-8B"
LLAMA3_70B = "Llama-3-70B"
LLAMA31_405B = "Llama-3.1-405B"

CATALOG: tuple[LayerShape, ...] = (
    # Nemotron-H MLPs are up_proj -> relu2 -> down_proj (no gate).  Routed experts and the shared
    # expert both read hidden_size=2688 (no latent projection in Nano).
    *_mlp(NANO, "moe", hidden=2688, intermediate=1856, gated=False,
          repo="nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
          hidden_key="hidden_size", intermediate_key="moe_intermediate_size"),
    *_mlp(NANO, "shared", hidden=2688, intermediate=3712, gated=False,
          repo="nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
          hidden_key="hidden_size", intermediate_key="moe_shared_expert_intermediate_size"),
    # LatentMoE: routed experts run in moe_latent_size=1024 (fc1_latent_proj 4096 -> 1024 before,
    # fc2_latent_proj after, both replicated); the shared expert runs on hidden_size=4096.
    *_mlp(SUPER, "moe", hidden=1024, intermediate=2688, gated=False,
          repo="nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16",
          hidden_key="moe_latent_size", intermediate_key="moe_intermediate_size"),
    *_mlp(SUPER, "shared", hidden=4096, intermediate=5376, gated=False,
          repo="nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16",
          hidden_key="hidden_size", intermediate_key="moe_shared_expert_intermediate_size"),
    *_mlp(QWEN25, "dense", hidden=8192, intermediate=29568, gated=True,
          repo="Qwen/Qwen2.5-72B-Instruct", hidden_key="hidden_size", intermediate_key="intermediate_size"),
    # Qwen3-30B-A3B: every layer is MoE (decoder_sparse_step=1, mlp_only_layers=[]), no shared expert.
    *_mlp(QWEN3, "moe", hidden=2048, intermediate=768, gated=True,
          repo="Qwen/Qwen3-30B-A3B", hidden_key="hidden_size", intermediate_key="moe_intermediate_size"),
    # GLM-4.5-Air: first_k_dense_replace=1 dense layer; n_shared_experts=1 of moe_intermediate_size.
    *_mlp(GLM_AIR, "dense", hidden=4096, intermediate=10944, gated=True,
          repo="zai-org/GLM-4.5-Air", hidden_key="hidden_size", intermediate_key="intermediate_size"),
    *_mlp(GLM_AIR, "moe", hidden=4096, intermediate=1408, gated=True,
          repo="zai-org/GLM-4.5-Air", hidden_key="hidden_size", intermediate_key="moe_intermediate_size"),
    # gpt-oss (120b and 20b share these widths): experts' gate_up_proj is fused (2 * 2880).
    *_mlp(GPT_OSS, "moe", hidden=2880, intermediate=2880, gated=True,
          repo="openai/gpt-oss-120b", hidden_key="hidden_size", intermediate_key="intermediate_size"),
    # DeepSeek-V3/R1: first_k_dense_replace=3 dense layers; shared expert has the routed width.
    *_mlp(DSV3, "dense", hidden=7168, intermediate=18432, gated=True,
          repo="deepseek-ai/DeepSeek-V3", hidden_key="hidden_size", intermediate_key="intermediate_size"),
    *_mlp(DSV3, "moe", hidden=7168, intermediate=2048, gated=True,
          repo="deepseek-ai/DeepSeek-V3", hidden_key="hidden_size", intermediate_key="moe_intermediate_size"),
    *_mlp(LLAMA3_8B, "dense", hidden=4096, intermediate=14336, gated=True,
          repo="meta-llama/Meta-Llama-3-8B", hidden_key="hidden_size", intermediate_key="intermediate_size"),
    *_mlp(LLAMA3_70B, "dense", hidden=8192, intermediate=28672, gated=True,
          repo="meta-llama/Meta-Llama-3-70B", hidden_key="hidden_size", intermediate_key="intermediate_size"),
    *_mlp(LLAMA31_405B, "dense", hidden=16384, intermediate=53248, gated=True,
          repo="meta-llama/Llama-3.1-405B", hidden_key="hidden_size", intermediate_key="intermediate_size"),
)
"""Every catalogued layer, in the order of the NVFP4-NOTES.md table."""

EVIDENCE: dict[str, str] = {
    NANO: "config.json copies with identical values: huggingface.co/OpenResearcher/OpenResearcher-30B-A3B and "
          "huggingface.co/HebArabNlpProject/Hebatron (NemotronH fine-tunes of this model), and the full config "
          "embedded as NEMOTRON3_30B_JSON in a public nemotron3-jax model test; mlp_hidden_act=relu2",
    SUPER: "values quoted from the NVIDIA-Nemotron-3-Super-120B-A12B config in Megatron-Bridge's NemotronH "
           "bridge test (moe_intermediate_size=2688, moe_latent_size=1024, "
           "moe_shared_expert_intermediate_size=5376) and in public loaders' 'real hyperparameters' fixtures "
           "(hidden_size=4096); NVIDIA's Nemotron 3 Super deployment guide: latent d=4096 -> l=1024",
    QWEN25: "config.json of Qwen2.5-72B(-Instruct) derivatives on huggingface.co (e.g. ssmits/Qwen2.5-95B-Instruct, "
            "BitStack/BitStack-Qwen2.5-72B): hidden_size=8192, intermediate_size=29568",
    QWEN3: "config.json of Qwen3MoeForCausalLM 30B-A3B checkpoints on huggingface.co (e.g. "
           "RTP-LLM/Qwen3-Coder-30B-A3B-Instruct-RTPurbo): hidden_size=2048, moe_intermediate_size=768, "
           "mlp_only_layers=[]; Ascend MindSpeed-RL qwen3_30b_a3b.yaml: moe_ffn_hidden_size=768",
    GLM_AIR: "config.json of PrimeIntellect/INTELLECT-3-Base (Glm4MoeForCausalLM, 46 layers, GLM-4.5-Air base): "
             "hidden_size=4096, intermediate_size=10944, moe_intermediate_size=1408, first_k_dense_replace=1; "
             "the same values in a public GLM45_AIR_CONFIG test fixture",
    GPT_OSS: "original/config.json 'Duplicate from openai/gpt-oss-120b' (huggingface.co/witflag/AlphaMind): "
             "hidden_size=2880, intermediate_size=2880; keras_hub gpt_oss_20b: hidden_dim=2880, intermediate_dim=2880",
    DSV3: "deepseek-ai/DeepSeek-V3-Base inference/configs/config_671B.json: dim=7168, inter_dim=18432, "
          "moe_inter_dim=2048, n_dense_layers=3; HF-format config.json copies (amd/DeepSeek-R1-0528-MXFP4)",
    LLAMA3_8B: "config.json of meta-llama/Meta-Llama-3-8B derivatives on huggingface.co: hidden_size=4096, "
               "intermediate_size=14336",
    LLAMA3_70B: "config.json of meta-llama/Meta-Llama-3-70B derivatives on huggingface.co "
                "(_name_or_path meta-llama/Meta-Llama-3-70B): hidden_size=8192, intermediate_size=28672",
    LLAMA31_405B: "huggingface.co/migtissera/Meta-Llama-3.1-405B config.json and quantized copies "
                  "(_name_or_path meta-llama/Meta-Llama-3.1-405B): hidden_size=16384, intermediate_size=53248",
}
"""Where each model's numbers were checked (public copies of its config.json)."""


def layers(model: str | None = None) -> tuple[LayerShape, ...]:
    """Catalogued layers, all of them or those of one ``model``."""
    if model is None:
        return CATALOG
    found = tuple(entry for entry in CATALOG if entry.model == model)
    if not found:
        raise KeyError(f"no catalogued model {model!r}; known: {sorted({e.model for e in CATALOG})}")
    return found


def lookup(model: str, layer: str) -> LayerShape:
    """The catalogued layer ``layer`` (e.g. "moe down") of ``model``."""
    for entry in layers(model):
        if entry.layer == layer:
            return entry
    raise KeyError(f"{model} has no catalogued layer {layer!r}; known: {[e.layer for e in layers(model)]}")


def tp_cases(degrees: Iterable[int] = DEFAULT_DEGREES,
             catalog: Iterable[LayerShape] = CATALOG) -> Iterator[tuple[LayerShape, int, TPShard | str]]:
    """Every (layer, tp, per-rank shard) of the catalog; a shard that cannot be built is its message.

    Yields ``(layer, tp, TPShard)`` when :func:`shard` accepts the split and
    ``(layer, tp, "<ShardError message>")`` when it raises :class:`ShardError`.
    """
    degrees = tuple(degrees)
    for entry in catalog:
        for tp in degrees:
            try:
                yield entry, tp, entry.shard(tp)
            except ShardError as exc:
                yield entry, tp, str(exc)


def origin_label(layer: LayerShape, tp: int) -> str:
    """A readable origin for a problem cut from ``layer`` at TP ``tp``.

    E.g. ``"Nemotron-3-Nano-30B-A3B moe down 1856 / TP4 (row)"``: the number is the full dimension
    that TP splits (K for row-parallel, N for column-parallel).
    """
    return f"{layer.model} {layer.layer} {layer.split_dim} / TP{tp} ({layer.parallel})"
