"""A tiny random-weight ACE-Step v1 checkpoint in the official layout, made offline.

Same four folders, file names, config fields and time math as `ACE-Step/ACE-Step-v1-3.5B`
(44.1 kHz model rate, 4096 samples per latent frame, 48 kHz output), so loading, lengths and every
task behave as with the real model; only the widths are tiny. The transformer is stored in
bfloat16 like the released one, which exercises the 16-bit loading path. Two sizes are fixed by
upstream's code and make most of the ~200 MB: the 1024-wide lyric Conformer and its embedding.
The lyric vocabulary is not part of a checkpoint (see vocab.py); `add_lyric_vocab` puts the
machine's copy beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from . import checkpoint, vocab

TRANSFORMER_CONFIG = {
    "_class_name": checkpoint.TRANSFORMER_CLASS, "in_channels": 8, "num_layers": 20,
    "inner_dim": 64, "attention_head_dim": 16, "num_attention_heads": 4, "mlp_ratio": 2.5,
    "out_channels": 8, "max_position": 32768, "rope_theta": 1000000.0, "speaker_embedding_dim": 512,
    "text_embedding_dim": 32, "ssl_encoder_depths": [8, 8], "ssl_names": ["mert", "m-hubert"],
    "ssl_latent_dims": [32, 24], "lyric_encoder_vocab_size": 6693, "lyric_hidden_size": 1024,
    "patch_size": [16, 1], "max_height": 16, "max_width": 32768,
}
DCAE_CONFIG = {
    "_class_name": "AutoencoderDC", "in_channels": 2, "latent_channels": 8, "attention_head_dim": 8,
    "encoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
    "decoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
    "encoder_block_out_channels": [16, 32, 32, 64], "decoder_block_out_channels": [16, 32, 32, 64],
    "encoder_layers_per_block": [1, 1, 1, 2], "decoder_layers_per_block": [2, 1, 1, 2],
    "encoder_qkv_multiscales": [[], [], [5], [5]], "decoder_qkv_multiscales": [[], [], [5], [5]],
    "downsample_block_type": "Conv", "upsample_block_type": "interpolate",
    "decoder_norm_types": "rms_norm", "decoder_act_fns": "silu", "scaling_factor": 0.41407,
}
VOCODER_CONFIG = {
    "_class_name": "ADaMoSHiFiGANV1", "input_channels": 128, "depths": [1, 1, 2, 1],
    "dims": [32, 32, 48, 64], "drop_path_rate": 0.0, "kernel_sizes": [7],
    "upsample_rates": [4, 4, 2, 2, 2, 2, 2], "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4, 4],
    "resblock_kernel_sizes": [3, 7], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_mels": 64, "upsample_initial_channel": 256, "use_template": False,
    "pre_conv_kernel_size": 13, "post_conv_kernel_size": 13, "sampling_rate": 44100, "n_fft": 2048,
    "win_length": 2048, "hop_length": 512, "f_min": 40, "f_max": 16000, "n_mels": 128,
}
UMT5_CONFIG = {
    "architectures": ["UMT5EncoderModel"], "model_type": "umt5", "d_model": 32, "d_kv": 8,
    "d_ff": 64, "num_layers": 10, "num_decoder_layers": 0, "num_heads": 4,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new", "is_gated_act": True, "scalable_attention": True,
    "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0, "tokenizer_class": "T5Tokenizer",
}
SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


def write_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Write a loadable tiny v1 checkpoint into `folder` (the official layout); returns it."""
    from .autoencoder import build_dcae
    from .text_encoder import stored_umt5
    from .transformer import ACEStepTransformer, TransformerConfig, training_only_shapes
    from .vocoder import HiFiGANVocoder, VocoderConfig

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer_size = write_umt5_tokenizer(folder / checkpoint.TEXT_ENCODER)
    config = TransformerConfig.from_json(TRANSFORMER_CONFIG)
    transformer = ACEStepTransformer(config)
    # The official layout also holds the training-only tensors, which loading skips.
    training_only = {key: 0.02 * torch.randn(shape) for key, shape in training_only_shapes(config).items()}
    _save(folder, checkpoint.TRANSFORMER, TRANSFORMER_CONFIG, transformer, torch.bfloat16,
          training_only)
    _save(folder, checkpoint.AUTOENCODER, DCAE_CONFIG, build_dcae(DCAE_CONFIG), torch.float32)
    vocoder = HiFiGANVocoder(VocoderConfig.from_json(VOCODER_CONFIG))
    audible_gains(vocoder)
    _save(folder, checkpoint.VOCODER, VOCODER_CONFIG, vocoder, torch.float32)

    from transformers import UMT5Config

    umt5_config = {**UMT5_CONFIG, "vocab_size": tokenizer_size}
    _save(folder, checkpoint.TEXT_ENCODER, umt5_config, stored_umt5(UMT5Config(**umt5_config)),
          torch.float32)
    return folder


def add_lyric_vocab(folder: Path) -> Path | None:
    """Copy the lyric vocabulary this machine has (ACE_STEP_LYRIC_VOCAB, else the Hugging Face cache)
    to `folder/lyrics_utils/vocab.json`, where the pipeline looks, so the checkpoint runs offline;
    returns the copy, or None when there is no vocabulary to copy. Never downloads."""
    source = vocab.local_lyric_vocab()
    if source is None:
        return None
    target = Path(folder) / vocab.BESIDE_CHECKPOINT
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


@torch.no_grad()
def audible_gains(vocoder: torch.nn.Module) -> None:
    """Weight-norm gains that keep the signal's scale through the HiFi-GAN head.

    With the default gains (g = |v|, v ~ N(0, 0.01)) a random head outputs ~1e-11; these gains
    (variance-preserving for the upsamplers, 0.3 in the residual blocks) give audible noise that
    follows the latents, so a tiny checkpoint makes real, if tuneless, sound.
    """
    from .vocoder import WeightNormConv1d

    for name, layer in vocoder.named_modules():
        if not isinstance(layer, WeightNormConv1d):
            continue
        if layer.transposed:
            inputs, outputs = layer.weight_v.shape[:2]
            gain = (2 * layer.stride * outputs / inputs) ** 0.5
        else:
            gain = 0.3 if ".resblocks." in name else 1.0
        layer.weight_g.copy_(gain * (1 + 0.1 * torch.randn_like(layer.weight_g)))
        layer.bias.copy_(0.01 * torch.randn_like(layer.bias))


def _save(folder: Path, component: str, config: dict[str, Any], module: torch.nn.Module,
          dtype: torch.dtype, extra: dict[str, torch.Tensor] | None = None) -> None:
    target = folder / component
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {**module.state_dict(), **(extra or {})}
    state = {key: tensor.detach().to(dtype).contiguous() for key, tensor in tensors.items()}
    save_file(state, str(target / checkpoint.WEIGHTS[component]), metadata={"format": "pt"})


def write_umt5_tokenizer(folder: Path) -> int:
    """A small SentencePiece-style (Unigram, ▁ word marker) tokenizer in T5's `tokenizer.json` form.

    Pieces: <pad>=0, </s>=1, <unk>=2, then single characters and word-initial characters, so any
    prompt tokenizes offline. Returns the vocabulary size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    characters = [chr(code) for code in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [(character, -6.0) for character in characters]
    pieces += [("▁" + character, -5.0) for character in characters]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**SPECIAL_TOKENS, "tokenizer_class": "T5Tokenizer", "model_max_length": 512,
         "extra_ids": 0}, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")
    return backend.get_vocab_size()
