"""Storage: exact round trips, refusal of torn, truncated, tampered and pickled files, atomic writes."""

import hashlib
import json
import os
import pathlib
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metaimprove import storage
from metaimprove.errors import UserError
from metaimprove.storage import atomic_write_csv, atomic_write_json, load_tensors, meta_path, read_json, save_tensors

META = {"task": {"family": "halfcheetah_vel", "params": {"v": 1.25}}, "seed": 3, "hidden": [32, 32], "ok": True}


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "theta": torch.randn(3, 7, generator=g),
        "norm_mean": torch.randn(3, 5, generator=g, dtype=torch.float64),
        "env_steps": torch.tensor([64, 128, 192]),
        "terminated": torch.tensor([[0, 1], [1, 0]], dtype=torch.uint8),
        "mask": torch.tensor([True, False]),
        "half": torch.randn(4, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 17),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def test_a_csv_write_that_fails_midway_leaves_the_old_file_and_no_temp(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "table.csv"
    atomic_write_csv(path, ["a", "b"], [{"a": 1, "b": 2.5}, {"a": 3, "b": ""}])
    assert path.read_bytes() == b"a,b\r\n1,2.5\r\n3,\r\n"  # csv.DictWriter's line ends, as before
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not in fieldnames"):
        atomic_write_csv(path, ["a", "b"], iter([{"a": 4, "b": 5}, {"a": 6, "c": 7}]))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["table.csv"]


def test_round_trip_is_exact_and_digest_pins_the_pair(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.safetensors"
    digest = save_tensors(path, _tensors(), META)
    assert digest == hashlib.sha256(meta_path(path).read_bytes()).hexdigest()
    tensors, meta = load_tensors(path, digest)
    _assert_same(tensors, _tensors())
    assert meta == META
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.safetensors"]


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(0, 4), st.integers(1, 5)),
              elements=st.floats(width=32, allow_nan=False)),
       st.dictionaries(st.text(min_size=1, max_size=8), st.integers(-(2**53), 2**53) | st.text(max_size=8),
                       max_size=4))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, values: np.ndarray, meta: dict) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.safetensors"
    digest = save_tensors(path, {"v": torch.from_numpy(values)}, meta)
    tensors, loaded = load_tensors(path, digest)
    assert torch.equal(tensors["v"], torch.from_numpy(values)) and loaded == meta


@pytest.mark.parametrize("damage", ["truncate", "torn_header", "flip_byte", "append", "empty"])
def test_damaged_tensor_file_is_refused(tmp_path: pathlib.Path, damage: str) -> None:
    path = tmp_path / "x.safetensors"
    digest = save_tensors(path, _tensors(), META)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 10]
    elif damage == "torn_header":
        data = data[:20]
    elif damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "append":
        data += b"\0"
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    for expected in (digest, None):
        with pytest.raises(UserError, match="corrupt") as info:
            load_tensors(path, expected)
        assert "\n" not in str(info.value)


def test_tampered_or_missing_metadata_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.safetensors"
    digest = save_tensors(path, _tensors(), META)
    header = json.loads(meta_path(path).read_text())
    header["meta"]["seed"] = 4
    meta_path(path).write_text(json.dumps(header))
    with pytest.raises(UserError, match="corrupt"):
        load_tensors(path, digest)
    meta_path(path).write_text('{"format": "metaimprove-tensors", "tensors_sha2')
    with pytest.raises(UserError, match="not valid JSON"):
        load_tensors(path)
    meta_path(path).unlink()
    with pytest.raises(UserError, match="missing"):
        load_tensors(path)


class _Payload:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_disguised_as_safetensors_is_refused_without_unpickling(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.safetensors"
    for payload in (pickle.dumps({"theta": _Payload(marker)}), _torch_save_bytes(tmp_path, _Payload(marker))):
        path.write_bytes(payload)
        # A forger can write a header that vouches for the pickle's checksum; the format check still refuses.
        header = {"format": "metaimprove-tensors", "format_version": 1,
                  "tensors_sha256": hashlib.sha256(payload).hexdigest(), "meta": {}}
        meta_path(path).write_text(json.dumps(header))
        with pytest.raises(UserError, match="not a valid safetensors file"):
            load_tensors(path)
        assert not marker.exists()


def _torch_save_bytes(tmp_path: pathlib.Path, obj: object) -> bytes:
    target = tmp_path / "torch.pt"
    torch.save({"theta": obj}, target)
    return target.read_bytes()


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: pathlib.Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.safetensors"
    digest = save_tensors(path, _tensors(), META)

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(path, {"other": torch.ones(2)}, {})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.safetensors"]
    _assert_same(load_tensors(path, digest)[0], _tensors())


def test_json_writer_is_atomic_canonical_and_verified(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "m.json"
    digest = atomic_write_json(path, {"b": [1, 2], "a": 0.5})
    assert path.read_text().index('"a"') < path.read_text().index('"b"')
    assert read_json(path, digest) == {"a": 0.5, "b": [1, 2]}
    path.write_text(path.read_text().replace("0.5", "0.25"))
    with pytest.raises(UserError, match="corrupt"):
        read_json(path, digest)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(storage.TEMP_SUFFIX)]


@pytest.mark.parametrize("meta", [{"x": float("nan")}, {"x": object()}, {"x": float("inf")}])
def test_metadata_must_be_plain_json(tmp_path: pathlib.Path, meta: dict) -> None:
    with pytest.raises(UserError, match="not plain JSON"):
        save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)}, meta)
    assert list(tmp_path.iterdir()) == []


def test_tensor_names_read_the_header_alone(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "t.safetensors"
    save_tensors(path, _tensors(), META)
    assert storage.tensor_names(path) == set(_tensors())
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(UserError, match="no readable safetensors header"):
        storage.tensor_names(tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="is missing"):
        storage.tensor_names(tmp_path / "none.safetensors")
