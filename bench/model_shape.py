"""The Llama shape the micro-benchmarks time (SmolLM2-135M's by default), with random weights: step and decoding
costs depend on the shape, not on the weights, and a random model needs no conversion of the embedded one."""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def add_shape_arguments(parser: argparse.ArgumentParser, batch: int = 4) -> None:
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--rounds", type=int, default=7, help="timed runs per variant, interleaved")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def random_llama(args, max_positions: int = 2048) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=49152, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=max_positions,
                         tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(config)
