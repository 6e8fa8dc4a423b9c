"""Turn a request's `audio` value into a local file: a path, an https:// URL or a data: URI.

Downloads must not become a way to reach the machine's own network (server-side request forgery):
every hop's host is resolved once, all its addresses must be public, and the connection goes to one
of exactly those addresses, with the host name kept for the Host header and TLS (so a second DNS answer
cannot differ). Redirects are followed by hand, re-checking each hop.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import os
import re
import socket
import ssl
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote, urljoin, urlsplit

from .errors import InputError

MAX_DOWNLOAD_BYTES = 1_100_000_000  # a 60-minute 48 kHz 24-bit stereo WAV is 1.04 GB
MAX_DATA_URI_BYTES = 200_000_000  # a data: URI arrives whole inside the request, base64 and all
DOWNLOAD_TIMEOUT_S = 600.0
MAX_REDIRECTS = 5
# Tests only: lets downloads reach loopback addresses, over plain http:// too.
ALLOW_LOOPBACK_ENV = "ACE_STEP_UI_ALLOW_LOOPBACK"
CHUNK_BYTES = 64 * 1024

AUDIO_SUFFIXES = frozenset({".wav", ".wave", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a",
                            ".mp4", ".aac", ".webm", ".aif", ".aiff", ".wma", ".mka"})
SUFFIX_BY_CONTENT_TYPE = {
    "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/vnd.wave": ".wav",
    "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/flac": ".flac", "audio/x-flac": ".flac",
    "audio/ogg": ".ogg", "application/ogg": ".ogg", "audio/opus": ".opus", "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a", "audio/aac": ".aac", "audio/webm": ".webm", "video/mp4": ".mp4",
    "video/webm": ".webm", "audio/aiff": ".aiff", "audio/x-aiff": ".aiff",
}
BINARY_CONTENT_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream",
                                  "application/ogg", "application/mp4"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Characters left as they are when a URL's path and query are percent-encoded for the request line.
URL_SAFE = "/%:@!$&'()*+,;=?-._~"
# Ranges some Python versions still count as global, and IPv6 prefixes that embed an IPv4 address.
EXTRA_BLOCKED = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("64:ff9b:1::/48"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@contextmanager
def fetched_source(value: str, download_dir: str | Path) -> Iterator[Path]:
    """The local file of `value` for the length of the block: a path the user named, as it is; or
    an https:// download or decoded data: URI, which the block owns and deletes as it ends."""
    path = resolve_audio_source(value, download_dir)
    try:
        yield path
    finally:
        if _is_fetched(value):
            path.unlink(missing_ok=True)


def _is_fetched(value: str) -> bool:
    """Whether `resolve_audio_source` makes a new file for `value` (a URL or a data: URI), which
    is then the caller's to delete, rather than returning a path the user named."""
    value = value.strip()
    return value[:5].lower() == "data:" or bool(_URL_SCHEME.match(value))


def resolve_audio_source(value: str, download_dir: str | Path) -> Path:
    """A local path as it is; an https:// URL downloaded or a data: URI decoded into a new file in
    download_dir, which the caller deletes (`fetched_source` does)."""
    value = value.strip()
    if value[:5].lower() == "data:":
        return _save_data_uri(value, Path(download_dir))
    if _URL_SCHEME.match(value):
        return _download(value, Path(download_dir))
    path = Path(value).expanduser()
    if path.is_dir():
        raise InputError(f"'{value}' is a folder, not an audio file: name the file inside it")
    if not path.is_file():
        raise InputError(f"audio file '{value}' not found: check the path, or use an https:// URL")
    return path


def _save_data_uri(value: str, download_dir: Path) -> Path:
    header, comma, payload = value.partition(",")
    media_type, *parameters = (part.strip().lower() for part in header[5:].split(";"))
    if not comma or "base64" not in parameters or not media_type.startswith("audio/"):
        raise InputError("unsupported data: URI: use data:audio/<type>;base64,<data> "
                         "(for example data:audio/wav;base64,...)")
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > MAX_DATA_URI_BYTES:
        raise InputError(f"the data: URI is larger than {_megabytes(MAX_DATA_URI_BYTES)}: "
                         f"upload a shorter or compressed file")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the data: URI is not valid base64: encode the file again") from None
    if not data:
        raise InputError("the data: URI holds no data: encode the audio file again")
    suffix = SUFFIX_BY_CONTENT_TYPE.get(media_type, "")
    path = _new_file(download_dir, "upload", suffix)
    path.write_bytes(data)
    return path


def _download(url: str, download_dir: Path) -> Path:
    deadline = time.monotonic() + DOWNLOAD_TIMEOUT_S
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        host = parts.hostname or ""
        connection, response = _request(url, deadline)
        try:
            if response.status in REDIRECT_STATUSES:
                location = response.getheader("Location")
                if not location:
                    raise _failure(host, f"it answered HTTP {response.status} without a Location",
                                   "link to the audio file itself")
                url = urljoin(url, location.strip())
                continue
            if response.status >= 400:
                raise _failure(host, f"it answered HTTP {response.status} {response.reason}",
                               "check that the URL is public and correct")
            if response.status != 200:
                raise _failure(host, f"it answered HTTP {response.status} instead of 200",
                               "link to the audio file itself")
            return _save_body(response, connection, host, parts.path, download_dir, deadline)
        finally:
            response.close()
            connection.close()
    raise _failure(urlsplit(url).hostname or "", f"more than {MAX_REDIRECTS} redirects",
                   "link to the audio file itself")


def _request(url: str, deadline: float
             ) -> tuple[_PinnedHTTPConnection | _PinnedHTTPSConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in ("https", "http"):
        raise InputError(f"unsupported URL scheme '{scheme}': use an https:// URL or upload the file")
    if scheme == "http" and not _loopback_allowed():
        raise InputError(f"plain http:// is not accepted ({host or url}): use an https:// URL "
                         f"or upload the file")
    if not host:
        raise InputError(f"the URL '{url}' has no host name: use an https:// URL or upload the file")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise _failure(host, "the host name or port is not valid", "check the URL") from None
    addresses = _checked_addresses(ascii_host, port)
    if scheme == "http" and not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise InputError(f"plain http:// is only accepted for loopback test servers ({host}): "
                         f"use an https:// URL or upload the file")
    target = quote(parts.path or "/", safe=URL_SAFE) + (f"?{quote(parts.query, safe=URL_SAFE)}"
                                                          if parts.query else "")
    last_error: Exception | None = None
    for address in addresses:
        connection = (_PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection)(
            ascii_host, port, address, _seconds_left(deadline, host))
        try:
            connection.connect()
        except OSError as error:
            connection.close()
            last_error = error
            continue
        try:
            connection.request("GET", target, headers={
                "User-Agent": "ACE-Step-Playground", "Accept": "audio/*, */*;q=0.5",
                "Accept-Encoding": "identity"})
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise _connection_failure(host, error) from None
    raise _connection_failure(host, last_error) from None


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a given, already checked address; `host` is used only for the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = self.pinned_socket = socket.create_connection((self.address, self.port),
                                                                  self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As `_PinnedHTTPConnection`, with TLS verified against the host name (SNI and certificate)."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        try:
            self.sock = self.pinned_socket = self.tls.wrap_socket(sock, server_hostname=self.host)
        except OSError:
            sock.close()
            raise


def _checked_addresses(host: str, port: int) -> list[str]:
    """Every address the host resolves to, or InputError if any of them is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise _failure(host, "its name could not be resolved", "check the URL") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise _failure(host, "its name could not be resolved", "check the URL")
    for address in addresses:
        if not _address_allowed(ipaddress.ip_address(address)):
            resolved = "" if address == host else f"it resolves to {address}, "
            raise InputError(f"refusing to download from {host}: {resolved}a private, local or "
                             f"reserved address; use a public https:// URL or upload the file")
    return addresses


def _address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _address_allowed(embedded)
    if ip.is_loopback:
        return _loopback_allowed()
    blocked = (ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
               or ip.is_unspecified or any(ip in network for network in EXTRA_BLOCKED))
    return ip.is_global and not blocked


def _loopback_allowed() -> bool:
    return os.environ.get(ALLOW_LOOPBACK_ENV) == "1"


def _save_body(response: http.client.HTTPResponse,
               connection: _PinnedHTTPConnection | _PinnedHTTPSConnection, host: str,
               url_path: str, download_dir: Path, deadline: float) -> Path:
    content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if not (content_type.startswith(("audio/", "video/")) or content_type in BINARY_CONTENT_TYPES):
        raise _failure(host, f"it returned {content_type}, not audio", "link to the audio file itself")
    declared = response.getheader("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > MAX_DOWNLOAD_BYTES:
        raise _too_large(host)
    name = Path(unquote(url_path)).name
    suffix = Path(name).suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        suffix = SUFFIX_BY_CONTENT_TYPE.get(content_type, "")
    path = _new_file(download_dir, Path(name).stem, suffix)
    received = 0
    try:
        with open(path, "wb") as file:
            while True:
                # The connection drops `sock` once the response owns it; the socket stays open.
                connection.pinned_socket.settimeout(_seconds_left(deadline, host))
                chunk = response.read1(CHUNK_BYTES)
                _seconds_left(deadline, host)
                if not chunk:
                    break
                received += len(chunk)
                if received > MAX_DOWNLOAD_BYTES:
                    raise _too_large(host)
                file.write(chunk)
    except InputError:
        path.unlink(missing_ok=True)
        raise
    except (OSError, ValueError, http.client.HTTPException) as error:
        path.unlink(missing_ok=True)
        raise _connection_failure(host, error) from None
    if received == 0:
        path.unlink(missing_ok=True)
        raise _failure(host, "it returned an empty file", "check the URL")
    return path


def _new_file(download_dir: Path, stem: str, suffix: str) -> Path:
    download_dir.mkdir(parents=True, exist_ok=True)
    safe_stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:60] or "audio"
    handle, name = tempfile.mkstemp(prefix=f"{safe_stem}-", suffix=suffix, dir=download_dir)
    os.close(handle)
    return Path(name)


def _seconds_left(deadline: float, host: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _failure(host, f"the download took longer than {DOWNLOAD_TIMEOUT_S:g} s",
                       "try again, or upload the file")
    return left


def _megabytes(size_bytes: int) -> str:
    return f"{size_bytes / 1_000_000:g} MB"


def _too_large(host: str) -> InputError:
    return _failure(host, f"the file is larger than {_megabytes(MAX_DOWNLOAD_BYTES)}",
                    "use a shorter or compressed file")


def _connection_failure(host: str, error: Exception | None) -> InputError:
    if isinstance(error, (TimeoutError, socket.timeout)):
        return _failure(host, f"the download took longer than {DOWNLOAD_TIMEOUT_S:g} s",
                        "try again, or upload the file")
    if isinstance(error, ssl.SSLCertVerificationError):
        return _failure(host, "its TLS certificate could not be verified", "check the URL")
    reason = " ".join(str(error).split()) or type(error).__name__
    return _failure(host, f"the connection failed ({reason})", "check the URL, or upload the file")


def _failure(host: str, reason: str, remedy: str) -> InputError:
    return InputError(f"could not download audio from {host or 'the URL'}: {reason}; {remedy}")
