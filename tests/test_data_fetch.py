"""`puface data fetch lfw` and its download code, against a local HTTP server started here (never the internet):
a download cut off half-way resumes with an HTTP Range request, a checksum mismatch deletes the file and says so,
an unreachable server says what to do offline, and a small LFW-like archive becomes aligned chips."""

from __future__ import annotations

import errno
import hashlib
import os
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import puface.data.fetch as fetch_module
from puface.cli import main
from puface.data.fetch import download, extract_tar, select_identities
from puface.utils.errors import PufaceError


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.files[path]`, honours `Range: bytes=N-`; `server.cut_first` cuts the first full
    response off half-way (the connection closes early)."""

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):
        data = self.server.files.get(self.path)
        self.server.requests.append((self.path, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data):
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_first and not rng:
            self.server.cut_first = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cut_first = {}, [], False
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _lfw_like_tgz(johns_dir: Path, people: int = 2, per_person: int = 6) -> bytes:
    """A tiny lfw-deepfunneled.tgz: lfw-deepfunneled/<Name>/<Name>_000k.jpg, plus one person with 1 photo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        dirs = sorted(d for d in johns_dir.iterdir() if d.is_dir())
        for d in dirs[:people]:
            for k, f in enumerate(sorted(d.glob("*.jpg"))[:per_person], 1):
                tf.add(f, arcname=f"lfw-deepfunneled/{d.name}/{d.name}_{k:04d}.jpg")
        f = sorted(dirs[people].glob("*.jpg"))[0]
        tf.add(f, arcname=f"lfw-deepfunneled/{dirs[people].name}/{dirs[people].name}_0001.jpg")
    return buf.getvalue()


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    srv, base = server
    data = bytes(range(256)) * 4000  # ~1 MB
    srv.files["/a.tgz"] = data
    srv.cut_first = True
    md5 = hashlib.md5(data).hexdigest()
    with pytest.raises(PufaceError, match="interrupted .* run the same command again to resume"):
        download(f"{base}/a.tgz", tmp_path / "a.tgz", md5=md5, progress=False)
    part = tmp_path / ".a.tgz.part"
    assert 0 < part.stat().st_size < len(data) and not (tmp_path / "a.tgz").exists()
    got = download(f"{base}/a.tgz", tmp_path / "a.tgz", md5=md5, progress=False, log=lambda m: None)
    assert got.read_bytes() == data and not part.exists()
    assert srv.requests[-1] == ("/a.tgz", f"bytes={len(data) // 2}-")
    # a complete, verified file is not downloaded again
    n = len(srv.requests)
    download(f"{base}/a.tgz", tmp_path / "a.tgz", md5=md5, progress=False)
    assert len(srv.requests) == n


def test_checksum_mismatch_deletes_the_file(server, tmp_path):
    srv, base = server
    srv.files["/b.tgz"] = b"not the archive you want" * 100
    with pytest.raises(PufaceError, match="md5 checksum mismatch .* deleted"):
        download(f"{base}/b.tgz", tmp_path / "b.tgz", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_says_what_to_do(server, tmp_path, capsys):
    _, base = server
    code = main(["data", "fetch", "lfw", "--url", f"{base}/missing.tgz", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "HTTP 404" in err and "--tarball lfw-deepfunneled.tgz" in err and "Traceback" not in err


def test_extract_refuses_unsafe_members(tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        ti = tarfile.TarInfo("../escape.txt")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"hi"))
    with pytest.raises(PufaceError, match="cannot unpack"):
        extract_tar(bad, tmp_path / "x")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "x").exists()


def test_fetch_lfw_downloads_unpacks_selects_and_aligns(server, johns_dir, tmp_path, capsys):
    pytest.importorskip("dlib")
    srv, base = server
    data = _lfw_like_tgz(johns_dir)
    srv.files["/lfw-deepfunneled.tgz"] = data
    out = tmp_path / "data"
    args = ["data", "fetch", "lfw", "--url", f"{base}/lfw-deepfunneled.tgz", "--md5", hashlib.md5(data).hexdigest(),
            "--out", str(out), "--template", "dlib150", "--template", "arcface112", "--no-progress"]
    code = main(args)
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "2 people with >= 5 photos (12 photos)" in cap.err
    for name, size in (("lfw-chips150", 150), ("lfw-arcface112", 112)):
        chips = sorted((out / name).rglob("*.jpg"))
        assert len(chips) >= 10, (name, cap.err)  # johns chips are faces; at most a couple may be missed
        from PIL import Image

        assert Image.open(chips[0]).size == (size, size)
        assert len({c.parent.name for c in chips}) == 2  # the person with one photo is left out
        # cut upright only (LFW's photos are upright), as the chips the published numbers were made on: not with
        # `puface align`'s turned-photo search (--rotations auto), which may cut other faces of a weak-face photo
        assert "rotations" not in __import__("json").loads((out / name / "align_config.json").read_text())
    # rerun: the archive is verified and kept, nothing is downloaded or aligned again
    n = len(srv.requests)
    assert main(args) == 0
    assert len(srv.requests) == n and "0 aligned" in capsys.readouterr().out
    # offline path: the same archive given as --tarball
    tgz = tmp_path / "lfw-deepfunneled.tgz"
    tgz.write_bytes(data)
    code = main(["data", "fetch", "lfw", "--tarball", str(tgz), "--md5", hashlib.md5(data).hexdigest(),
                 "--out", str(tmp_path / "offline"), "--no-progress"])
    assert code == 0 and len(list((tmp_path / "offline" / "lfw-chips150").rglob("*.jpg"))) >= 10


def test_select_identities(tmp_path):
    root = tmp_path / "people"
    for name, n in (("A", 5), ("B", 4), ("C", 7)):
        (root / name).mkdir(parents=True)
        for k in range(n):
            (root / name / f"{name}_{k}.jpg").write_bytes(b"x")
    assert select_identities(root, tmp_path / "sel", 5) == (2, 12)
    assert sorted(p.name for p in (tmp_path / "sel").iterdir()) == ["A", "C"]


def test_another_archive_is_unpacked_again_and_other_min_images_go_beside(server, johns_dir, tmp_path, capsys):
    """An unpacked folder is kept only for the archive it came from; --min-images N != 5 writes its own photos
    and chips folders (lfw-photos-minN, lfw-chips150-minN) instead of refusing the default ones."""
    from puface.data.fetch import extract_tar

    small, big = tmp_path / "small.tgz", tmp_path / "big.tgz"
    small.write_bytes(_lfw_like_tgz(johns_dir, people=2))
    big.write_bytes(_lfw_like_tgz(johns_dir, people=3))
    dest = tmp_path / "unpacked"

    def count() -> int:
        """People folders in the one unpacked top folder."""
        top = next(p for p in dest.iterdir() if p.is_dir())
        return len([p for p in top.iterdir() if p.is_dir()])

    extract_tar(small, dest)
    first = count()
    extract_tar(small, dest)  # the same archive: kept
    assert count() == first
    extract_tar(big, dest)
    assert count() == first + 1
    pytest.importorskip("dlib")
    data = big.read_bytes()
    out = tmp_path / "data"
    base = [
        "data",
        "fetch",
        "lfw",
        "--tarball",
        str(big),
        "--md5",
        hashlib.md5(data).hexdigest(),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(base) == 0
    assert main([*base, "--min-images", "6"]) == 0, capsys.readouterr().err
    assert (out / "lfw-photos-min6").is_dir() and list((out / "lfw-chips150-min6").rglob("*.jpg"))


class _ChunkedHandler(BaseHTTPRequestHandler):
    """Serves `server.data` with chunked transfer encoding (no Content-Length) and closes the connection half-way
    through the first response; a `Range: bytes=N-` request gets the rest as a 206."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        data, rng = self.server.data, self.headers.get("Range")
        self.server.requests.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        body = data[start:] if rng else data[: len(data) // 2]
        self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
        if rng:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


def test_a_chunked_download_cut_off_is_resumable_not_a_traceback(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedHandler)
    srv.data, srv.requests = bytes(range(256)) * 400, []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/c.tgz"
    md5 = hashlib.md5(srv.data).hexdigest()
    try:
        with pytest.raises(PufaceError, match="interrupted .* run the same command again to resume"):
            download(url, tmp_path / "c.tgz", md5=md5, progress=False)
        assert (tmp_path / ".c.tgz.part").stat().st_size == len(srv.data) // 2
        got = download(url, tmp_path / "c.tgz", md5=md5, progress=False, log=lambda m: None)
        assert got.read_bytes() == srv.data and srv.requests[-1] == f"bytes={len(srv.data) // 2}-"
    finally:
        srv.shutdown()
        srv.server_close()


class _WholeFileAs206(BaseHTTPRequestHandler):
    """Answers a Range request with 206 but sends the whole file (Content-Range from byte 0), as some servers do."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        data = self.server.data
        self.send_response(206 if self.headers.get("Range") else 200)
        self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_206_from_byte_0_is_not_appended_to_the_partial_file(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _WholeFileAs206)
    srv.data = bytes(range(256)) * 40
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/w.tgz"
    try:
        (tmp_path / ".w.tgz.part").write_bytes(srv.data[:1000])  # an earlier download, cut off
        got = download(url, tmp_path / "w.tgz", progress=False, log=lambda m: None)  # no checksum to catch it
        assert got.read_bytes() == srv.data
        (tmp_path / ".x.tgz.part").write_bytes(srv.data[:1000])
        got = download(
            url, tmp_path / "x.tgz", md5=hashlib.md5(srv.data).hexdigest(), progress=False, log=lambda m: None
        )
        assert got.read_bytes() == srv.data
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (writes to it fail: no space left)")
def test_a_full_disk_is_a_clear_error_not_a_traceback(server, tmp_path, capsys, monkeypatch):
    srv, base = server
    srv.files["/lfw-deepfunneled.tgz"] = bytes(range(256)) * 100

    def full(fd):  # the partial file's data never lands: ENOSPC, as on a full disk (a link to /dev/full is refused now)
        os.ftruncate(fd, 0)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fetch_module.os, "fsync", full)
    with pytest.raises(PufaceError, match="cannot write .*lfw-deepfunneled.tgz.part .*run the same command again"):
        download(f"{base}/lfw-deepfunneled.tgz", tmp_path / "lfw-deepfunneled.tgz", progress=False)
    code = main(
        ["data", "fetch", "lfw", "--url", f"{base}/lfw-deepfunneled.tgz", "--out", str(tmp_path), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot write" in err and "Traceback" not in err and "Offline?" not in err


class _SlowHandler(BaseHTTPRequestHandler):
    """Serves `server.data` in 10 pieces, 50 ms apart (so two downloads overlap)."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        import time

        data = self.server.data
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        step = len(data) // 10
        for i in range(0, len(data), step):
            self.wfile.write(data[i : i + step])
            self.wfile.flush()
            time.sleep(0.05)


def test_two_downloads_of_one_file_at_once_take_turns(tmp_path):
    import time

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    srv.data = bytes(range(256)) * 4000
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/s.tgz"
    results: list = []

    def fetch(md5):
        try:
            results.append(download(url, tmp_path / "s.tgz", md5=md5, progress=False, log=lambda m: None))
        except Exception as e:  # noqa: BLE001 - the test reports it
            results.append(e)

    try:
        for md5 in (hashlib.md5(srv.data).hexdigest(), None):
            (tmp_path / "s.tgz").unlink(missing_ok=True)
            results.clear()
            threads = [threading.Thread(target=fetch, args=(md5,)) for _ in range(2)]
            threads[0].start()
            time.sleep(0.2)  # the second starts while the first is half-way
            threads[1].start()
            for t in threads:
                t.join(30)
            assert results == [tmp_path / "s.tgz"] * 2, results
            assert (tmp_path / "s.tgz").read_bytes() == srv.data and not (tmp_path / ".s.tgz.part").exists()
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_tgz_with_corrupt_compressed_data_is_a_clear_error(tmp_path):
    import gzip

    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tf:
        for i in range(3):
            ti = tarfile.TarInfo(f"top/p{i}/a.jpg")
            ti.size = 20000
            tf.addfile(ti, io.BytesIO((bytes(range(256)) * 79)[: ti.size]))
    t = plain.getvalue()
    # two gzip members (a valid .tgz may have several); the second's first deflate block has the reserved type 3
    second = bytearray(gzip.compress(t[30000:], mtime=0))
    second[10] |= 0b110
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(gzip.compress(t[:30000], mtime=0) + bytes(second))
    with pytest.raises(PufaceError, match="cannot unpack .*damaged"):
        extract_tar(bad, tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tgz"]


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_unpacking_onto_a_full_disk_does_not_call_the_archive_damaged(tmp_path):
    import subprocess
    import sys

    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tf:
        ti = tarfile.TarInfo("top/p/a.jpg")
        ti.size = 200_000
        tf.addfile(ti, io.BytesIO(bytes(ti.size)))
    # a child process whose files cannot grow past 100 kB: writing the member fails as on a full disk (EFBIG)
    code = (
        "import resource, signal, sys\n"
        "from puface.data.fetch import extract_tar\n"
        "from puface.utils.errors import PufaceError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "try:\n"
        "    extract_tar(sys.argv[1], sys.argv[2])\n"
        "except PufaceError as e:\n"
        "    print(e)\n"
    )
    import os

    import puface

    env = {**os.environ, "PYTHONPATH": str(Path(puface.__file__).parents[1])}  # this checkout's puface
    r = subprocess.run([sys.executable, "-c", code, str(good), str(tmp_path / "x")], capture_output=True, text=True,
                       timeout=60, env=env)
    assert "cannot unpack into" in r.stdout and "make room" in r.stdout, r.stdout + r.stderr
    assert "damaged" not in r.stdout and "delete it" not in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tar"]


def test_a_link_at_the_partial_files_name_is_refused_not_written_through(server, tmp_path):
    """A link planted at `.NAME.part` (before the download, or while it waits for the server) had the download
    written into its target (appended: its size taken for the bytes already there); now one clear error, the target
    untouched."""
    srv, base = server
    srv.files["/l.tgz"] = data = bytes(range(256)) * 40
    target = tmp_path / "victim"
    target.write_bytes(b"keep me")
    part = tmp_path / ".l.tgz.part"
    part.symlink_to(target)
    with pytest.raises(PufaceError, match=r"\.l\.tgz\.part is a link.* refusing to write through it: delete it"):
        download(f"{base}/l.tgz", tmp_path / "l.tgz", md5=hashlib.md5(data).hexdigest(), progress=False)
    assert target.read_bytes() == b"keep me" and srv.requests == [] and not (tmp_path / "l.tgz").exists()
    part.unlink()
    real_urlopen = fetch_module.urllib.request.urlopen

    def urlopen_then_plant(*a, **k):  # the link comes while the server answers
        resp = real_urlopen(*a, **k)
        part.symlink_to(target)
        return resp

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch_module.urllib.request, "urlopen", urlopen_then_plant)
        with pytest.raises(PufaceError, match="is a link"):
            download(f"{base}/l.tgz", tmp_path / "l.tgz", md5=hashlib.md5(data).hexdigest(), progress=False)
    assert target.read_bytes() == b"keep me" and not (tmp_path / "l.tgz").exists()
