"""Fault injection on real HDF5 feature-cache files: flipped bytes, truncation, emptied files,
broken partials and metadata. Each fault gives one warning line naming the file, the entry is
rebuilt, the features equal an undisturbed extraction and the next read is a clean hit."""
import fcntl
import json
import logging

import h5py
import numpy as np
import pytest

from conftest import tiny_config
from brainharness.backbone import Backbone
from brainharness.cli import main
from brainharness.data import Stimuli
from brainharness.features import FORMAT, FeatureCache, cache_key
from brainharness.runner import Runner

IDS = np.arange(100, 118)
ZERO_IDS = {104, 105, 106, 107}  # their features are exact zeros: block (chunk) 1 of 4 rows


class Relu(Backbone):
    """96 rectified pixel values per image (many exact zeros); counts images encoded, can stop early."""

    registry_name = "relu-test"

    def configure(self, p):
        self.encoded, self.fail_after = 0, None

    def layers(self):
        return ["relu"]

    def encode(self, batch, layer):
        if self.fail_after is not None and self.encoded >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.encoded += len(batch.ids)
        x = np.maximum(batch.images.reshape(len(batch.ids), -1)[:, :96].astype(np.float32) / 255 - 0.4, 0)
        return np.where(np.isin(batch.ids, list(ZERO_IDS))[:, None], np.float32(0), x)


def stimuli():
    imgs = np.random.default_rng(0).integers(0, 255, (len(IDS), 8, 8, 3), dtype=np.uint8)
    return Stimuli(IDS, lambda rows: imgs[rows], fingerprint="relu-v1")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return FeatureCache(tmp_path_factory.mktemp("fresh")).features(Relu(batch_size=4), stimuli(), IDS)[0]


def flip(path, chunk: int, skip: int = 100, n: int = 300, dataset: str = "features") -> None:
    """XOR ``n`` bytes of the stored data of ``chunk``, starting ``skip`` bytes into it."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    assert info.size >= skip + n
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + skip)
        data = bytearray(fh.read(n))
        fh.seek(info.byte_offset + skip)
        fh.write(bytes(b ^ 0xFF for b in data))


def truncate(path, size=None) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2 if size is None else size)


def corrupt_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "corrupt cache entry" in r.getMessage()]


def assert_recovered(caplog, cache, bb, path, feats, fresh, what: str) -> None:
    (line,) = corrupt_lines(caplog)  # exactly one line, naming the file
    assert line.startswith(f"corrupt cache entry {path} (") and line.endswith("), re-extracting")
    assert what in line and "\n" not in line
    np.testing.assert_array_equal(feats, fresh)
    assert path.with_name(path.name + ".corrupt").exists()
    caplog.clear()
    encoded = bb.encoded
    again, info = cache.features(bb, stimuli(), IDS)
    assert info["cache"] == "hit" and bb.encoded == encoded and not corrupt_lines(caplog)
    np.testing.assert_array_equal(again, fresh)


def cached(tmp_path):
    cache, bb = FeatureCache(tmp_path), Relu(batch_size=4)
    cache.features(bb, stimuli(), IDS)
    (path,) = cache.root.glob("*.h5")
    return cache, bb, path


@pytest.mark.parametrize("chunk", [2, 1], ids=["values", "zeros"])
def test_flipped_bytes_in_a_block_are_detected_and_rebuilt(tmp_path, caplog, fresh, chunk):
    cache, bb, path = cached(tmp_path)
    if chunk == 1:
        with h5py.File(path) as f:
            assert not f["features"][4:8].any()  # zeros flipped to 0xFF: what fletcher32 misses
    flip(path, chunk)
    feats, info = cache.features(bb, stimuli(), IDS)
    assert info["cache"] == "miss" and bb.encoded == 2 * len(IDS)
    assert_recovered(caplog, cache, bb, path, feats, fresh, f"checksum mismatch in rows {4 * chunk}-{4 * chunk + 3}")


@pytest.mark.parametrize("fault, what", [(lambda p: truncate(p), "unreadable"), (lambda p: truncate(p, 1000), "unreadable"),
                                         (lambda p: truncate(p, 0), "empty file")], ids=["half", "1000 bytes", "empty"])
def test_truncated_or_emptied_file_is_rebuilt(tmp_path, caplog, fresh, fault, what):
    cache, bb, path = cached(tmp_path)
    fault(path)
    feats, _ = cache.features(bb, stimuli(), IDS)
    assert_recovered(caplog, cache, bb, path, feats, fresh, what)


def set_n_done(f):
    f.attrs["n_done"] = 12


def edit_file(path, edit) -> None:
    with h5py.File(path, "a") as f:
        edit(f)


def float64_features(f):
    data = f["features"][:]
    del f["features"]
    f.create_dataset("features", data=data.astype(np.float64))


@pytest.mark.parametrize("edit, what", [
    (lambda f: f.__delitem__("block_sha256"), "missing dataset block_sha256"),
    (lambda f: f.__delitem__("features"), "missing dataset features"),
    (float64_features, "features are float64"),
    (lambda f: f["ids"].__setitem__(0, 7), "stimulus ids differ"),
    (set_n_done, "row counter n_done=12"),
    (lambda f: f.attrs.__setitem__("key_parts", "{}"), "key_parts attribute"),
], ids=["digests", "features", "dtype", "ids", "counter", "key"])
def test_inconsistent_metadata_is_rebuilt(tmp_path, caplog, fresh, edit, what):
    cache, bb, path = cached(tmp_path)
    edit_file(path, edit)
    feats, _ = cache.features(bb, stimuli(), IDS)
    assert_recovered(caplog, cache, bb, path, feats, fresh, what)


def interrupted(tmp_path):
    """A cache holding a .partial with 8 of 18 rows (two blocks of 4)."""
    cache, bb = FeatureCache(tmp_path), Relu(batch_size=4)
    bb.fail_after = 8
    with pytest.raises(KeyboardInterrupt):
        cache.features(bb, stimuli(), IDS)
    (partial,) = cache.root.glob("*.partial")
    bb.fail_after = None
    return cache, bb, partial


def test_intact_partial_resumes_after_verifying_its_blocks(tmp_path, caplog, fresh):
    cache, bb, partial = interrupted(tmp_path)
    feats, info = cache.features(bb, stimuli(), IDS)
    assert info["cache"] == "resumed at row 8" and bb.encoded == 18 and not corrupt_lines(caplog)
    np.testing.assert_array_equal(feats, fresh)
    with h5py.File(partial.with_suffix("")) as f:  # one digest per block written: 4+4 rows, then the rest
        assert f["block_end"][:].tolist() == [4, 8, 12, 16, 18] and f.attrs["n_done"] == 18


@pytest.mark.parametrize("fault, what", [
    (lambda p: flip(p, 1, skip=0, n=200), "checksum mismatch in rows 4-7"),
    (lambda p: truncate(p), "unreadable"),
    (lambda p: truncate(p, 0), "empty file"),
    (lambda p: edit_file(p, set_n_done), "row counter n_done=12"),
], ids=["flipped block", "truncated", "empty", "counter ahead"])
def test_broken_partial_is_set_aside_and_extraction_restarts(tmp_path, caplog, fresh, fault, what):
    cache, bb, partial = interrupted(tmp_path)
    fault(partial)
    feats, info = cache.features(bb, stimuli(), IDS)
    assert info["cache"] == "miss" and bb.encoded == 8 + 18  # nothing of the broken partial was kept
    assert_recovered(caplog, cache, bb, partial, feats, fresh, what)


def test_cli_ls_checks_metadata_and_verify_every_checksum(tmp_path, capsys):
    cache, bb, path = cached(tmp_path)
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0
    assert "\tok\trelu-test\tlayer=relu\tshape=(18, 96)" in capsys.readouterr().out
    flip(path, 3)
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0  # ls does not read the data
    assert "\tok\t" in capsys.readouterr().out
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{path.name}\t" in out and "corrupt (checksum mismatch in rows 12-15)" in out and "1 corrupt" in out
    truncate(path)
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    assert "corrupt (unreadable" in capsys.readouterr().out
    cache.features(bb, stimuli(), IDS)  # rebuilt; the broken file is kept aside, not counted as corrupt
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{path.name}.corrupt\t" in out and "2 feature file(s)" in out and "1 set aside" in out


def test_ls_tells_a_partial_being_written_from_a_resumable_one(tmp_path):
    cache, _, partial = interrupted(tmp_path)
    assert [(e["state"], e.get("rows_done")) for e in cache.entries()] == [("partial", 8)]
    with open(cache.root / f"{partial.name.split('.')[0]}.lock", "a+") as lock:  # a worker extracting now
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert [(e["state"], e.get("what")) for e in cache.entries()] == [("partial", "being written")]


def test_entries_of_an_older_format_are_stale_and_never_read(tmp_path, caplog):
    cache, bb, path = cached(tmp_path)
    with h5py.File(path) as f:
        parts = {**json.loads(f.attrs["key_parts"]), "format": FORMAT - 1}
    old = cache.root / f"{cache_key(parts)}.h5"
    with h5py.File(old, "w") as f:  # the format-1 layout: features and a counter, no digests
        f.attrs["key_parts"], f.attrs["n_done"] = json.dumps(parts, sort_keys=True), 18
        f.create_dataset("features", data=np.ones((18, 96), np.float32))
    states = {e["file"]: e["state"] for e in cache.entries(verify=True)}
    assert states == {path.name: "ok", old.name: "stale"}
    _, info = cache.features(bb, stimuli(), IDS)
    assert info["cache"] == "hit" and not corrupt_lines(caplog)


def test_fletcher32_misses_zero_words_flipped_to_ones(tmp_path):
    """Why the cache hashes blocks itself: HDF5's fletcher32 filter sums 16-bit words modulo
    65535, so 0x0000 → 0xFFFF is invisible; the flipped zeros read back as NaN, silently."""
    path, data = tmp_path / "f32.h5", np.ones((8, 96), np.float32)
    data[4:6] = 0  # zeros (ReLU outputs) at the start of the second chunk
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=data, chunks=(4, 96), fletcher32=True)
    flip(path, 1)
    with h5py.File(path) as f:
        assert np.isnan(f["features"][:]).sum() > 50  # no error raised


def test_corrupt_cache_in_a_run_is_rebuilt_with_identical_scores(tmp_path, caplog):
    cfg = tiny_config(tmp_path, cache_dir=str(tmp_path / "cache"), backbones=[{"name": "pixels", "size": 8}],
                      tasks=[{"name": "encoding"}])
    first = {r["key"]["task"]: r["scores"] for r in Runner(cfg, progress=False).run()}
    (path,) = (tmp_path / "cache" / "features").glob("*.h5")
    flip(path, 0)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        second = {r["key"]["task"]: r["scores"] for r in Runner(dict(cfg, policy="overwrite"), progress=False).run()}
    (line,) = corrupt_lines(caplog)
    assert str(path) in line and "checksum mismatch" in line
    assert second == first and first["encoding"]
