import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ace_step_ui import audio as audio_ops
from ace_step_ui.audio import (
    FORMATS, Audio, equal_power_fades, level_match_gain, read_audio, read_metadata, resample,
    resample_audio, seconds_to_frames, silence, to_channels, to_stereo, write_audio,
)
from ace_step_ui.errors import InputError

LYRICS = "\n".join(
    f"[verse {i}]\nÜber den Wolken, 雲の上で — ça va? 🎵 «{i}» naïve façade, Ωμέγα, עברית\n"
    for i in range(60)
)
METADATA = {"tags": "pop, électro, 女声, 120 bpm", "lyrics": LYRICS, "seed": 2147483647,
            "params": {"steps": 8, "guidance": 7.5, "task": "text2music", "nested": {"a": [1, 2]}}}
REPO = Path(__file__).resolve().parents[1]
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")


def tones(seconds=1.0, rate=44100, frequencies=(440.0, 660.0), amplitude=0.4) -> Audio:
    t = torch.arange(round(seconds * rate), dtype=torch.float64) / rate
    samples = torch.stack([amplitude * torch.sin(2 * math.pi * f * t) for f in frequencies])
    return Audio(samples.float(), rate)


def test_lyrics_fixture_is_several_kilobytes_of_non_ascii():
    assert len(LYRICS.encode()) > 5000 and not LYRICS.isascii()


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_then_read_round_trips_samples_and_metadata(tmp_path, fmt):
    source = tones()
    path = write_audio(tmp_path / "song.out", source, fmt, METADATA)
    assert path == tmp_path / f"song.{fmt}" and path.is_file()
    back = read_audio(path)
    assert back.sample_rate == 44100 and back.channels == 2 and back.samples.dtype == torch.float32
    if fmt == "wav":
        assert torch.equal(back.samples, source.samples)
    elif fmt == "flac":
        assert torch.allclose(back.samples, source.samples, atol=2 ** -22)
    else:
        assert back.frames == source.frames  # libsndfile's MP3 reader removes the encoder delay
        error = back.samples[:, 2000:-2000] - source.samples[:, 2000:-2000]
        assert error.pow(2).mean().sqrt() < 0.01
    assert read_metadata(path) == METADATA


def test_wav_is_float_and_flac_is_24_bit(tmp_path):
    assert sf.info(write_audio(tmp_path / "a", tones(0.1), "wav", METADATA)).subtype == "FLOAT"
    assert sf.info(write_audio(tmp_path / "a", tones(0.1), "flac", METADATA)).subtype == "PCM_24"


@needs_ffmpeg
@pytest.mark.parametrize("fmt", FORMATS)
def test_other_tools_see_the_metadata(tmp_path, fmt):
    path = write_audio(tmp_path / "song", tones(0.2), fmt, METADATA)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format_tags", "-of", "json",
                            str(path)], capture_output=True, check=True)
    tags = {key.lower(): value for key, value in json.loads(probe.stdout)["format"]["tags"].items()}
    assert json.loads(tags["comment"]) == METADATA
    assert tags["genre"] == METADATA["tags"]


def test_mp3_is_320_kbps_and_flac_clips_instead_of_wrapping(tmp_path):
    mp3 = write_audio(tmp_path / "a", tones(1.0), "mp3", METADATA)
    assert mp3.stat().st_size > 0.9 * 320_000 / 8
    loud = Audio(torch.full((2, 1000), 1.7), 44100)
    assert read_audio(write_audio(tmp_path / "b", loud, "flac", METADATA)).samples.min() > 0.99


def test_unknown_format_and_files_without_metadata(tmp_path):
    with pytest.raises(InputError, match="ogg"):
        write_audio(tmp_path / "a", tones(0.1), "ogg", METADATA)
    plain = tmp_path / "plain.wav"
    sf.write(plain, np.zeros((100, 2), np.float32), 44100)
    assert read_metadata(plain) == {}
    sf.write(tmp_path / "plain.flac", np.zeros((100, 2), np.float32), 44100)
    assert read_metadata(tmp_path / "plain.flac") == {}


@pytest.mark.parametrize("fmt, encoder", [("wav", "_append_riff_info"), ("mp3", "_encode_mp3")])
def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch, fmt, encoder):
    path = write_audio(tmp_path / "song", tones(0.1), fmt, {"tags": "old"})
    before = path.read_bytes()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio_ops, encoder, disk_full)  # for wav, after the samples are on disk
    with pytest.raises(OSError, match="No space"):
        write_audio(path, tones(0.2), fmt, {"tags": "new"})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_reads_ogg_opus(tmp_path):
    path = tmp_path / "clip.opus"
    sf.write(path, tones(1.0, 48000).samples.numpy().T, 48000, format="OGG", subtype="OPUS")
    clip = read_audio(path)
    assert clip.sample_rate == 48000 and clip.channels == 2
    assert abs(clip.duration_s - 1.0) < 0.05


@needs_ffmpeg
def test_reads_m4a_through_ffmpeg(tmp_path):
    wav = write_audio(tmp_path / "src", tones(1.0), "wav", {})
    m4a = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "128k", str(m4a)],
                   check=True)
    with pytest.raises(sf.LibsndfileError):
        sf.info(m4a)
    clip = read_audio(m4a)
    assert clip.sample_rate == 44100 and clip.channels == 2 and clip.samples.dtype == torch.float32
    assert abs(clip.duration_s - 1.0) < 0.1
    middle_rms = clip.samples[:, 10_000:30_000].pow(2).mean(dim=1).sqrt()
    assert torch.allclose(middle_rms, torch.tensor([0.4, 0.4]) / math.sqrt(2), rtol=0.05)


@needs_ffmpeg
def test_m4a_longer_than_the_limit_is_refused(tmp_path, monkeypatch):
    m4a = tmp_path / "long.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=3",
                    "-c:a", "aac", str(m4a)], check=True)
    monkeypatch.setattr(audio_ops, "MAX_SOURCE_SECONDS", 1)
    with pytest.raises(InputError, match="long.m4a.*longer than"):
        read_audio(m4a)


def test_mono_becomes_stereo_and_back():
    mono = Audio(torch.randn(1, 100), 22050)
    stereo = to_stereo(mono)
    assert stereo.channels == 2 and torch.equal(stereo.samples[0], mono.samples[0])
    assert torch.equal(stereo.samples[1], mono.samples[0])
    assert to_stereo(stereo) is stereo
    back = to_channels(stereo, 1)
    assert back.channels == 1 and torch.allclose(back.samples, mono.samples)
    assert torch.allclose(to_channels(tones(0.01), 1).samples, tones(0.01).samples.mean(0, keepdim=True))


def test_more_than_two_channels_are_downmixed_on_reading(tmp_path):
    six = np.stack([np.full(100, float(c + 1) / 10, np.float32) for c in range(6)], axis=1)
    sf.write(tmp_path / "surround.wav", six, 48000, subtype="FLOAT")
    clip = read_audio(tmp_path / "surround.wav")
    assert clip.channels == 2
    assert torch.allclose(clip.samples[0], torch.tensor(0.3)) and torch.allclose(clip.samples[1],
                                                                                 torch.tensor(0.4))


def test_reads_mono_as_mono(tmp_path):
    sf.write(tmp_path / "mono.flac", np.zeros(1000, np.float32), 16000)
    clip = read_audio(tmp_path / "mono.flac")
    assert clip.channels == 1 and clip.frames == 1000 and clip.sample_rate == 16000


@pytest.mark.parametrize("suffix, options", [
    ("wav", {"subtype": "PCM_16"}), ("wav", {"subtype": "PCM_24"}), ("wav", {"subtype": "FLOAT"}),
    ("flac", {"subtype": "PCM_16"}), ("flac", {"subtype": "PCM_24"}),
    ("mp3", {"format": "MP3", "subtype": "MPEG_LAYER_III"}),
], ids=["wav16", "wav24", "wav-float", "flac16", "flac24", "mp3"])
def test_reading_in_blocks_gives_soundfiles_samples_exactly(tmp_path, monkeypatch, suffix, options):
    path = tmp_path / f"clip.{suffix}"
    sf.write(path, tones(0.5).samples.numpy().T, 44100, **options)
    monkeypatch.setattr(audio_ops, "BLOCK_FRAMES", 1000)  # 23 blocks, the last one short
    expected, rate = sf.read(path, dtype="float32", always_2d=True)
    clip = read_audio(path)
    assert clip.sample_rate == rate and torch.equal(clip.samples, torch.from_numpy(expected.T))


def pcm_noise(bits: int, frames: int = 5000) -> np.ndarray:
    """Random `bits`-bit stereo samples, both extremes included, as int32 for soundfile to write."""
    low, high = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    values = np.random.default_rng(bits).integers(low, high + 1, (frames, 2))
    values[:2] = [[low, high], [high, low]]
    return (values << (32 - bits)).astype(np.int32)


@pytest.mark.parametrize("bits", [16, 24])
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_wav_and_flac_keep_16_and_24_bit_sources_bit_exact(tmp_path, monkeypatch, fmt, bits):
    monkeypatch.setattr(audio_ops, "BLOCK_FRAMES", 1000)
    sf.write(tmp_path / "source.wav", pcm_noise(bits), 48000, subtype=f"PCM_{bits}")
    source = read_audio(tmp_path / "source.wav")
    back = read_audio(write_audio(tmp_path / "copy", source, fmt, METADATA))
    assert back.sample_rate == 48000 and torch.equal(back.samples, source.samples)


def test_a_frame_count_the_header_gets_wrong_is_corrected_by_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_ops, "BLOCK_FRAMES", 1000)
    cut = tmp_path / "cut.mp3"  # its header still counts 2 s, its frames hold about 1
    sf.write(cut, tones(2.0).samples.numpy().T, 44100, format="MP3", subtype="MPEG_LAYER_III")
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    decoded = sf.read(cut, dtype="float32", always_2d=True)[0].T
    assert sf.info(cut).frames == 88200 and 40000 < decoded.shape[1] < 48000
    assert torch.equal(read_audio(cut).samples, torch.from_numpy(decoded))
    wav = write_audio(tmp_path / "clip", tones(0.5), "wav", {})
    monkeypatch.setattr(audio_ops._FrontToBack, "frames", 10)  # a header that counts too few
    monkeypatch.setattr(audio_ops.shutil, "which", lambda name: None)  # no ffmpeg to fall back on
    assert torch.equal(read_audio(wav).samples, tones(0.5).samples)


# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (Linux keeps it over exec).
MEASURE_READ_AND_WRITE = """\
import sys
from ace_step_ui.audio import read_audio, write_audio

def peak_rss_bytes():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

before = peak_rss_bytes()
audio = read_audio(sys.argv[1])
write_audio(sys.argv[2], audio, "wav", {})
print((peak_rss_bytes() - before) / audio.samples.nbytes)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from /proc")
def test_reading_and_writing_hold_the_samples_about_once(tmp_path):
    # Five minutes of 48 kHz stereo, 110 MiB as float32. Whole-array reading and writing held it
    # twice over, which for an hour-long source is 2.8 GB.
    source, copy = tmp_path / "five_minutes.wav", tmp_path / "copy.wav"
    samples = np.random.default_rng(0).integers(-2 ** 15, 2 ** 15, (5 * 60 * 48000, 2), np.int16)
    sf.write(source, samples, 48000, subtype="PCM_16")
    done = subprocess.run([sys.executable, "-c", MEASURE_READ_AND_WRITE, str(source), str(copy)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    source.unlink()
    copy.unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 1.4


@needs_ffmpeg
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_m4a_samples_are_exactly_ffmpegs_decoding(tmp_path, monkeypatch, channels):
    source = tones(1.0, frequencies=(220, 330, 440, 550, 660, 770)[:channels])
    wav, m4a = write_audio(tmp_path / "src", source, "wav", {}), tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(m4a), "-f", "f32le", "-"],
                             capture_output=True, check=True).stdout
    samples = np.frombuffer(decoded, np.float32).reshape(-1, channels).T.copy()
    expected = to_channels(Audio(torch.from_numpy(samples), 44100), min(channels, 2))
    monkeypatch.setattr(audio_ops, "BLOCK_FRAMES", 1000)
    clip = read_audio(m4a)
    assert clip.sample_rate == 44100 and torch.equal(clip.samples, expected.samples)


@pytest.mark.skipif(sys.platform == "win32", reason="stands in a shell script for ffmpeg")
def test_an_ffmpeg_that_cannot_start_or_hangs_is_an_input_error(tmp_path, monkeypatch):
    clip = tmp_path / "clip.m4a"
    clip.write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(200))
    ffmpeg = tmp_path / "ffmpeg"
    ffmpeg.write_text("#!/bin/sh\nexec sleep 30\n")
    monkeypatch.setattr(audio_ops.shutil, "which", lambda name: str(ffmpeg))
    with pytest.raises(InputError, match="clip.m4a.*ffmpeg failed to start"):
        read_audio(clip)  # not executable
    ffmpeg.chmod(0o755)
    monkeypatch.setattr(audio_ops, "FFMPEG_TIMEOUT_S", 0.2)
    with pytest.raises(InputError, match="clip.m4a.*ffmpeg took longer than 0.2 s"):
        read_audio(clip)


@pytest.mark.parametrize(("orig", "new"), [(44100, 48000), (48000, 44100), (44100, 16000),
                                           (22050, 44100), (32000, 44100)])
def test_resample_lengths_dtype_and_sine(orig, new):
    frames = orig // 2 + 7
    t = torch.arange(frames, dtype=torch.float64) / orig
    signal = torch.sin(2 * math.pi * 440 * t).float().repeat(2, 1)
    out = resample(signal, orig, new)
    assert out.shape == (2, -(-frames * new // orig)) and out.dtype == torch.float32
    expected = torch.sin(2 * math.pi * 440 * torch.arange(out.shape[-1], dtype=torch.float64) / new)
    edge = new // 20  # the filter sees zero padding near both ends
    error = (out[0, edge:-edge].double() - expected[edge:-edge]).abs()
    # A 6-crossing Hann sinc is about -62 dB accurate at worst, -70 dB on average.
    assert error.max() < 1.5e-3 and error.mean() < 4e-4
    assert torch.equal(out[0], out[1])


def direct_resample(x: np.ndarray, orig: int, new: int, crossings=6, rolloff=0.99) -> np.ndarray:
    """y[m] = Σ x[n]·(fc/orig)·sinc(fc·(n/orig − m/new))·hann, with fc = rolloff·min(orig, new)."""
    cutoff = rolloff * min(orig, new)
    out = -(-len(x) * new // orig)
    t = cutoff * (np.arange(len(x))[None, :] / orig - np.arange(out)[:, None] / new)
    window = np.where(np.abs(t) < crossings, np.cos(np.pi * t / crossings / 2) ** 2, 0.0)
    return (np.sinc(t) * window * (cutoff / orig)) @ x


@pytest.mark.parametrize(("orig", "new"), [(44100, 48000), (48000, 44100), (44100, 16000), (8, 3)])
def test_resample_equals_the_direct_sinc_sum(orig, new):
    x = np.random.default_rng(0).uniform(-1, 1, 1500)
    out = resample(torch.from_numpy(x).float(), orig, new).double().numpy()
    assert np.abs(out - direct_resample(x, orig, new)).max() < 1e-5


def test_resample_matches_torchaudio_values():
    # torchaudio 2.11 transforms.Resample(44100, 48000) of x[n] = sin(0.1 n) + 0.5 cos(0.37 n), n < 64
    n = torch.arange(64, dtype=torch.float64)
    x = (torch.sin(0.1 * n) + 0.5 * torch.cos(0.37 * n)).float()
    out = resample(x, 44100, 48000)
    expected = {0: 0.497757703, 5: 0.379705966, 17: 1.438134432, 33: 0.219685584,
                50: -1.132085323, 69: -0.042059034}
    assert out.shape == (70,)
    for index, value in expected.items():
        assert out[index].item() == pytest.approx(value, abs=2e-6)


def test_resample_identity_batch_shape_and_audio():
    x = torch.randn(3, 2, 1000)
    assert resample(x, 44100, 44100) is x
    assert resample(x, 44100, 22050).shape == (3, 2, 500)
    assert torch.allclose(resample(x, 44100, 22050)[1], resample(x[1], 44100, 22050))
    moved = resample_audio(tones(0.5, 44100), 48000)
    assert moved.sample_rate == 48000 and moved.frames == 24000


def test_equal_power_fades():
    fade_out, fade_in = equal_power_fades(256)
    assert torch.allclose(fade_out ** 2 + fade_in ** 2, torch.ones(256), atol=1e-6)
    assert torch.allclose(fade_out, fade_in.flip(0))
    assert fade_out[0] > 0.99 and fade_in[-1] > 0.99 and (fade_out.diff() < 0).all()


def test_level_match_gain():
    reference = torch.randn(2, 4000) * 0.2
    assert level_match_gain(reference, reference * 0.5) == pytest.approx(2.0, rel=1e-6)
    assert level_match_gain(reference, reference * 4) == pytest.approx(0.25, rel=1e-6)
    assert level_match_gain(reference, reference * 0.05) == pytest.approx(10.0)  # +20 dB cap
    assert level_match_gain(reference, reference * 0.5, max_gain_db=3) == pytest.approx(10 ** 0.15)
    assert level_match_gain(silence(2, 4000), reference) == 1.0
    assert level_match_gain(reference, silence(2, 4000)) == 1.0


def test_small_helpers():
    assert seconds_to_frames(1.5, 44100) == 66150 and seconds_to_frames(0.0, 48000) == 0
    assert seconds_to_frames(1 / 3, 48000) == 16000
    quiet = silence(2, 10)
    assert quiet.shape == (2, 10) and quiet.dtype == torch.float32 and not quiet.any()


def test_missing_empty_corrupt_silent_and_too_long_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="nowhere.wav.*not found"):
        read_audio(tmp_path / "nowhere.wav")
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(InputError, match="empty.mp3.*empty"):
        read_audio(tmp_path / "empty.mp3")
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    with pytest.raises(InputError, match="garbage.wav"):
        read_audio(tmp_path / "garbage.wav")
    sf.write(tmp_path / "nothing.wav", np.zeros((0, 2), np.float32), 44100)
    with pytest.raises(InputError, match="nothing.wav.*no audio"):
        read_audio(tmp_path / "nothing.wav")
    sf.write(tmp_path / "long.wav", np.zeros(3601 * 100, np.int16), 100, subtype="PCM_16")
    with pytest.raises(InputError, match="long.wav.*longer than 60 minutes"):
        read_audio(tmp_path / "long.wav")


def test_sixty_minutes_exactly_is_not_too_long(tmp_path):
    sf.write(tmp_path / "hour.flac", np.zeros(3600 * 100, np.int16), 100, subtype="PCM_16")
    assert read_audio(tmp_path / "hour.flac").duration_s == 3600


def test_unreadable_files_print_nothing_but_our_error(tmp_path):
    # In a new process: libmpg123 writes to fd 2 itself, past pytest's capture of sys.stderr.
    rng = np.random.default_rng(7)
    good = io.BytesIO()
    sf.write(good, tones(1.0).samples.numpy().T, 44100, format="MP3")
    damaged = bytearray(good.getvalue())
    damaged[400::97] = rng.integers(0, 256, len(damaged[400::97]), dtype=np.uint8).tobytes()
    wav = io.BytesIO()
    sf.write(wav, tones(0.5).samples.numpy().T, 44100, format="WAV")
    files = {"corrupt.mp3": rng.bytes(5000), "empty.mp3": b"", "text.mp3": b"not audio\n" * 50,
             "truncated.wav": wav.getvalue()[:30], "damaged.mp3": bytes(damaged)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.wav").mkdir()
    script = ("import sys\n"
              "from ace_step_ui.audio import read_audio\n"
              "from ace_step_ui.errors import InputError\n"
              "for path in sys.argv[1:]:\n"
              "    try:\n"
              "        read_audio(path)\n"
              "        print('read')\n"
              "    except InputError as error:\n"
              "        print(error)\n")
    names = [*files, "folder.wav"]
    done = subprocess.run([sys.executable, "-c", script, *(str(tmp_path / n) for n in names)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    outcome = dict(zip(names, done.stdout.splitlines()))
    assert outcome.pop("damaged.mp3") == "read"  # damaged frames decode, quietly, as noise
    for name, message in outcome.items():
        assert name in message and ("could not read" in message or "empty" in message
                                    or "folder" in message), message


def test_without_ffmpeg_unknown_containers_say_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "clip.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(200))
    monkeypatch.setattr(audio_ops.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="clip.m4a.*install ffmpeg"):
        read_audio(tmp_path / "clip.m4a")
