"""gptcourse.corpora: the registry, the real cached files, and verified atomic downloads.

The download tests never touch the internet: a ``ThreadingHTTPServer`` on 127.0.0.1 (fixture
``http_server`` in conftest) serves bytes generated here, ``GPTCOURSE_DATA_DIR`` points at
temporary folders, and each test registers its own corpus (removed afterwards). Checks are
exact: file bytes, sha256, request counts, the set of files left in the cache folders.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import zipfile
from pathlib import Path

import pytest

from gptcourse import corpora
from gptcourse.corpora import Corpus, CorpusError

REAL = {
    "tinyshakespeare": "tinyshakespeare.txt",
    "the-verdict": "the-verdict.txt",
    "sms-spam": "SMSSpamCollection",
    "instruction-data": "instruction-data.json",
    "gpt2-encoder": "gpt2/encoder.json",
    "gpt2-vocab": "gpt2/vocab.bpe",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(n: int = 300_000, seed: int = 0) -> bytes:
    """Random bytes, bigger than one 64 KiB read block so downloads take several reads."""
    return random.Random(seed).randbytes(n)


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden and ``.part`` ones too), as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if not p.is_dir())


@pytest.fixture
def register():
    """``register(Corpus(...))`` for this test only: the registry is restored afterwards."""
    before = dict(corpora.REGISTRY)

    def add(corpus: Corpus) -> Corpus:
        return corpora.register(corpus)

    yield add
    corpora.REGISTRY.clear()
    corpora.REGISTRY.update(before)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty temporary folder as the only cache directory."""
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv("GPTCOURSE_DATA_DIR", str(folder))
    return folder


def real_data_dirs() -> list[Path]:
    raw = os.environ.get("GPTCOURSE_DATA_DIR", "")
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


needs_real_data = pytest.mark.skipif(
    not any((d / "the-verdict.txt").is_file() for d in real_data_dirs()),
    reason="GPTCOURSE_DATA_DIR does not hold the course corpora (set it to the shared data)",
)


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------


def test_registry_has_the_course_corpora():
    assert set(REAL) <= set(corpora.names())
    assert corpora.names() == sorted(corpora.names())


@pytest.mark.parametrize("name", sorted(REAL))
def test_registry_entries_are_well_formed(name):
    c = corpora.REGISTRY[name]
    assert c.name == name
    assert c.filename == REAL[name]
    assert re.fullmatch(r"[0-9a-f]{64}", c.sha256)
    assert c.url.startswith("https://")


def test_sms_spam_is_a_zip_member():
    c = corpora.REGISTRY["sms-spam"]
    assert c.url.endswith(".zip") and c.member == "SMSSpamCollection"


@pytest.mark.parametrize("bad", ["0" * 63, "0" * 65, "A" * 64, "g" * 64, ""])
def test_register_rejects_a_bad_sha256(register, bad):
    with pytest.raises(ValueError, match="sha256"):
        register(Corpus("bad-sha", "bad.txt", "http://127.0.0.1:9/bad.txt", bad))
    assert "bad-sha" not in corpora.REGISTRY


def test_unknown_name_raises_keyerror_listing_known_names():
    with pytest.raises(KeyError) as info:
        corpora.path("tiny-shakespeare")
    msg = str(info.value)
    assert "tiny-shakespeare" in msg
    for name in REAL:
        assert name in msg


def test_name_must_be_a_str():
    with pytest.raises(TypeError):
        corpora.path(Path("the-verdict"))  # type: ignore[arg-type]


def test_cache_dirs_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("GPTCOURSE_DATA_DIR", raising=False)
    assert corpora.cache_dirs() == [Path.home() / ".cache" / "gptcourse"]
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("GPTCOURSE_DATA_DIR", f"{a}{os.pathsep}{os.pathsep}{b}")
    assert corpora.cache_dirs() == [a, b]  # empty entries are skipped


# --------------------------------------------------------------------------------------
# The real files (GPTCOURSE_DATA_DIR; read-only on the course machines)
# --------------------------------------------------------------------------------------


@needs_real_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_file_verifies(name):
    p = corpora.path(name, download=False)
    assert p.is_file() and p.as_posix().endswith(REAL[name])
    assert p.parent.resolve() in {(d / REAL[name]).parent.resolve() for d in real_data_dirs()}
    assert corpora.sha256_file(p) == corpora.REGISTRY[name].sha256


@needs_real_data
def test_load_text_the_verdict():
    text = corpora.load_text("the-verdict")
    assert text.startswith("I HAD always thought Jack Gisburn rather a cheap genius")
    assert len(text) == 20_479  # characters (pure ASCII: also the byte count)


@needs_real_data
def test_load_text_tinyshakespeare():
    text = corpora.load_text("tinyshakespeare")
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert len(text) == 1_115_394


# --------------------------------------------------------------------------------------
# Downloads from the local server
# --------------------------------------------------------------------------------------


def test_download_lands_a_verified_file(http_server, cache, register):
    data = payload()
    url = http_server.serve("/corpus.txt", data)
    register(Corpus("t-good", "good.txt", url, sha(data)))
    p = corpora.path("t-good")
    assert p == cache / "good.txt"
    assert p.read_bytes() == data
    assert files_under(cache) == ["good.txt"]  # no temporary file left behind
    assert http_server.hits["/corpus.txt"] == 1


def test_second_call_uses_the_cache(http_server, cache, register):
    data = payload(1000)
    url = http_server.serve("/c.txt", data)
    register(Corpus("t-twice", "twice.txt", url, sha(data)))
    first = corpora.path("t-twice")
    second = corpora.path("t-twice")
    assert first == second
    assert http_server.hits["/c.txt"] == 1


def test_download_into_a_subfolder(http_server, cache, register):
    data = b'{"hello": 1}'
    url = http_server.serve("/enc.json", data)
    register(Corpus("t-sub", "deep/er/enc.json", url, sha(data)))
    assert corpora.path("t-sub") == cache / "deep" / "er" / "enc.json"
    assert files_under(cache) == ["deep/er/enc.json"]


def test_load_text_is_the_exact_utf8_text(http_server, cache, register):
    text = "naïve café — 日本語 🙂\r\nline two\rthree\n"
    data = text.encode("utf-8")
    url = http_server.serve("/u.txt", data)
    register(Corpus("t-utf8", "u.txt", url, sha(data)))
    # the verified bytes, decoded: no newline translation (\r\n and \r are kept)
    assert corpora.load_text("t-utf8") == text


def test_checksum_mismatch_raises_and_leaves_nothing(http_server, cache, register):
    data = payload()
    url = http_server.serve("/bad.txt", data)
    register(Corpus("t-mismatch", "bad.txt", url, sha(data + b"!")))
    with pytest.raises(CorpusError) as info:
        corpora.path("t-mismatch")
    assert "sha256" in str(info.value) and "bad.txt" in str(info.value)
    assert files_under(cache) == []


def test_connection_dropped_mid_file_raises_and_leaves_nothing(http_server, cache, register):
    data = payload()
    url = http_server.serve("/cut.txt", data, mode="truncate")
    register(Corpus("t-cut", "cut.txt", url, sha(data)))
    with pytest.raises(CorpusError) as info:
        corpora.path("t-cut")
    assert url in str(info.value)
    assert files_under(cache) == []


def test_http_error_raises_and_leaves_nothing(http_server, cache, register):
    register(Corpus("t-404", "missing.txt", http_server.url("/nothing-here"), sha(b"x")))
    with pytest.raises(CorpusError) as info:
        corpora.path("t-404")
    assert "404" in str(info.value)
    assert files_under(cache) == []


def test_failed_download_can_be_retried(http_server, cache, register):
    data = payload(200_000, seed=3)
    url = http_server.serve("/flaky.txt", data, mode="truncate")
    register(Corpus("t-retry", "flaky.txt", url, sha(data)))
    with pytest.raises(CorpusError):
        corpora.path("t-retry")
    http_server.serve("/flaky.txt", data)
    assert corpora.path("t-retry").read_bytes() == data
    assert files_under(cache) == ["flaky.txt"]


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_member_is_extracted_and_verified(http_server, cache, register):
    member = b"ham\tGo until jurong point\nspam\tFree entry in 2 a wkly comp\n" * 500
    archive = make_zip({"readme.txt": b"UCI", "SMSSpamCollection": member})
    url = http_server.serve("/sms.zip", archive)
    register(Corpus("t-zip", "SMSSpamCollection", url, sha(member), member="SMSSpamCollection"))
    p = corpora.path("t-zip")
    assert p.read_bytes() == member  # the member itself, not the archive
    assert files_under(cache) == ["SMSSpamCollection"]


def test_zip_member_with_wrong_sha_raises(http_server, cache, register):
    member = b"ham\thello\n"
    url = http_server.serve("/z.zip", make_zip({"m.txt": member}))
    register(Corpus("t-zip-sha", "m.txt", url, sha(make_zip({"m.txt": member})), member="m.txt"))
    with pytest.raises(CorpusError, match="sha256"):  # the archive's sha256 is not the member's
        corpora.path("t-zip-sha")
    assert files_under(cache) == []


@pytest.mark.parametrize("body", [make_zip({"other.txt": b"x"}), b"this is not a zip archive"])
def test_zip_without_the_member_raises(http_server, cache, register, body):
    url = http_server.serve("/nz.zip", body)
    register(Corpus("t-zip-missing", "m.txt", url, sha(b"x"), member="m.txt"))
    with pytest.raises(CorpusError) as info:
        corpora.path("t-zip-missing")
    assert "m.txt" in str(info.value)
    assert files_under(cache) == []


# --------------------------------------------------------------------------------------
# Offline, read-only and multi-folder caches
# --------------------------------------------------------------------------------------


def assert_offline_message(msg: str, corpus: Corpus) -> None:
    assert corpus.filename in msg
    assert corpus.url in msg
    assert "GPTCOURSE_DATA_DIR" in msg


def test_offline_without_cache_names_file_url_and_variable(cache, register):
    c = register(Corpus("t-offline", "offline.txt", "http://127.0.0.1:9/offline.txt", sha(b"x")))
    with pytest.raises(CorpusError) as info:
        corpora.path("t-offline")
    assert_offline_message(str(info.value), c)
    assert files_under(cache) == []


def test_download_false_without_cache_names_file_url_and_variable(http_server, cache, register):
    url = http_server.serve("/never.txt", b"x")
    c = register(Corpus("t-nodl", "never.txt", url, sha(b"x")))
    with pytest.raises(CorpusError) as info:
        corpora.path("t-nodl", download=False)
    assert_offline_message(str(info.value), c)
    assert http_server.hits["/never.txt"] == 0
    assert files_under(cache) == []


def test_load_text_offline_raises_corpus_error(cache, register):
    register(Corpus("t-offline-text", "o.txt", "http://127.0.0.1:9/o.txt", sha(b"x")))
    with pytest.raises(CorpusError, match="o.txt"):
        corpora.load_text("t-offline-text")


def test_read_only_cache_with_good_file_is_used_without_writing(
    http_server, tmp_path, monkeypatch, register, make_readonly
):
    data = payload(5000)
    ro = tmp_path / "ro"
    (ro / "sub").mkdir(parents=True)
    (ro / "sub" / "f.txt").write_bytes(data)
    make_readonly(ro)
    before = {p: p.stat().st_mtime_ns for p in ro.rglob("*")}
    monkeypatch.setenv("GPTCOURSE_DATA_DIR", str(ro))
    url = http_server.serve("/f.txt", data)
    register(Corpus("t-ro", "sub/f.txt", url, sha(data)))
    assert corpora.path("t-ro") == ro / "sub" / "f.txt"
    assert corpora.path("t-ro", download=False) == ro / "sub" / "f.txt"
    assert http_server.hits["/f.txt"] == 0
    assert {p: p.stat().st_mtime_ns for p in ro.rglob("*")} == before


def test_read_only_cache_without_the_file_raises(http_server, tmp_path, monkeypatch, register, make_readonly):
    ro = tmp_path / "ro"
    ro.mkdir()
    make_readonly(ro)
    monkeypatch.setenv("GPTCOURSE_DATA_DIR", str(ro))
    c = register(Corpus("t-ro-missing", "f.txt", http_server.serve("/f.txt", b"x"), sha(b"x")))
    with pytest.raises(CorpusError) as info:
        corpora.path("t-ro-missing")
    assert_offline_message(str(info.value), c)
    assert files_under(ro) == []


def test_download_goes_to_first_writable_dir(http_server, tmp_path, monkeypatch, register, make_readonly):
    ro, rw, later = tmp_path / "ro", tmp_path / "not-yet" / "rw", tmp_path / "later"
    ro.mkdir()
    later.mkdir()
    make_readonly(ro)
    monkeypatch.setenv("GPTCOURSE_DATA_DIR", os.pathsep.join(map(str, [ro, rw, later])))
    data = payload(70_000)
    register(Corpus("t-multi", "m.txt", http_server.serve("/m.txt", data), sha(data)))
    p = corpora.path("t-multi")
    assert p == rw / "m.txt" and p.read_bytes() == data  # a missing folder is created
    assert files_under(ro) == [] and files_under(later) == []


def test_file_in_a_later_dir_is_found(http_server, tmp_path, monkeypatch, register):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    data = b"already here"
    (second / "h.txt").write_bytes(data)
    monkeypatch.setenv("GPTCOURSE_DATA_DIR", f"{first}{os.pathsep}{second}")
    register(Corpus("t-later", "h.txt", http_server.serve("/h.txt", data), sha(data)))
    assert corpora.path("t-later") == second / "h.txt"
    assert http_server.hits["/h.txt"] == 0 and files_under(first) == []


def test_cached_file_with_wrong_sha_is_replaced(http_server, cache, register):
    data = payload(10_000)
    (cache / "w.txt").write_bytes(b"tampered" + data[8:])
    register(Corpus("t-stale", "w.txt", http_server.serve("/w.txt", data), sha(data)))
    p = corpora.path("t-stale")
    assert p == cache / "w.txt" and p.read_bytes() == data
    assert http_server.hits["/w.txt"] == 1
    assert files_under(cache) == ["w.txt"]


def test_cached_file_with_wrong_sha_is_not_trusted_offline(http_server, cache, register):
    (cache / "w.txt").write_bytes(b"not the right bytes")
    c = register(Corpus("t-stale-off", "w.txt", http_server.serve("/w.txt", b"right"), sha(b"right")))
    with pytest.raises(CorpusError) as info:
        corpora.path("t-stale-off", download=False)
    assert_offline_message(str(info.value), c)
    assert str(cache / "w.txt") in str(info.value)  # names the ignored copy


def test_good_copy_later_wins_over_stale_copy_first(http_server, tmp_path, monkeypatch, register):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    data = b"the real thing"
    (first / "s.txt").write_bytes(b"the fake thing")
    (second / "s.txt").write_bytes(data)
    monkeypatch.setenv("GPTCOURSE_DATA_DIR", f"{first}{os.pathsep}{second}")
    register(Corpus("t-stale-first", "s.txt", http_server.serve("/s.txt", data), sha(data)))
    assert corpora.path("t-stale-first") == second / "s.txt"
    assert http_server.hits["/s.txt"] == 0


def test_file_modified_after_verification_is_checked_again(http_server, cache, register):
    data = b"version one"
    register(Corpus("t-mod", "mod.txt", http_server.serve("/mod.txt", data), sha(data)))
    p = corpora.path("t-mod")
    p.write_bytes(b"version two, longer")  # changes size and mtime
    with pytest.raises(CorpusError):
        corpora.path("t-mod", download=False)


def _dead_pid() -> int:
    """The pid of a process that has exited (reused this quickly only in theory)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_parts_left_by_killed_downloads_are_removed_by_the_next(http_server, cache, register):
    data = payload(1000)
    url = http_server.serve("/k.txt", data)
    register(Corpus("t-killed", "k.txt", url, sha(data)))
    host = corpora._host()
    dead = cache / f".k.txt.{host}-{_dead_pid()}.abc123.part"  # its process is gone
    idle = cache / ".k.txt.q9z8.part"  # an older name, untouched for an hour
    live = cache / f".k.txt.{host}-{os.getpid()}.live01.part"  # a download still running
    other = cache / ".other.txt.x1.part"  # another file's: not ours to judge
    for f in (dead, idle, live, other):
        f.write_bytes(b"half a file")
    hour_ago = os.stat(idle).st_mtime - 3600
    os.utime(idle, (hour_ago, hour_ago))
    assert corpora.path("t-killed").read_bytes() == data
    assert files_under(cache) == sorted(["k.txt", live.name, other.name])
