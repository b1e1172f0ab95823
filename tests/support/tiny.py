"""Tiny random models of every registry type, with a tiny tokenizer, for fast offline tests.

``make_tiny("llama", tmp_path)`` writes a Hugging Face model directory (config, safetensors,
tokenizer) that ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load
offline. Models are a few hundred kB: 3-4 layers, hidden 32, intermediate 64, vocab 384.

Variants that differ only in config flags have their own names (see ``TINY_TYPES``):
``gpt_neox`` is the parallel-residual form (the HF default), ``gpt_neox_seq`` the sequential one.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

VOCAB = 384
HIDDEN = 32
INTERMEDIATE = 64
LAYERS = 4
HEADS = 4
KV_HEADS = 2

# Sentences the tokenizer is trained on: a few scripts so that test corpora tokenise compactly.
_TRAIN_TEXT = [
    "The cat sits on the mat.",
    "I like green tea and fresh bread.",
    "Where is the station? It is over there.",
    "We will leave the house tomorrow morning.",
    "You must study hard.",
    "猫がマットの上に座っている。",
    "私は緑茶と新しいパンが好きです。",
    "駅はどこですか。あそこです。",
    "우리는 내일 아침에 집을 떠날 것이다.",
    "너 공부 열심히 해야 해.",
    "De kat zit op de mat.",
    "Il gatto è seduto sul tappeto.",
]

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]

# Every registry model_type, plus config variants. Names map to (model_type, config overrides).
TINY_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "gemma": ("gemma", {}),
    "gemma2": ("gemma2", {}),
    "gemma3_text": ("gemma3_text", {}),
    "gemma3": ("gemma3", {}),
    "phi3": ("phi3", {}),
    "gpt2": ("gpt2", {}),
    "gpt_neox": ("gpt_neox", {"use_parallel_residual": True}),
    "gpt_neox_seq": ("gpt_neox", {"use_parallel_residual": False}),
    "bloom": ("bloom", {}),
    "opt": ("opt", {}),
    "cohere": ("cohere", {}),
}

# Variants whose MLP reads a residual formed in parallel with attention.
PARALLEL_TYPES = ("gpt_neox", "cohere")


@functools.lru_cache(maxsize=2)
def _tokenizer_json(add_bos: bool) -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # A zero-width space tokenizes to nothing: lets tests build "sentences with no tokens".
    tok.normalizer = normalizers.Replace("\u200b", "")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 16,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAIN_TEXT, trainer=trainer)
    if add_bos:
        bos = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def make_tokenizer(add_bos: bool = True) -> Any:
    """A byte-level BPE tokenizer (any text tokenises) with <pad>=0 <bos>=1 <eos>=2 <unk>=3."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(add_bos)),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _ids() -> dict[str, int]:
    return {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def tiny_config(name: str, tie: bool = False, **overrides: Any) -> Any:
    """The transformers config object of a tiny model of registry variant ``name``."""
    import transformers as tf

    if name not in TINY_TYPES:
        raise KeyError(f"unknown tiny type '{name}'; known: {', '.join(TINY_TYPES)}")
    model_type, variant = TINY_TYPES[name]
    ids = _ids()
    common = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        **ids,
    )
    kv = dict(num_key_value_heads=KV_HEADS)
    if model_type == "llama":
        cfg = tf.LlamaConfig(**common, **kv)
    elif model_type == "mistral":
        cfg = tf.MistralConfig(**common, **kv, sliding_window=None)
    elif model_type == "qwen2":
        cfg = tf.Qwen2Config(**common, **kv)
    elif model_type == "qwen3":
        cfg = tf.Qwen3Config(**common, **kv, head_dim=8)
    elif model_type == "gemma":
        cfg = tf.GemmaConfig(**common, **kv, head_dim=8)
    elif model_type == "gemma2":
        cfg = tf.Gemma2Config(**common, **kv, head_dim=8, sliding_window=16)
    elif model_type == "gemma3_text":
        cfg = tf.Gemma3TextConfig(**common, **kv, head_dim=8, sliding_window=16)
    elif model_type == "gemma3":
        text = tf.Gemma3TextConfig(**common, **kv, head_dim=8, sliding_window=16)
        vision = tf.SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=16, patch_size=4,
        )
        cfg = tf.Gemma3Config(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            mm_tokens_per_image=4,
            boi_token_index=VOCAB - 3,
            eoi_token_index=VOCAB - 2,
            image_token_index=VOCAB - 1,
            tie_word_embeddings=tie,
            **ids,
        )
    elif model_type == "phi3":
        cfg = tf.Phi3Config(**{**common, **kv})
    elif model_type == "cohere":
        cfg = tf.CohereConfig(**common, **kv)
    elif model_type == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_inner=INTERMEDIATE, n_layer=LAYERS, n_head=HEADS,
            n_positions=128, tie_word_embeddings=tie, **ids,
        )
    elif model_type == "gpt_neox":
        cfg = tf.GPTNeoXConfig(**common, rotary_pct=0.5)
    elif model_type == "bloom":
        cfg = tf.BloomConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, tie_word_embeddings=tie, **ids
        )
    elif model_type == "opt":
        cfg = tf.OPTConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, max_position_embeddings=128, word_embed_proj_dim=HIDDEN,
            tie_word_embeddings=tie, do_layer_norm_before=True, **ids,
        )
    else:  # pragma: no cover - TINY_TYPES and this chain are kept in step
        raise KeyError(model_type)
    for key, value in {**variant, **overrides}.items():
        setattr(cfg, key, value)
    return cfg


def _model_class(model_type: str) -> Any:
    import transformers as tf

    if model_type == "gemma3":
        return tf.Gemma3ForConditionalGeneration
    return tf.AutoModelForCausalLM


def make_tiny(
    model_type: str,
    tmp_path: str | Path,
    dtype: str = "float32",
    tie: bool = False,
    *,
    seed: int = 0,
    add_bos: bool = True,
    subdir: str | None = None,
    **overrides: Any,
) -> Path:
    """Build, save and return the directory of a tiny random model of ``model_type``.

    ``model_type`` is a key of ``TINY_TYPES`` (registry model types plus variants such as
    ``gpt_neox_seq``). ``overrides`` set config attributes (e.g. ``num_hidden_layers=6``).
    The same arguments always give the same weights. The tokenizer adds ``<bos>`` unless
    ``add_bos=False``.
    """
    cfg = tiny_config(model_type, tie=tie, **overrides)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    out = Path(tmp_path) / (subdir or f"tiny-{model_type}-{dtype}{'-tied' if tie else ''}")
    torch.manual_seed(seed)
    cls = _model_class(cfg.model_type)
    model = cls.from_config(cfg) if cls.__name__.startswith("Auto") else cls(cfg)
    model = model.to(torch_dtype).eval()
    model.save_pretrained(out)
    make_tokenizer(add_bos).save_pretrained(out)
    return out


def load_tiny(path: str | Path) -> tuple[Any, Any]:
    """Model and tokenizer of a directory written by :func:`make_tiny` (eval mode)."""
    import json

    from transformers import AutoTokenizer

    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    model = _model_class(model_type).from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)
