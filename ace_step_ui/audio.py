"""Audio in one currency: a float32 tensor (channels, frames) plus its sample rate.

Reading and writing files (with the generation metadata), resampling, crossfade curves and level
matching live here; the rest of the program passes `Audio` values around.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ContextManager, Iterator, Mapping

import numpy as np
import soundfile as sf
import torch

from .errors import InputError
from .files import staged

MAX_SOURCE_SECONDS = 3600
FORMATS = ("wav", "flac", "mp3")
SOFTWARE = "ACE-Step Playground"
FFMPEG_TIMEOUT_S = 600
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# Frames per read or write call (2 MiB of stereo float32): no second whole copy of a file is made.
BLOCK_FRAMES = 2 ** 18
# Below -60 dBFS RMS a level estimate is mostly noise floor; matching to it would pump the gain.
SILENCE_RMS = 1e-3
# Containers libsndfile reads with its own quiet parsers; any other start may go to libmpg123.
QUIET_CONTAINERS = (b"RIFF", b"RIFX", b"RF64", b"BW64", b"fLaC", b"OggS", b"FORM", b"caff", b".snd")
_stderr_lock = threading.Lock()


@dataclass(frozen=True)
class Audio:
    samples: torch.Tensor  # float32, (channels, frames)
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[-1])

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def read_audio(path: str | Path) -> Audio:
    """Decode a file to float32 at its own rate; more than two channels are downmixed to stereo.

    soundfile reads WAV, FLAC, MP3 and OGG Vorbis/Opus; anything it rejects (M4A/AAC, WebM, ...) goes
    through ffmpeg when it is installed. Every failure is an `InputError` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"'{path}' is a folder, not an audio file: name the file inside it")
    if not path.is_file():
        raise InputError(f"audio file '{path}' not found: check the path or upload the file again")
    if path.stat().st_size == 0:
        raise InputError(f"'{path.name}' is empty (0 bytes): upload the audio file again")
    decoded = _decode_with_soundfile(path)
    samples, sample_rate = decoded if decoded is not None else _decode_with_ffmpeg(path)
    if samples.shape[1] == 0:
        raise InputError(f"'{path.name}' contains no audio samples: choose a file with sound in it")
    if samples.shape[1] > MAX_SOURCE_SECONDS * sample_rate:
        limit = (f"{MAX_SOURCE_SECONDS // 60} minutes" if MAX_SOURCE_SECONDS % 60 == 0
                 else f"{MAX_SOURCE_SECONDS} s")
        raise InputError(f"'{path.name}' is longer than {limit}: trim it before uploading")
    audio = Audio(samples, int(sample_rate))
    return to_stereo(audio) if audio.channels > 2 else audio


def header_duration_s(path: str | Path) -> float | None:
    """A file's duration from its header, without decoding it; None when soundfile cannot tell."""
    try:
        with _quiet_for(Path(path)):
            return float(sf.info(str(path)).duration)
    except (sf.SoundFileError, RuntimeError, ValueError, OSError):
        return None


def _max_frames_to_decode(sample_rate: int) -> int:
    # One frame past the limit is enough to know a file is too long, without decoding all of it.
    return MAX_SOURCE_SECONDS * sample_rate + 1


def _decode_with_soundfile(path: Path) -> tuple[torch.Tensor, int] | None:
    try:
        with _quiet_for(path), _FrontToBack(path) as f:
            return _read_samples(f), f.samplerate
    except (sf.SoundFileError, RuntimeError, ValueError, OSError):
        return None


class _FrontToBack(sf.SoundFile):
    """A file read once from start to end, with no seek between reads."""

    # soundfile seeks to where it stopped after every read of a seekable file, and libmpg123
    # decodes the MP3 frames after a seek wrong (it restarts without the bit reservoir).
    def seekable(self) -> bool:
        return False


def _read_samples(f: sf.SoundFile) -> torch.Tensor:
    """(channels, frames) float32, read block by block into one tensor of the header's length."""
    limit = _max_frames_to_decode(f.samplerate)
    samples = torch.empty((f.channels, min(f.frames, limit)), dtype=torch.float32)
    block = np.empty((BLOCK_FRAMES, f.channels), dtype=np.float32)
    frames = 0
    while frames < limit:
        read = f.read(min(BLOCK_FRAMES, limit - frames), out=block)
        if len(read) == 0:
            break
        if frames + len(read) > samples.shape[1]:  # more than the header said: grow by doubling
            grown = torch.empty((f.channels, min(limit, max(2 * frames, frames + len(read)))),
                                dtype=torch.float32)
            grown[:, :frames] = samples[:, :frames]
            samples = grown
        samples.numpy()[:, frames:frames + len(read)] = read.T
        frames += len(read)
    # An MP3's frame count is an estimate from its size and bitrate; keep what actually decoded.
    return samples if frames == samples.shape[1] else samples[:, :frames].clone()


def _quiet_for(path: Path) -> ContextManager[None]:
    """Mute stderr around libsndfile for files it may hand to libmpg123 (see `_stderr_muted`)."""
    with open(path, "rb") as f:
        quiet = not f.read(4).startswith(QUIET_CONTAINERS)
    return _stderr_muted() if quiet else nullcontext()


@contextmanager
def _stderr_muted() -> Iterator[None]:
    """fd 2 pointed at the null device for the block: libmpg123 inside libsndfile prints "Illegal
    Audio-MPEG-Header" and the like straight to it, with no switch to stop it."""
    # The trade-off: fd 2 is the whole process's, so while an MP3 decodes, whatever another thread
    # writes to stderr is lost too; hence only MPEG and unknown files, and one at a time (the lock
    # also keeps two threads from saving each other's null device as "the real stderr").
    with _stderr_lock:
        try:
            sys.stderr.flush()
            saved: int | None = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no stderr to mute (closed, or pythonw)
            saved = None
        if saved is None:
            yield
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)


def _decode_with_ffmpeg(path: Path) -> tuple[torch.Tensor, int]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise InputError(f"could not read '{path.name}' as audio: install ffmpeg to read M4A/AAC "
                         f"and other containers, or convert it to WAV/FLAC/MP3")
    source = f"file:{path.resolve()}"
    command = [
        ffmpeg, "-nostdin", "-v", "error",
        # Plain local files only: a playlist or concat file must not make ffmpeg fetch URLs.
        "-protocol_whitelist", "file", "-i", source,
        "-map", "0:a:0", "-t", str(MAX_SOURCE_SECONDS + 1),
        "-f", "wav", "-c:a", "pcm_f32le", "-bitexact", "-",
    ]
    # stderr into a file: a pipe, unread, could fill up and stall ffmpeg while we read its stdout.
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        except OSError as error:
            raise InputError(f"could not read '{path.name}' as audio: ffmpeg failed to start "
                             f"({_one_line(str(error))}); convert it to WAV/FLAC/MP3") from None
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(FFMPEG_TIMEOUT_S, stop)
        timer.start()
        try:
            with process:
                layout = _read_wav_layout(process.stdout)
                if layout is not None:
                    chunk_bytes = BLOCK_FRAMES * 4 * layout[0]
                    chunks = deque(iter(lambda: process.stdout.read(chunk_bytes), b""))
        finally:
            timer.cancel()
        if timed_out.is_set():
            raise InputError(f"could not read '{path.name}' as audio: ffmpeg took longer than "
                             f"{FFMPEG_TIMEOUT_S} s; convert it to WAV/FLAC/MP3")
        if process.returncode != 0 or layout is None:
            errors.seek(0)
            messages = errors.read().decode(errors="replace").strip().splitlines()
            reason = _one_line(messages[-1].replace(f"{source}: ", "")) if messages else "no audio"
            raise InputError(f"could not read '{path.name}' as audio (ffmpeg: {reason}): "
                             f"the file is damaged or not audio; convert it to WAV/FLAC/MP3")
    channels, sample_rate = layout
    return _samples_from_float32_chunks(chunks, channels), sample_rate


def _read_wav_layout(stream: io.BufferedReader) -> tuple[int, int] | None:
    """(channels, sample rate) from a WAV header on a pipe, read up to the first sample; None when
    the stream ends first. ffmpeg writes 0xFFFFFFFF as the sizes, so the samples run to the end."""
    if stream.read(12)[8:12] != b"WAVE":
        return None
    layout = None
    while len(head := stream.read(8)) == 8:
        chunk_id, size = struct.unpack("<4sI", head)
        if chunk_id == b"data":
            return layout
        body = stream.read(size + size % 2)
        if chunk_id == b"fmt " and len(body) >= 8:
            channels, sample_rate = struct.unpack("<HI", body[2:8])
            layout = (channels, sample_rate) if channels else None
    return None


def _samples_from_float32_chunks(chunks: deque[bytes], channels: int) -> torch.Tensor:
    """(channels, frames) from interleaved little-endian float32 chunks of whole frames. Each chunk
    is freed once copied, so the samples are held about once at a time, not twice."""
    samples = torch.empty((channels, sum(map(len, chunks)) // (4 * channels)), dtype=torch.float32)
    frames = 0
    while chunks:
        chunk = chunks.popleft()
        block = np.frombuffer(chunk, "<f4", len(chunk) // (4 * channels) * channels)
        samples.numpy()[:, frames:frames + len(block) // channels] = block.reshape(-1, channels).T
        frames += len(block) // channels
    return samples


def _one_line(text: str) -> str:
    return " ".join(text.split())


def to_stereo(audio: Audio) -> Audio:
    return to_channels(audio, 2)


def to_channels(audio: Audio, channels: int) -> Audio:
    """Mono to stereo by duplication, stereo to mono by the mean; more than two channels are first
    downmixed to stereo by averaging the even-numbered channels into left and the odd into right
    (a simple downmix that ignores the channel layout, not an ITU matrix)."""
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    samples = audio.samples
    if samples.shape[0] > 2:
        samples = torch.stack([samples[0::2].mean(dim=0), samples[1::2].mean(dim=0)])
    if samples.shape[0] == channels:
        return audio if samples is audio.samples else Audio(samples, audio.sample_rate)
    if channels == 1:
        return Audio(samples.mean(dim=0, keepdim=True), audio.sample_rate)
    return Audio(samples.expand(2, -1).contiguous(), audio.sample_rate)


def resample(samples: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited sinc resampling over the last axis: the algorithm and defaults of
    `torchaudio.functional.resample` (Hann window, 6 zero crossings, rolloff 0.99), and the same
    output as `torchaudio.transforms.Resample` for float32 input.

    Output length is ceil(frames * new_sr / orig_sr), computed exactly in integers (torchaudio rounds
    it through float32, which can differ by a frame beyond 2**24 frames).
    """
    if orig_sr <= 0 or new_sr <= 0 or int(orig_sr) != orig_sr or int(new_sr) != new_sr:
        raise ValueError(f"sample rates must be positive integers, not {orig_sr} and {new_sr}")
    if orig_sr == new_sr:
        return samples
    gcd = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // gcd, int(new_sr) // gcd
    shape = samples.shape
    frames = int(shape[-1])
    out_frames = -(-frames * new // orig)
    if frames == 0:
        return samples.new_zeros(shape)
    kernel, width = _sinc_kernel(orig, new)
    kernel = kernel.to(device=samples.device, dtype=samples.dtype)
    flat = samples.reshape(-1, 1, frames)
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    # One filter per output phase; striding by `orig` input frames yields `new` output frames.
    phases = torch.nn.functional.conv1d(padded, kernel, stride=orig)
    resampled = phases.transpose(1, 2).reshape(flat.shape[0], -1)[:, :out_frames]
    return resampled.reshape(shape[:-1] + (out_frames,))


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, zero_crossings: int = 6,
                 rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    base = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    # Phases divided in float32, the rest in float64, then rounded once: exactly how
    # torchaudio.transforms.Resample (ACE-Step's resampler) builds it, so the kernels are identical.
    phase = torch.arange(0, -new, -1, dtype=torch.float32)[:, None, None] / new
    t = (phase + idx) * base
    t = t.clamp(-zero_crossings, zero_crossings)
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return (sinc * window * (base / orig)).to(torch.float32), width


def resample_audio(audio: Audio, new_sr: int) -> Audio:
    return Audio(resample(audio.samples, audio.sample_rate, new_sr), int(new_sr))


def write_audio(path: str | Path, audio: Audio, fmt: str, metadata: Mapping[str, Any]) -> Path:
    """Write WAV (32-bit float), FLAC (24-bit) or MP3 (320 kbps CBR) with `metadata` embedded.

    Every format carries the JSON of the whole mapping as its comment, the tags as genre and the
    software name. libsndfile's own tags serve only FLAC: it skips WAV INFO strings over about 2 KB
    when reading (and writes a broken chunk past about 50 KB), and writes MP3 ID3 text as UTF-8 bytes
    labelled Latin-1. So WAV gets a LIST/INFO chunk and MP3 an ID3v2.4 tag (UTF-8) written here.
    The file appears complete or not at all (see `files.staged`). Returns the path, whose suffix is
    set to the format.
    """
    _check_format(fmt)
    path = Path(path).with_suffix(f".{fmt}")
    with staged([path]) as (partial,):
        encode_audio(partial, audio, fmt, metadata)
    return path


def encode_audio(path: Path, audio: Audio, fmt: str, metadata: Mapping[str, Any]) -> None:
    """`write_audio`'s encoding, into exactly `path` (whatever its suffix), in place."""
    _check_format(fmt)
    comment = json.dumps(dict(metadata), ensure_ascii=False)
    genre = str(metadata.get("tags", ""))
    if fmt == "wav":
        with sf.SoundFile(path, "w", audio.sample_rate, audio.channels, format="WAV",
                          subtype="FLOAT") as f:
            _write_samples(f, audio.samples)
        _append_riff_info(path, {b"ICMT": comment, b"IGNR": genre, b"ISFT": SOFTWARE})
    elif fmt == "flac":
        with sf.SoundFile(path, "w", audio.sample_rate, audio.channels, format="FLAC",
                          subtype="PCM_24") as f:
            f.comment, f.genre, f.software = comment, genre, SOFTWARE
            _write_samples(f, audio.samples, clip=True)
    else:
        encoded = _encode_mp3(audio)
        with open(path, "wb") as f:  # two writes, not a concatenated copy of the encoded file
            f.write(_id3v24_tag(comment, genre))
            f.write(encoded)


def _write_samples(f: sf.SoundFile, samples: torch.Tensor, clip: bool = False) -> None:
    """(channels, frames) block by block: only one block at a time is moved, transposed, clipped."""
    for start in range(0, samples.shape[-1], BLOCK_FRAMES):
        block = samples[:, start:start + BLOCK_FRAMES].detach().to("cpu", torch.float32).numpy().T
        f.write(np.clip(block, -1.0, 1.0) if clip else block)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown output format '{fmt}': use one of {', '.join(FORMATS)}")


def _encode_mp3(audio: Audio) -> bytes:
    if audio.sample_rate not in MP3_SAMPLE_RATES:
        audio = resample_audio(audio, 44100)
    buffer = io.BytesIO()
    # compression_level 0.0 with a constant bitrate is LAME's 320 kbps; 1.0 is rejected by libsndfile.
    with sf.SoundFile(buffer, "w", audio.sample_rate, audio.channels, format="MP3",
                      subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=0.0) as f:
        _write_samples(f, audio.samples, clip=True)
    return buffer.getvalue()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The mapping `write_audio` embedded in a WAV, FLAC or MP3 file; {} when there is none."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file '{path}' not found: check the path")
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        comment = _read_riff_info(path).get(b"ICMT")
    elif head[:3] == b"ID3":
        comment = _read_id3_comment(path)
    elif head[:4] == b"fLaC":
        try:
            with sf.SoundFile(path) as f:
                comment = f.comment
        except (sf.SoundFileError, RuntimeError):
            comment = None
    else:
        comment = None
    try:
        parsed = json.loads(comment) if comment else None
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _riff_chunk(chunk_id: bytes, payload: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)


def _append_riff_info(path: Path, fields: Mapping[bytes, str]) -> None:
    info = b"INFO" + b"".join(_riff_chunk(key, value.encode() + b"\0") for key, value in fields.items())
    chunk = _riff_chunk(b"LIST", info)
    with open(path, "r+b") as f:
        end = f.seek(0, io.SEEK_END)
        f.write(b"\0" * (end % 2) + chunk)
        f.seek(4)
        f.write(struct.pack("<I", end + end % 2 + len(chunk) - 8))


def _read_riff_info(path: Path) -> dict[bytes, str]:
    fields: dict[bytes, str] = {}
    with open(path, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        position = 12
        while position + 8 <= size:
            f.seek(position)
            chunk_id, length = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"LIST":
                body = f.read(length)
                if body[:4] == b"INFO":
                    offset = 4
                    while offset + 8 <= len(body):
                        key, item_length = struct.unpack("<4sI", body[offset:offset + 8])
                        value = body[offset + 8:offset + 8 + item_length].split(b"\0", 1)[0]
                        fields[key] = value.decode("utf-8", errors="replace")
                        offset += 8 + item_length + item_length % 2
            position += 8 + length + length % 2
    return fields


def _syncsafe(value: int) -> bytes:
    return bytes((value >> shift) & 0x7F for shift in (21, 14, 7, 0))


def _unsyncsafe(data: bytes) -> int:
    return (data[0] << 21) | (data[1] << 14) | (data[2] << 7) | data[3]


def _id3v24_tag(comment: str, genre: str) -> bytes:
    utf8 = b"\x03"

    def frame(frame_id: bytes, payload: bytes) -> bytes:
        return frame_id + _syncsafe(len(payload)) + b"\0\0" + payload

    frames = (frame(b"TCON", utf8 + genre.encode())
              + frame(b"TSSE", utf8 + SOFTWARE.encode())
              + frame(b"COMM", utf8 + b"eng" + b"\0" + comment.encode()))
    return b"ID3\x04\x00\x00" + _syncsafe(len(frames)) + frames


def _read_id3_comment(path: Path) -> str | None:
    """The first ID3v2.3/2.4 COMM frame whose text is a JSON object."""
    with open(path, "rb") as f:
        header = f.read(10)
        if len(header) < 10 or header[3] not in (3, 4):
            return None
        tag = f.read(_unsyncsafe(header[6:10]))
    version, flags = header[3], header[5]
    position = 0
    if flags & 0x40:  # skip the extended header; v2.3 does not count its own size field
        position = _unsyncsafe(tag[:4]) if version == 4 else struct.unpack(">I", tag[:4])[0] + 4
    while position + 10 <= len(tag) and tag[position] != 0:
        frame_id = tag[position:position + 4]
        size_bytes = tag[position + 4:position + 8]
        size = _unsyncsafe(size_bytes) if version == 4 else struct.unpack(">I", size_bytes)[0]
        payload = tag[position + 10:position + 10 + size]
        position += 10 + size
        if frame_id == b"COMM" and len(payload) > 4:
            text = _id3_text_after_description(payload[0], payload[4:])
            if text is not None and text.lstrip().startswith("{"):
                return text
    return None


def _id3_text_after_description(encoding: int, data: bytes) -> str | None:
    codec, terminator = {0: ("latin-1", b"\0"), 1: ("utf-16", b"\0\0"),
                         2: ("utf-16-be", b"\0\0"), 3: ("utf-8", b"\0")}.get(encoding, (None, b""))
    if codec is None:
        return None
    end = data.find(terminator)
    while len(terminator) == 2 and end >= 0 and end % 2:
        end = data.find(terminator, end + 1)
    if end < 0:
        return None
    return data[end + len(terminator):].decode(codec, errors="replace").rstrip("\0")


def equal_power_fades(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fade_out, fade_in): a quarter period of cos and sin, so fade_out² + fade_in² = 1."""
    # Sampled at frame centres: the curves are mirror images and no frame is wasted at 0 or 1.
    phase = (torch.arange(frames, dtype=torch.float64) + 0.5) * (math.pi / 2 / max(frames, 1))
    return torch.cos(phase).float(), torch.sin(phase).float()


def level_match_gain(reference: torch.Tensor, rendered: torch.Tensor,
                     max_gain_db: float = 20.0) -> float:
    """Linear gain that brings `rendered` to the RMS of `reference`, within ±max_gain_db."""
    reference_rms, rendered_rms = _rms(reference), _rms(rendered)
    if reference_rms < SILENCE_RMS or rendered_rms < SILENCE_RMS:
        return 1.0
    gain_db = 20.0 * math.log10(reference_rms / rendered_rms)
    return 10.0 ** (max(-max_gain_db, min(max_gain_db, gain_db)) / 20.0)


def _rms(samples: torch.Tensor) -> float:
    if samples.numel() == 0:
        return 0.0
    return float(torch.sqrt(torch.mean(samples.detach().double() ** 2)))


def seconds_to_frames(seconds: float, sample_rate: int) -> int:
    return int(round(seconds * sample_rate))


def silence(channels: int, frames: int) -> torch.Tensor:
    return torch.zeros((channels, frames), dtype=torch.float32)
