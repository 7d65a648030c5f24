"""Download helpers against a local HTTP server (never the internet): md5 and SHA-256 checks, skip-if-present,
atomic rename, safe extraction, and the fetch scripts run end to end with their URLs overridden."""
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from fastrcnn.errors import Error
from fastrcnn.rcnn import downloads
from fastrcnn.rcnn.downloads import extract, fetch, fetch_any, file_digest
from model_helpers import ALL_FILES, fetch_script

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/'srv' on 127.0.0.1; ``.requests`` lists the paths asked for; a path in ``.cut_short``
    is answered with its full Content-Length but only half its bytes, as by a dropped connection."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "srv"
    root.mkdir()
    requests, cut_short = [], set()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            if self.path not in cut_short:
                return super().do_GET()
            data = (root / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.close_connection = True
            return None

        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    httpd.root, httpd.requests, httpd.cut_short = root, requests, cut_short
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve(server, name, data):
    (server.root / name).write_bytes(data)
    return f"{server.url}/{name}", hashlib.md5(data).hexdigest()


def make_tar(path, files, mode="w:gz"):
    """A tar archive holding ``files`` {name: bytes}."""
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_fetch_downloads_checks_md5_and_leaves_no_temp_file(server, tmp_path):
    url, md5 = serve(server, "blob.bin", os.urandom(3 << 20))
    dest = tmp_path / "out" / "blob.bin"
    assert fetch(url, dest, md5=md5, progress=False) == dest
    assert file_digest(dest) == md5
    sha256 = hashlib.sha256(dest.read_bytes()).hexdigest()
    assert file_digest(dest, "sha256") == sha256
    fetch(url, dest, sha256=sha256.upper(), progress=False)  # present with the right SHA-256: kept
    assert len(server.requests) == 1
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]


def test_fetch_skips_a_present_file_with_the_right_md5(server, tmp_path):
    url, md5 = serve(server, "blob.bin", b"abc" * 1000)
    dest = tmp_path / "blob.bin"
    fetch(url, dest, md5=md5, progress=False)
    assert len(server.requests) == 1
    fetch(url, dest, md5=md5.upper(), progress=False)
    fetch(url, dest, progress=False)  # without an md5 a present file is kept too
    assert len(server.requests) == 1


def test_fetch_replaces_a_present_file_with_the_wrong_md5(server, tmp_path):
    url, md5 = serve(server, "blob.bin", b"good")
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"stale")
    fetch(url, dest, md5=md5, progress=False)
    assert dest.read_bytes() == b"good" and len(server.requests) == 1


def test_md5_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    url, md5 = serve(server, "blob.bin", b"payload")
    dest = tmp_path / "blob.bin"
    with pytest.raises(Error) as info:
        fetch(url, dest, md5="0" * 32, progress=False)
    message = str(info.value)
    assert url in message and "0" * 32 in message and md5 in message
    assert list(tmp_path.iterdir()) == [server.root]


def test_http_errors_name_the_url(server, tmp_path):
    with pytest.raises(Error, match=r"download of .*/missing\.tar failed.*404"):
        fetch(f"{server.url}/missing.tar", tmp_path / "missing.tar", progress=False)
    assert not (tmp_path / "missing.tar").exists()


def test_fetch_any_falls_back_to_the_next_mirror(server, tmp_path):
    url, md5 = serve(server, "blob.bin", b"mirror copy")
    dest = fetch_any([f"{server.url}/gone.bin", url], tmp_path / "blob.bin", md5, progress=False)
    assert dest.read_bytes() == b"mirror copy"
    with pytest.raises(Error, match=r"could not download x\.bin from any of 2 URL\(s\)"):
        fetch_any([f"{server.url}/gone.bin", url], tmp_path / "x.bin", "1" * 32, progress=False)


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tgz", "w:gz"), (".tar.gz", "w:gz")])
def test_extract_unpacks_tar_and_gzip(tmp_path, suffix, mode):
    archive = make_tar(tmp_path / f"a{suffix}", {"top/x.txt": b"x", "top/sub/y.txt": b"y"}, mode)
    extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest/top/x.txt").read_bytes() == b"x"
    assert (tmp_path / "dest/top/sub/y.txt").read_bytes() == b"y"


def _special_archive(path, name, target, kind):
    """A tar holding ok.txt, then a member ``name`` of tar type ``kind`` (a link to ``target``, a device...)."""
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        special = tarfile.TarInfo(name)
        special.type, special.linkname = kind, target or ""
        tar.addfile(special)
    return path


MALICIOUS = [
    ("file", "../escape.txt", None),
    ("file", "/tmp/absolute-escape.txt", None),
    ("symlink", "evil", "../../outside"),
    ("symlink", "evil", "/etc/passwd"),
    ("hardlink", "evil", "../outside"),
    ("device", "null", None),
]
TAR_TYPES = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}


@pytest.mark.parametrize("with_data_filter", [True, False])
@pytest.mark.parametrize("kind, name, target", MALICIOUS)
def test_extract_refuses_members_escaping_the_destination(tmp_path, monkeypatch, with_data_filter, kind, name,
                                                          target):
    if not with_data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "evil.tar"
    if kind == "file":
        make_tar(archive, {"ok.txt": b"ok", name: b"evil"}, "w")
    else:
        _special_archive(archive, name, target, TAR_TYPES[kind])
    dest = tmp_path / "dest"
    with pytest.raises(Error, match=r"refusing to unpack .*evil\.tar: member"):
        extract(archive, dest)
    assert not (dest / "ok.txt").exists()  # nothing is written before every member is checked
    assert not (tmp_path / "escape.txt").exists()


def test_extract_keeps_links_inside_the_destination(tmp_path):
    archive = _special_archive(tmp_path / "a.tar", "alias.txt", "ok.txt", tarfile.SYMTYPE)
    extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest/alias.txt").read_bytes() == b"ok"


def test_extract_errors(tmp_path):
    with pytest.raises(Error, match="expected one of"):
        extract(tmp_path / "a.zip", tmp_path)
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(Error, match=r"cannot unpack .*bad\.tgz"):
        extract(bad, tmp_path / "dest")


def _run_script(script, *args, env=None):
    full_env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("FASTRCNN_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), "--no-progress", *args],
                          capture_output=True, text=True, env=full_env, timeout=120, check=False)


def test_fetch_voc_script_end_to_end(server, tmp_path):
    make_tar(server.root / "devkit.tar", {"VOCdevkit/VOC2007/Annotations/000001.xml": b"<annotation/>",
                                         "VOCdevkit/devkit_doc.pdf": b"%PDF"}, "w")
    root = tmp_path / "data"
    args = ("--data-root", str(root), "--only", "voc2007-devkit", "--url-voc2007-devkit",
            f"{server.url}/devkit.tar")
    done = _run_script("fetch_voc.py", *args)
    assert done.returncode == 0, done.stderr
    assert (root / "VOCdevkit2007/VOC2007/Annotations/000001.xml").read_bytes() == b"<annotation/>"
    assert (root / "VOCdevkit2007").is_symlink() and not (root / "VOCdevkit2012").exists()
    assert server.requests == ["/devkit.tar"]

    again = _run_script("fetch_voc.py", *args)  # present and unpacked: no request, no second unpacking
    assert again.returncode == 0, again.stderr
    assert "already unpacked" in again.stdout and server.requests == ["/devkit.tar"]


def test_fetch_script_url_from_environment_and_md5_failure(server, tmp_path):
    make_tar(server.root / "ss.tgz", {"selective_search_data/voc_2007_test.mat": b"mat"})
    root = tmp_path / "data"
    env = {"FASTRCNN_URL_SELECTIVE_SEARCH": f"{server.url}/ss.tgz", "FASTRCNN_DATA_ROOT": str(root)}
    failed = _run_script("fetch_selective_search.py", env=env)  # the served file is not the real archive
    assert failed.returncode == 1
    assert "md5 mismatch" in failed.stderr and "7078c1db87a7851b31966b96774cd9b9" in failed.stderr
    assert not root.exists() or not any(root.iterdir())

    done = _run_script("fetch_selective_search.py", "--no-md5-check", env=env)
    assert done.returncode == 0, done.stderr
    assert (root / "selective_search_data/voc_2007_test.mat").read_bytes() == b"mat"


def test_archive_env_var_names():
    archive = downloads.Archive("voc2007-trainval", "a.tar", ("http://example.invalid/a.tar",), None)
    assert archive.env_var == "FASTRCNN_URL_VOC2007_TRAINVAL"


# ---------------------------------------------------------------------------------------------- fetch_reference

def test_reference_manifest_lists_the_original_files():
    script = fetch_script()
    manifest = script.read_manifest()
    demo = [f"demo-images/{n}{s}" for n in ("000004", "001551") for s in (".jpg", "_boxes.mat")]
    assert sorted(manifest) == sorted([f"original-models/{f}" for f in ALL_FILES] + demo)
    assert all(len(d) == 64 and set(d) <= set("0123456789abcdef") for d in manifest.values())
    assert script.source_path("original-models/VGG16/fc_only/train.prototxt") == "models/VGG16/fc_only/train.prototxt"
    assert script.source_path("demo-images/000004_boxes.mat") == "data/demo/000004_boxes.mat"
    assert script.BASE_URL.startswith("https://raw.githubusercontent.com/rbgirshick/fast-rcnn/")


@pytest.fixture
def reference_source(server, tmp_path, monkeypatch):
    """The fetch script with a manifest of three files the server holds at their original repository paths."""
    script = fetch_script()
    files = {"original-models/CaffeNet/test.prototxt": b'name: "CaffeNet"\n',
             "original-models/VGG16/fc_only/solver.prototxt": b"base_lr: 0.001\n",
             "demo-images/000004_boxes.mat": os.urandom(1 << 16)}
    lines = ["# a comment"]
    for rel, data in files.items():
        source = server.root / script.source_path(rel)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {rel}")
    manifest = tmp_path / "reference.sha256"
    manifest.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(script, "MANIFEST", manifest)
    return script, files, tmp_path / "reference"


def _main(script, out, server, capsys):
    status = script.main(["--output", str(out), "--base-url", server.url + "/", "--no-progress"])
    return status, capsys.readouterr()


def _tree(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_fetch_reference_writes_the_layout_and_resumes(reference_source, server, capsys):
    script, files, out = reference_source
    status, printed = _main(script, out, server, capsys)
    assert status == 0, printed.err
    assert _tree(out) == set(files)
    assert all((out / rel).read_bytes() == data for rel, data in files.items())
    assert sorted(server.requests) == sorted(f"/{script.source_path(rel)}" for rel in files)
    assert "3 files in" in printed.out and "FASTRCNN_REFERENCE" in printed.out

    status, printed = _main(script, out, server, capsys)  # all present and right: nothing asked for
    assert status == 0 and len(server.requests) == 3
    assert printed.out.count("already present with the right sha256") == 3


def test_fetch_reference_interrupted_download_leaves_no_file_and_a_rerun_finishes(reference_source, server,
                                                                                    capsys):
    script, files, out = reference_source
    cut = "/" + script.source_path("demo-images/000004_boxes.mat")
    server.cut_short.add(cut)
    status, printed = _main(script, out, server, capsys)
    assert status == 1
    assert "000004_boxes.mat failed: got 32768 of 65536 bytes" in printed.err and "rerun" in printed.err
    assert _tree(out) == set(files) - {"demo-images/000004_boxes.mat"}  # no partial file, the others kept

    server.cut_short.clear()
    requests_before = len(server.requests)
    status, printed = _main(script, out, server, capsys)
    assert status == 0, printed.err
    assert server.requests[requests_before:] == [cut]  # only the missing file is fetched again
    assert (out / "demo-images/000004_boxes.mat").read_bytes() == files["demo-images/000004_boxes.mat"]


def test_fetch_reference_checksum_mismatch_is_an_error(reference_source, server, capsys):
    script, files, out = reference_source
    rel = "original-models/VGG16/fc_only/solver.prototxt"
    expected = hashlib.sha256(files[rel]).hexdigest()
    (server.root / script.source_path(rel)).write_bytes(b"base_lr: 0.1\n")  # not the file of the manifest
    status, printed = _main(script, out, server, capsys)
    assert status == 1
    assert f"sha256 mismatch for {server.url}/models/VGG16/fc_only/solver.prototxt: expected {expected}" \
        in printed.err
    assert not (out / rel).exists() and not list(out.rglob("*.part"))


def test_fetch_reference_script_with_the_real_manifest(server, tmp_path):
    """Run as a script, URL from the environment: the served bytes are not the original's, so the first file
    fails its SHA-256 and nothing is written."""
    script = fetch_script()
    first, digest = next(iter(script.read_manifest().items()))
    source = server.root / script.source_path(first)
    source.parent.mkdir(parents=True)
    source.write_bytes(b"not the original")
    out = tmp_path / "reference"
    failed = _run_script("fetch_reference.py", "--output", str(out), env={"FASTRCNN_URL_REFERENCE": server.url})
    assert failed.returncode == 1
    assert f"sha256 mismatch for {server.url}/{script.source_path(first)}: expected {digest}" in failed.stderr
    assert not out.exists() or not _tree(out)
