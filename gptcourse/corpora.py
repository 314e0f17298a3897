"""Public corpora, downloaded once and verified.

``path(name)`` returns a local file whose sha256 matches the registry. It looks in the cache
directories first -- ``GPTCOURSE_DATA_DIR`` (several folders may be given, separated by
``os.pathsep``; read-only folders are fine) or else ``~/.cache/gptcourse`` -- and otherwise
downloads the file from its public URL into the first writable cache directory.

``stories`` is different: it is generated in memory by :mod:`gptcourse.stories` (no file, no
download), so ``load_text("stories")`` works but ``path("stories")`` raises ``CorpusError``.

Downloads are atomic: the bytes go to a temporary file in the target folder, the sha256 is
checked, and only then is the file renamed into place. An interrupted or corrupted download
therefore never leaves a file that later calls would trust. The temporary file is named
``.FILE.HOST-PID.XXXX.part``; the next download of ``FILE`` deletes those a killed process left
(one of this host whose process is gone, or any not written to for ten minutes).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Corpus",
    "CorpusError",
    "REGISTRY",
    "GENERATED",
    "cache_dirs",
    "description",
    "load_text",
    "names",
    "path",
    "register",
]

ENV_VAR = "GPTCOURSE_DATA_DIR"
DEFAULT_CACHE = Path.home() / ".cache" / "gptcourse"


class CorpusError(RuntimeError):
    """A corpus could not be found, downloaded or verified."""


@dataclass(frozen=True)
class Corpus:
    """One file of a public corpus.

    ``filename`` is the path inside a cache directory. ``member`` names the file inside a
    zip archive when ``url`` points at an archive; the sha256 is always that of the file
    itself, not of the archive.
    """

    name: str
    filename: str
    url: str
    sha256: str
    description: str = ""
    member: str | None = None


REGISTRY: dict[str, Corpus] = {}


def register(corpus: Corpus) -> Corpus:
    """Add (or replace) a corpus in the registry and return it."""
    if len(corpus.sha256) != 64 or any(c not in "0123456789abcdef" for c in corpus.sha256):
        raise ValueError(f"sha256 of {corpus.name!r} must be 64 lowercase hex digits")
    REGISTRY[corpus.name] = corpus
    return corpus


for _c in [
    Corpus(
        "tinyshakespeare",
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "Tiny Shakespeare (1.1 MB of plays), from Karpathy's char-rnn",
    ),
    Corpus(
        "the-verdict",
        "the-verdict.txt",
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
        "The Verdict, a short story by Edith Wharton (public domain)",
    ),
    Corpus(
        "sms-spam",
        "SMSSpamCollection",
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
        "UCI SMS Spam Collection (CC BY 4.0): 5,574 lines 'label<TAB>text'",
        member="SMSSpamCollection",
    ),
    Corpus(
        "instruction-data",
        "instruction-data.json",
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
        "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
        "1,100 Alpaca-style records (instruction, input, output)",
    ),
    Corpus(
        "gpt2-encoder",
        "gpt2/encoder.json",
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "GPT-2 vocabulary (token string -> id)",
    ),
    Corpus(
        "gpt2-vocab",
        "gpt2/vocab.bpe",
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        "GPT-2 BPE merges, in rank order",
    ),
]:
    register(_c)


# Corpora made by code in this package rather than downloaded: name -> description.
GENERATED: dict[str, str] = {
    "stories": "Tiny children's stories from a seeded grammar (gptcourse.stories), exact entropy known",
}


def names() -> list[str]:
    """Names of all corpora: the registered files and the generated ones."""
    return sorted(set(REGISTRY) | set(GENERATED))


def description(name: str) -> str:
    """One line about the corpus ``name``."""
    if name in GENERATED:
        return GENERATED[name]
    return _lookup(name).description


def _generated_error(name: str) -> CorpusError:
    return CorpusError(
        f"the corpus {name!r} is generated in memory, not stored in a file: use "
        f"corpora.load_text({name!r}) or the module gptcourse.{name} (e.g. "
        f"gptcourse.{name}.text(n, seed)) instead of corpora.path({name!r})"
    )


def cache_dirs() -> list[Path]:
    """Cache directories, in search order (``GPTCOURSE_DATA_DIR`` or ``~/.cache/gptcourse``)."""
    raw = os.environ.get(ENV_VAR, "")
    dirs = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    return dirs or [DEFAULT_CACHE]


def _lookup(name: str) -> Corpus:
    if not isinstance(name, str):
        raise TypeError(f"corpus name must be a str, got {type(name).__name__}")
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown corpus {name!r}; known corpora: {', '.join(names())}"
        ) from None


def sha256_file(file: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_verified: dict[tuple[str, int, int], str] = {}


def _is_verified(file: Path, sha256: str) -> bool:
    st = file.stat()
    key = (str(file), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = sha256_file(file)
    return _verified[key] == sha256


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)


def path(name: str, *, download: bool = True) -> Path:
    """Local path of the corpus file ``name``, downloading and verifying it if needed."""
    if isinstance(name, str) and name in GENERATED and name not in REGISTRY:
        raise _generated_error(name)
    corpus = _lookup(name)
    dirs = cache_dirs()
    stale: list[Path] = []
    for folder in dirs:
        candidate = folder / corpus.filename
        if candidate.is_file():
            if _is_verified(candidate, corpus.sha256):
                return candidate
            stale.append(candidate)
    target_dir = next((d for d in dirs if _writable(d)), None)
    where = ", ".join(str(d) for d in dirs)
    if not download or target_dir is None:
        reason = (
            "downloads are disabled"
            if not download
            else f"none of the cache directories ({where}) is writable"
        )
        raise CorpusError(
            f"{corpus.filename} ({name}) is not in the cache and {reason}. Download it from "
            f"{corpus.url} into one of: {where}, or set {ENV_VAR} to a folder that holds it."
            + _stale_note(stale)
        )
    return _download(corpus, target_dir / corpus.filename, stale)


def _stale_note(stale: list[Path]) -> str:
    if not stale:
        return ""
    return " These cached copies have the wrong sha256 and were ignored: " + ", ".join(
        str(s) for s in stale
    )


def _fetch(url: str, out, desc: str, timeout: float = 60.0) -> None:
    """Stream ``url`` into the binary file object ``out``; raise if it ends early."""
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "gptcourse"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False) as bar:
            while True:
                block = response.read(1 << 16)
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received != total:
        raise CorpusError(
            f"download of {url} stopped after {received:,} of {total:,} bytes; try again"
        )


#: A live download writes at least once a minute (``_fetch``'s read timeout is 60 s), so a
#: ``.part`` file untouched for this long belongs to a process that died.
STALE_PART_SECONDS = 600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (assumed yes where that cannot be asked)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _remove_stale_parts(target: Path) -> None:
    """Delete the ``.part`` files that killed downloads of ``target`` left behind."""
    host, now = _host(), time.time()
    for part in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
        owner = part.name[len(target.name) + 2:].split(".", 1)[0]  # "HOST-PID"
        name, _, pid = owner.rpartition("-")
        try:
            idle = now - part.stat().st_mtime
        except FileNotFoundError:  # removed meanwhile
            continue
        dead = name == host and pid.isdigit() and not _alive(int(pid))
        if dead or idle > STALE_PART_SECONDS:
            part.unlink(missing_ok=True)


def _download(corpus: Corpus, target: Path, stale: list[Path]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_host()}-{os.getpid()}.",
                                    suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as out:
            _fetch(corpus.url, out, corpus.filename)
            if corpus.member is not None:  # the archive came to disk; keep only its member
                out.seek(0)
                try:
                    with zipfile.ZipFile(out) as zf:
                        data = zf.read(corpus.member)
                except (zipfile.BadZipFile, KeyError) as err:
                    raise CorpusError(
                        f"{corpus.url} is not a zip archive holding {corpus.member}: {err}"
                    ) from err
                out.seek(0)
                out.truncate()
                out.write(data)
        actual = sha256_file(tmp)
        if actual != corpus.sha256:
            raise CorpusError(
                f"{corpus.filename} downloaded from {corpus.url} has sha256 {actual}, expected "
                f"{corpus.sha256}; the file was discarded. The source may have changed or the "
                "download was corrupted: try again, or place a verified copy in "
                f"{target.parent} (or point {ENV_VAR} at one)."
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        where = ", ".join(str(d) for d in cache_dirs())
        raise CorpusError(
            f"could not download {corpus.filename} ({corpus.name}) from {corpus.url}: {err}. "
            f"If this machine is offline, download the file elsewhere and put it in one of: "
            f"{where}, or set {ENV_VAR} to a folder that holds it." + _stale_note(stale)
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def load_text(name: str, encoding: str = "utf-8") -> str:
    """The corpus ``name`` as a string (downloaded and verified on first use).

    ``"stories"`` is generated: ``gptcourse.stories.text()`` (default size, seed 0).
    """
    if name == "stories" and name not in REGISTRY:
        from . import stories

        return stories.text()
    return path(name).read_bytes().decode(encoding)  # exact text: no newline translation
