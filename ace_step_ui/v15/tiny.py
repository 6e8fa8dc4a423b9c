"""A tiny random-weight ACE-Step 1.5 checkpoint in the diffusers layout, made offline.

Same folder layout and the same time math as the Hub repos (48 kHz stereo, 1920 samples per latent
frame, 25 latent frames per second), so source audio, lengths and repaint windows behave as with the
real model; only the widths are tiny. Used by the tests and by `python app.py --model DIR`.
"""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN = 32
LATENT_CHANNELS = 4
CODE_FRAMES = 5  # latent frames per 5 Hz audio code
FSQ_LEVELS = (8, 8)


def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # The 256 byte symbols and no merges: any text tokenizes, nothing is downloaded.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    vocab["<|pad|>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


def build_tiny_pipeline(variant: str = "turbo", seed: int = 0):
    """An `AceStepPipeline` with tiny random weights; `variant` is "turbo" or "base"."""
    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step.modeling_ace_step import (AceStepAudioTokenDetokenizer,
                                                                AceStepAudioTokenizer,
                                                                AceStepConditionEncoder)
    from transformers import Qwen3Config, Qwen3Model

    if variant not in ("turbo", "base"):
        raise ValueError(f"variant must be turbo or base, not {variant!r}")
    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    widths = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    text_encoder = Qwen3Model(Qwen3Config(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                                          num_hidden_layers=2, vocab_size=len(tokenizer),
                                          max_position_embeddings=4096, **widths))
    transformer = AceStepTransformer1DModel(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        in_channels=3 * LATENT_CHANNELS, audio_acoustic_hidden_dim=LATENT_CHANNELS, sliding_window=16,
        is_turbo=variant == "turbo", model_version=variant, **widths)
    condition_encoder = AceStepConditionEncoder(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, text_hidden_dim=HIDDEN,
        timbre_hidden_dim=LATENT_CHANNELS, num_lyric_encoder_hidden_layers=2,
        num_timbre_encoder_hidden_layers=2, sliding_window=16, **widths)
    # Downsampling 2·4·4·6·10 = 1920 samples per latent frame at 48 kHz, as in the real VAE.
    vae = AutoencoderOobleck(encoder_hidden_size=2 * LATENT_CHANNELS, downsampling_ratios=[2, 4, 4, 6, 10],
                             channel_multiples=[1] * 5, decoder_channels=8,
                             decoder_input_channels=LATENT_CHANNELS, audio_channels=2,
                             sampling_rate=48000)
    # The 5 Hz audio-code path (cover from audio, the LM's codes): 5 latent frames a code, as in the
    # real model; FSQ levels [8, 8] make 64 codes (<|audio_code_0|> ... <|audio_code_63|>).
    pooled = dict(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                  audio_acoustic_hidden_dim=LATENT_CHANNELS, pool_window_size=CODE_FRAMES,
                  num_attention_pooler_hidden_layers=1, sliding_window=16, **widths)
    audio_tokenizer = AceStepAudioTokenizer(fsq_dim=HIDDEN, fsq_input_levels=list(FSQ_LEVELS), **pooled)
    audio_token_detokenizer = AceStepAudioTokenDetokenizer(**pooled)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    return AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           transformer=transformer, condition_encoder=condition_encoder,
                           scheduler=scheduler, audio_tokenizer=audio_tokenizer,
                           audio_token_detokenizer=audio_token_detokenizer)


def write_tiny_checkpoint(folder: str | Path, variant: str = "turbo", seed: int = 0) -> Path:
    """Write a tiny checkpoint to `folder` (created) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_pipeline(variant, seed).save_pretrained(folder)
    return folder
