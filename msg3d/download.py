"""Fetch a file by URL, checked and crash-safe (`msg3d download URL OUT [--sha256 HEX]`).

The workflow's ``download_checkpoint`` rule runs it for each checkpoint the config gives as a URL
(PYSKL's released ``.pth`` files). The transfer is ``torch.hub.download_url_to_file``'s, PyTorch's
own downloader. It cannot resume a broken transfer, so a failed try starts again from the first
byte: up to ``TRIES`` tries, ``WAIT_S`` seconds before the second and twice as long before each
later one. Only failures that a later try may not meet again are retried: the network (refused,
reset or dropped connections, unknown hosts, ``TIMEOUT_S`` seconds without data) and HTTP 408,
429 and 5xx; another HTTP error (404, 403) is the server's answer and ends it at once.

The file is written with ``msg3d.fileio.atomic_path``: ``OUT`` appears only once complete and,
when a SHA-256 is given, equal to it; a failed or killed download leaves no ``OUT`` (its
temporary, if killed, is removed by the next download of ``OUT``). Without a SHA-256 a transfer
that the server cut short and reported as complete goes unnoticed (HTTP reading does not check
the announced length), so give one where it matters.

Errors: ``OSError`` "cannot download URL: REASON (N tries)" when every try failed, ``ValueError``
for a malformed SHA-256, URL or a mismatch (both digests named): one line each from ``msg3d.cli``.
"""

import http.client
import re
import socket
import ssl
import sys
import time
import urllib.error
from pathlib import Path

from msg3d.fileio import atomic_path, sha256_file

TRIES = 3
WAIT_S = 2.0
TIMEOUT_S = 60.0
# HTTP answers that a later try may not get again: request timeout, too many requests, server errors
_RETRIED_STATUS = (408, 429)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# what the transfer raises (urlopen wraps the errors of connecting in URLError; reading raises the
# socket's, or http.client's for a response cut short or malformed); any other OSError is local
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)


def _retried(exc):
    """Whether the failed try ``exc`` (one of ``_NETWORK_ERRORS``) is worth another (the module
    docstring's rule)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in _RETRIED_STATUS or exc.code >= 500
    if isinstance(exc, urllib.error.URLError):
        # a socket's error is the network's; a text reason is the URL's (unknown scheme, no host),
        # and the file of a file:// URL, missing or unreadable, does not appear by waiting either
        return isinstance(exc.reason, OSError) and not isinstance(
            exc.reason, (FileNotFoundError, PermissionError, IsADirectoryError))
    return True


def _reason(exc, timeout_s):
    """A failed try's cause in a few words: "HTTP 404 Not Found", "Connection refused", ..."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, TimeoutError):
        return f"no data for {timeout_s:g} s"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__


def download(url, out, *, sha256=None, tries=TRIES, wait_s=WAIT_S, timeout_s=TIMEOUT_S, progress=False):
    """Download ``url`` to the file ``out`` and return its SHA-256 (64 lowercase hex digits).

    ``sha256`` (hex, either case) is the digest the file must have: a mismatch writes nothing.
    ``tries`` >= 1 tries with ``wait_s``, 2 * ``wait_s``, ... seconds between them; a try fails
    after ``timeout_s`` seconds without data. ``progress`` shows a progress bar on stderr.
    Raises ``OSError`` "cannot download URL: REASON" when no try succeeded, ``ValueError`` for a
    malformed ``sha256`` or URL or a mismatch (each one line naming ``url``), and a local write
    failure as the OS reports it (a full disk: one line naming ``out``, by ``atomic_path``).
    """
    if sha256 is not None and not _SHA256.fullmatch(sha256.lower()):
        raise ValueError(f"{url}: the expected sha256 must be 64 hexadecimal digits, got {sha256!r}")
    if tries < 1:
        raise ValueError(f"{url}: tries must be >= 1, got {tries}")
    # imported here: loading the command (and its code digest's closure) stays torch-free, as every
    # stage but training and testing is
    from torch.hub import download_url_to_file

    # torch.hub opens the URL without a timeout, so a stalled server would hang the job: new
    # sockets take the default timeout (this process's; restored afterwards)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        with atomic_path(out) as tmp:
            for attempt in range(1, tries + 1):
                try:
                    download_url_to_file(url, str(tmp), progress=progress)
                    break
                except ValueError as exc:  # urllib's "unknown url type" and the like
                    raise ValueError(f"cannot download {url}: {exc}") from None
                except (OSError, http.client.HTTPException) as exc:
                    if not isinstance(exc, _NETWORK_ERRORS):
                        raise  # writing the temporary failed: a local fault, passed on as it is
                    if not _retried(exc) or attempt == tries:
                        count = f" ({attempt} tries)" if attempt > 1 else ""
                        raise OSError(f"cannot download {url}: {_reason(exc, timeout_s)}{count}") from None
                time.sleep(wait_s * 2 ** (attempt - 1))
            digest = sha256_file(tmp)
            if sha256 is not None and digest != sha256.lower():
                raise ValueError(f"{url}: the download's sha256 is {digest}, not the expected {sha256.lower()};"
                                 " nothing was written")
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return digest


def add_arguments(parser):
    parser.add_argument("url", help="http(s):// or file:// URL of the file")
    parser.add_argument("out", type=Path, help="file to write: it appears only complete (and checked)")
    parser.add_argument("--sha256", help="SHA-256 the file must have (64 hex digits); on a mismatch nothing is written")
    parser.add_argument("--tries", type=int, default=TRIES,
                        help=f"tries before giving up (default {TRIES}); each starts from the first byte")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help=f"seconds without data after which a try fails (default {TIMEOUT_S:g})")


def run(args):
    digest = download(args.url, args.out, sha256=args.sha256, tries=args.tries, timeout_s=args.timeout,
                      progress=sys.stderr.isatty())
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest}) from {args.url}", file=sys.stderr)
    return 0
