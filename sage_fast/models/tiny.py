"""Tiny random-weight Qwen2.5-VL / Qwen3-VL checkpoints built in code, saved like real ones.

They exist so that every model path (from_pretrained, our input preparation, generate, the
whole agent loop) runs offline and in tests without a model hub. Their answers are meaningless
by construction; whoever uses them is told so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

Family = Literal["qwen2_5_vl", "qwen3_vl"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
MEANINGLESS = "tiny random-weight model: its answers are meaningless (it only exercises the pipeline)"
_CORPUS = ("The video shows a kitchen, a football match, a cooking show and a street at night. "
           '{"video_context": "", "query_intent": "", "final_answer": null, "recommended_tools": '
           '{"needed": true, "why_no_tool": "", "tool_calls": []}} seconds 0123456789 <json></json>')


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    fast.save_pretrained(folder)


def build_tiny_model(folder: str | Path, family: Family = "qwen2_5_vl", *, seed: int = 0) -> Path:
    """Writes config, weights and tokenizer of a tiny ``family`` model to ``folder`` (atomically)."""
    import torch
    from transformers import AutoTokenizer

    folder = Path(folder)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    try:
        _tokenizer(staging)
        vocab = AutoTokenizer.from_pretrained(staging)
        ids = {t: vocab.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        token_ids = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
        text = dict(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
        torch.manual_seed(seed)
        if family == "qwen2_5_vl":
            from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

            # head_dim 16: the M-RoPE sections must sum to head_dim / 2.
            text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          fullatt_block_indexes=[1], window_size=56, patch_size=14, spatial_merge_size=2,
                          temporal_patch_size=2)
            config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)
            model = Qwen2_5_VLForConditionalGeneration(config)
        elif family == "qwen3_vl":
            from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

            text["head_dim"] = 16
            text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                       "mrope_interleaved": True}
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          num_position_embeddings=64, deepstack_visual_indexes=[0], patch_size=16,
                          spatial_merge_size=2, temporal_patch_size=2)
            config = Qwen3VLConfig(text_config=text, vision_config=vision, **token_ids)
            model = Qwen3VLForConditionalGeneration(config)
        else:
            raise ValueError(f"family must be 'qwen2_5_vl' or 'qwen3_vl', got {family!r}")
        model.save_pretrained(staging)
        (staging / "sage_fast_tiny.json").write_text(json.dumps({"family": family, "note": MEANINGLESS}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
