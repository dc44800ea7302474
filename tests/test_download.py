"""msg3d download: a checked, crash-safe fetch by URL (the workflow's download_checkpoint rule).

Local URLs only: file:// and a small HTTP server on 127.0.0.1 whose answers each test scripts."""

import hashlib
import http.server
import socket
import threading

import pytest

from msg3d.cli import main
from msg3d.download import download

BODY = b"not really a checkpoint, but bytes all the same\n" * 100
DIGEST = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source" / "j.pth"
    path.parent.mkdir()
    path.write_bytes(BODY)
    return path


@pytest.fixture
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


class ScriptedServer:
    """An HTTP server on 127.0.0.1 that answers the n-th GET with ``statuses[n]`` (the last one
    repeated): 200 with BODY, any other status with an empty body. ``requests`` counts the GETs."""

    def __init__(self, statuses):
        self.statuses, self.requests = list(statuses), 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status = owner.statuses[min(owner.requests, len(owner.statuses) - 1)]
                owner.requests += 1
                body = BODY if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ckpt/j.pth"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(*statuses):
        servers.append(ScriptedServer(statuses))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def unused_port():
    """A local port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_downloads_the_bytes_and_returns_their_sha256(source, out_dir):
    out = out_dir / "sub" / "j.pth"
    assert download(source.as_uri(), out) == DIGEST
    assert out.read_bytes() == BODY
    # the expected hash in either case
    assert download(source.as_uri(), out_dir / "k.pth", sha256=DIGEST.upper()) == DIGEST


def test_a_hash_mismatch_names_both_digests_and_writes_nothing(source, out_dir):
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(ValueError) as error:
        download(source.as_uri(), out_dir / "j.pth", sha256=wrong)
    assert str(error.value) == (f"{source.as_uri()}: the download's sha256 is {DIGEST}, not the expected {wrong};"
                                " nothing was written")
    assert list(out_dir.iterdir()) == []  # neither the file nor a temporary


def test_a_hash_mismatch_leaves_an_older_file_in_place(source, out_dir):
    out = out_dir / "j.pth"
    out.write_bytes(b"the previous download")
    with pytest.raises(ValueError):
        download(source.as_uri(), out, sha256="0" * 64)
    assert out.read_bytes() == b"the previous download" and list(out_dir.iterdir()) == [out]


def test_an_unreachable_url_is_one_line_naming_it_and_the_reason(out_dir, capsys):
    url = f"http://127.0.0.1:{unused_port()}/msg3d/j.pth"
    assert main(["download", url, str(out_dir / "j.pth"), "--tries", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"msg3d download: error: cannot download {url}: Connection refused\n"
    assert captured.out == "" and list(out_dir.iterdir()) == []


def test_cli_mismatch_is_one_line_and_success_prints_the_sha256(source, out_dir, capsys):
    assert main(["download", source.as_uri(), str(out_dir / "j.pth"), "--sha256", "1" * 64]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"msg3d download: error: {source.as_uri()}: the download's sha256")
    assert main(["download", source.as_uri(), str(out_dir / "j.pth")]) == 0
    assert f"sha256 {DIGEST}" in capsys.readouterr().err


def test_server_errors_are_retried_then_succeed(serve, out_dir):
    server = serve(503, 500, 200)
    assert download(server.url, out_dir / "j.pth", wait_s=0) == DIGEST
    assert server.requests == 3 and (out_dir / "j.pth").read_bytes() == BODY


def test_gives_up_after_the_tries_with_the_last_reason(serve, out_dir):
    server = serve(503)
    with pytest.raises(OSError) as error:
        download(server.url, out_dir / "j.pth", tries=3, wait_s=0)
    assert str(error.value) == f"cannot download {server.url}: HTTP 503 Service Unavailable (3 tries)"
    assert server.requests == 3 and list(out_dir.iterdir()) == []


def test_a_missing_file_is_not_retried(serve, out_dir):
    server = serve(404, 200)
    with pytest.raises(OSError) as error:
        download(server.url, out_dir / "j.pth", wait_s=0)
    assert str(error.value) == f"cannot download {server.url}: HTTP 404 Not Found"
    assert server.requests == 1


def test_a_silent_server_times_out(out_dir):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/j.pth"
        with pytest.raises(OSError) as error:
            download(url, out_dir / "j.pth", tries=1, timeout_s=0.2)
    assert str(error.value) == f"cannot download {url}: no data for 0.2 s"
    assert socket.getdefaulttimeout() is None  # the process's default is restored


@pytest.mark.parametrize("url, message", [
    ("ftp2://example.org/j.pth", "cannot download ftp2://example.org/j.pth: unknown url type: ftp2"),
    ("http:///j.pth", "cannot download http:///j.pth: no host given"),
])
def test_a_malformed_url_is_refused_without_retrying(out_dir, url, message):
    with pytest.raises(OSError) as error:
        download(url, out_dir / "j.pth", wait_s=60)  # a retry would wait a minute
    assert str(error.value) == message


def test_a_malformed_expected_hash_is_refused(source, out_dir):
    with pytest.raises(ValueError, match="the expected sha256 must be 64 hexadecimal digits, got 'abc'"):
        download(source.as_uri(), out_dir / "j.pth", sha256="abc")
    assert list(out_dir.iterdir()) == []
