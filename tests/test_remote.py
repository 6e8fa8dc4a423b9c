import base64
import http.server
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from ace_step_ui import remote
from ace_step_ui.audio import read_audio
from ace_step_ui.errors import InputError
from ace_step_ui.remote import fetched_source, resolve_audio_source

CAP_BYTES = 10_000


def wav_bytes(frames=4410) -> bytes:
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(frames) / 44100)
    sf.write(buffer, np.stack([tone, -tone], axis=1).astype(np.float32), 44100, format="WAV",
             subtype="FLOAT")
    return buffer.getvalue()


WAV = wav_bytes()


def send(handler, body=b"", status=200, headers=None):
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def trickle(handler, head: bytes, pieces, pause_s: float):
    try:
        handler.wfile.write(head)
        for piece in pieces:
            handler.wfile.write(piece)
            handler.wfile.flush()
            time.sleep(pause_s)
    except OSError:
        pass  # the client hung up, as it should


ROUTES = {
    "/tone.wav": lambda h: send(h, WAV, headers={"Content-Type": "audio/wav",
                                                 "Content-Length": str(len(WAV))}),
    "/download": lambda h: send(h, WAV, headers={"Content-Type": "audio/x-wav"}),
    "/to-tone": lambda h: send(h, status=301, headers={"Location": "/tone.wav"}),
    "/loop": lambda h: send(h, status=302, headers={"Location": "/loop"}),
    "/to-metadata": lambda h: send(h, status=302, headers={
        "Location": "https://169.254.169.254/latest/meta-data/"}),
    "/to-intranet": lambda h: send(h, status=307, headers={"Location": "https://intranet.test/a.wav"}),
    "/to-ftp": lambda h: send(h, status=302, headers={"Location": "ftp://files.test/a.wav"}),
    "/page.wav": lambda h: send(h, b"<html></html>", headers={"Content-Type": "text/html"}),
    "/gone.wav": lambda h: send(h, b"no", status=404, headers={"Content-Type": "text/plain"}),
    "/no-length.wav": lambda h: send(h, bytes(5 * CAP_BYTES), headers={"Content-Type": "audio/wav"}),
    "/chunked.wav": lambda h: trickle(
        h, b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n",
        [b"1000\r\n" + bytes(0x1000) + b"\r\n"] * 5 + [b"0\r\n\r\n"], 0.0),
    "/huge.wav": lambda h: trickle(
        h, b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: 1000000000000\r\n\r\n",
        [b"RIFF"], 2.0),
    "/lying.wav": lambda h: trickle(
        h, b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: 1000\r\n\r\n",
        [bytes(5 * CAP_BYTES)], 0.0),
    "/slow.wav": lambda h: trickle(
        h, b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: 1000\r\n\r\n",
        [b"x"] * 40, 0.05),
    "/stall.wav": lambda h: time.sleep(2.0),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Host")))
        route = ROUTES.get(self.path.split("?")[0])
        if route is None:
            send(self, b"", status=404)
        else:
            route(self)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def base_url(server):
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def loopback_allowed(monkeypatch):
    monkeypatch.setenv("ACE_STEP_UI_ALLOW_LOOPBACK", "1")


@pytest.fixture
def small_cap(monkeypatch):
    monkeypatch.setattr(remote, "MAX_DOWNLOAD_BYTES", CAP_BYTES)


@pytest.fixture
def connections(monkeypatch):
    """Every connection attempt; anything but loopback fails the test before a packet is sent."""
    made = []
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        assert ipaddress.ip_address(address[0]).is_loopback, f"tried to connect to {address}"
        made.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return made


@pytest.fixture
def dns(monkeypatch):
    """Fake names: host -> list of answers, one list per lookup (the last one repeats)."""
    answers: dict[str, list[list[str]]] = {}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            ipaddress.ip_address(host)  # tests only ever resolve literals or fake names
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        queue = answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, lookups


def test_downloads_and_reads_back(base_url, loopback_allowed, connections, tmp_path):
    path = resolve_audio_source(f"{base_url}/tone.wav", tmp_path / "downloads")
    assert path.parent == tmp_path / "downloads" and path.suffix == ".wav"
    assert path.read_bytes() == WAV
    clip = read_audio(path)
    assert clip.sample_rate == 44100 and clip.frames == 4410
    assert torch.equal(clip.samples, torch.from_numpy(sf.read(io.BytesIO(WAV), dtype="float32")[0].T))


def test_suffix_comes_from_the_content_type_and_redirects_are_followed(base_url, loopback_allowed,
                                                                       connections, tmp_path):
    assert resolve_audio_source(f"{base_url}/download?id=7", tmp_path).suffix == ".wav"
    assert resolve_audio_source(f"{base_url}/to-tone", tmp_path).read_bytes() == WAV


def test_connects_to_the_checked_address_and_keeps_the_host_name(server, loopback_allowed,
                                                                 connections, dns, tmp_path):
    answers, lookups = dns
    port = server.server_address[1]
    answers["audio.test"] = [["127.0.0.1"], ["10.0.0.1"]]  # a rebinding answer on the second lookup
    path = resolve_audio_source(f"http://audio.test:{port}/tone.wav", tmp_path)
    assert path.read_bytes() == WAV
    assert lookups == ["audio.test"] and connections == [("127.0.0.1", port)]
    assert server.requests[-1] == ("/tone.wav", f"audio.test:{port}")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_https_is_verified_against_the_host_name_on_the_checked_address(
        loopback_allowed, connections, dns, monkeypatch, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=audio.test",
                    "-addext", "subjectAltName=DNS:audio.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server_names = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    real_context = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: real_context(cafile=cert))
    dns[0].update({"audio.test": [["127.0.0.1"]], "impostor.test": [["127.0.0.1"]]})
    port = httpd.server_address[1]
    try:
        path = resolve_audio_source(f"https://audio.test:{port}/tone.wav", tmp_path / "dl")
        assert path.read_bytes() == WAV and server_names == ["audio.test"]
        assert httpd.requests == [("/tone.wav", f"audio.test:{port}")]
        with pytest.raises(InputError, match="impostor.test: its TLS certificate could not be verified"):
            resolve_audio_source(f"https://impostor.test:{port}/tone.wav", tmp_path / "dl")
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("route", ["/no-length.wav", "/chunked.wav", "/huge.wav"])
def test_size_cap_without_or_with_a_huge_content_length(base_url, route, loopback_allowed,
                                                        small_cap, connections, tmp_path):
    started = time.monotonic()
    with pytest.raises(InputError, match="127.0.0.1.*larger than"):
        resolve_audio_source(base_url + route, tmp_path)
    assert time.monotonic() - started < 1.0 and not list(tmp_path.iterdir())


def test_a_body_longer_than_its_content_length_is_cut_at_the_declared_length(
        base_url, loopback_allowed, small_cap, connections, tmp_path):
    assert resolve_audio_source(f"{base_url}/lying.wav", tmp_path).stat().st_size == 1000


@pytest.mark.parametrize("route", ["/to-metadata", "/to-intranet", "/to-ftp"])
def test_redirects_to_private_addresses_or_other_schemes_are_refused(base_url, route, loopback_allowed,
                                                                     connections, dns, tmp_path):
    dns[0]["intranet.test"] = [["10.20.30.40"]]
    with pytest.raises(InputError, match="169.254.169.254|intranet.test|ftp"):
        resolve_audio_source(base_url + route, tmp_path)
    assert all(address[0] == "127.0.0.1" for address in connections)


@pytest.mark.parametrize(("route", "message"), [
    ("/loop", "more than 5 redirects"), ("/page.wav", "text/html, not audio"),
    ("/gone.wav", "HTTP 404")])
def test_http_failures_name_the_host(base_url, route, message, loopback_allowed, connections,
                                     tmp_path):
    with pytest.raises(InputError, match=f"from 127.0.0.1: .*{message}"):
        resolve_audio_source(base_url + route, tmp_path)


@pytest.mark.parametrize("route", ["/slow.wav", "/stall.wav"])
def test_the_timeout_covers_the_whole_download(base_url, route, loopback_allowed, connections,
                                               monkeypatch, tmp_path):
    monkeypatch.setattr(remote, "DOWNLOAD_TIMEOUT_S", 0.3)
    started = time.monotonic()
    with pytest.raises(InputError, match="127.0.0.1.*longer than 0.3 s"):
        resolve_audio_source(base_url + route, tmp_path)
    assert time.monotonic() - started < 1.0 and not list(tmp_path.iterdir())


def test_refused_port_is_an_input_error(loopback_allowed, connections, tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(InputError, match="127.0.0.1.*connection failed"):
        resolve_audio_source(f"http://127.0.0.1:{port}/a.wav", tmp_path)


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/a.wav", "https://10.0.0.1/a.wav", "https://169.254.169.254/latest/meta-data",
    "https://[::1]/a.wav", "https://[::ffff:127.0.0.1]/a.wav", "https://[::ffff:10.0.0.1]/a.wav",
    "https://[fe80::1]/a.wav", "https://[fd00::1]/a.wav", "https://0.0.0.0/a.wav",
    "https://224.0.0.1/a.wav", "https://100.64.0.1/a.wav", "https://192.168.1.1:8443/a.wav",
    "https://[2002:a00:1::]/a.wav", "https://[64:ff9b::a00:1]/a.wav", "https://240.0.0.1/a.wav",
    "https://intranet.test/a.wav", "https://mixed.test/a.wav", "https://loopback.test/a.wav",
])
def test_private_addresses_are_refused_before_connecting(url, monkeypatch, connections, dns,
                                                         tmp_path):
    monkeypatch.delenv("ACE_STEP_UI_ALLOW_LOOPBACK", raising=False)
    dns[0].update({"intranet.test": [["192.168.0.7"]], "loopback.test": [["127.0.0.1"]],
                   "mixed.test": [["93.184.216.34", "10.0.0.1"]]})
    with pytest.raises(InputError, match="refusing to download from .*private, local or reserved"):
        resolve_audio_source(url, tmp_path)
    assert connections == []


def test_the_loopback_setting_allows_loopback_only(loopback_allowed, connections, dns, tmp_path):
    dns[0]["public.test"] = [["93.184.216.34"]]
    with pytest.raises(InputError, match="refusing"):
        resolve_audio_source("https://10.0.0.1/a.wav", tmp_path)
    with pytest.raises(InputError, match="http:// is only accepted for loopback"):
        resolve_audio_source("http://public.test/a.wav", tmp_path)
    assert connections == []


@pytest.mark.parametrize("value", [
    "http://example.com/a.wav", "ftp://example.com/a.wav", "file:///etc/passwd",
    "gopher://example.com/", "data:text/plain;base64,aGVsbG8=", "data:audio/wav,RIFF",
    "data:audio/wav;base64,@@@@", "data:audio/wav;base64,",
])
def test_bad_schemes_and_data_uris_are_refused(value, monkeypatch, connections, tmp_path):
    monkeypatch.delenv("ACE_STEP_UI_ALLOW_LOOPBACK", raising=False)
    with pytest.raises(InputError, match="https://|data:"):
        resolve_audio_source(value, tmp_path)
    assert connections == []


def test_data_uri_is_decoded(tmp_path):
    uri = "data:audio/wav;base64," + base64.b64encode(WAV).decode()
    path = resolve_audio_source(uri, tmp_path / "uploads")
    assert path.parent == tmp_path / "uploads" and path.suffix == ".wav"
    assert read_audio(path).frames == 4410


def test_data_uri_over_the_cap_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(remote, "MAX_DATA_URI_BYTES", CAP_BYTES)
    with pytest.raises(InputError, match="larger than"):
        resolve_audio_source("data:audio/wav;base64," + "A" * 4 * CAP_BYTES, tmp_path)


def test_local_paths(tmp_path):
    song = tmp_path / "song.wav"
    song.write_bytes(WAV)
    assert resolve_audio_source(str(song), tmp_path / "unused") == song
    with pytest.raises(InputError, match="missing.wav.*not found"):
        resolve_audio_source(str(tmp_path / "missing.wav"), tmp_path)
    with pytest.raises(InputError, match="is a folder, not an audio file"):
        resolve_audio_source(str(tmp_path), tmp_path)


def test_a_fetched_source_is_deleted_when_the_block_ends(base_url, loopback_allowed, connections,
                                                         tmp_path):
    folder = tmp_path / "downloads"
    with fetched_source(f"{base_url}/tone.wav", folder) as path:
        assert path.parent == folder and path.read_bytes() == WAV
    assert not path.exists()
    uri = "data:audio/wav;base64," + base64.b64encode(WAV).decode()
    with pytest.raises(InputError, match="the job failed"):
        with fetched_source(uri, folder) as path:
            assert read_audio(path).frames == 4410
            raise InputError("the job failed")
    assert not list(folder.iterdir())


def test_a_file_the_user_named_is_kept(tmp_path):
    song = tmp_path / "song.wav"
    song.write_bytes(WAV)
    with fetched_source(f" {song} ", tmp_path / "unused") as path:
        assert path == song
    assert song.read_bytes() == WAV and not (tmp_path / "unused").exists()
