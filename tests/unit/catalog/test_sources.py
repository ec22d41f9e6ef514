"""Push sources: every kind gives the same tensors, and bad ones are named precisely."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modelshard.catalog.sources import open_source
from modelshard.errors import FormatError, NotFoundError, UsageError
from tests.store_data import assert_same, sample_state


def as_torch(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out = {}
    for name, a in state.items():
        if a.dtype.name == "bfloat16":
            out[name] = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
        else:
            out[name] = torch.from_numpy(a.copy())
    return out


def read_all(tensors) -> dict[str, np.ndarray]:
    """The tensors' bytes, read through the sources' readers, as numpy arrays."""
    out = {}
    for t in tensors:
        raw = bytes(t.read(0, t.nbytes)) if t.nbytes else b""
        out[t.name] = np.frombuffer(raw, dtype=t.dtype.numpy).reshape(t.shape)
    return out


STATE = sample_state()


def test_numpy_dict():
    tensors = open_source(STATE)
    assert [t.name for t in tensors] == sorted(STATE)
    assert_same(read_all(tensors), STATE)


def test_torch_dict():
    assert_same(read_all(open_source(as_torch(STATE))), STATE)


def test_torch_non_contiguous_and_grad_tensors():
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4).t().requires_grad_()
    assert_same(read_all(open_source({"w": w})), {"w": w.detach().numpy().copy()})


def test_numpy_scalars_big_endian_and_strided_arrays():
    a = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    got = read_all(open_source({"a": a, "s": np.float32(1.5)}))
    assert_same(got, {"a": a.astype("<i4"), "s": np.array(1.5, np.float32)})


def test_safetensors_file(tmp_path):
    save_file(as_torch(STATE), tmp_path / "m.safetensors")
    assert_same(read_all(open_source(str(tmp_path / "m.safetensors"))), STATE)


def test_hf_folder_single(tmp_path):
    save_file(as_torch(STATE), tmp_path / "model.safetensors")
    assert_same(read_all(open_source(tmp_path)), STATE)


def hf_sharded(folder, state, files=2) -> dict:
    names = sorted(state)
    weight_map = {}
    for i in range(files):
        part = names[i::files]
        file = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        save_file(as_torch({n: state[n] for n in part}), folder / file)
        weight_map.update({n: file for n in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


def test_hf_folder_sharded(tmp_path):
    hf_sharded(tmp_path, STATE)
    assert_same(read_all(open_source(tmp_path)), STATE)


def test_npy_folder(tmp_path):
    # np.save writes bfloat16 as raw void ("|V2"): it cannot come back as bfloat16.
    state = {k: v for k, v in STATE.items() if k != "bf16"}
    for name, a in state.items():
        np.save(tmp_path / f"{name}.npy", a)
    assert_same(read_all(open_source(str(tmp_path))), state)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_torch_file(tmp_path, suffix):
    torch.save(as_torch(STATE), tmp_path / f"m{suffix}")
    assert_same(read_all(open_source(str(tmp_path / f"m{suffix}"))), STATE)


def test_legacy_torch_file(tmp_path):
    torch.save(as_torch(STATE), tmp_path / "m.pt", _use_new_zipfile_serialization=False)
    assert_same(read_all(open_source(str(tmp_path / "m.pt"))), STATE)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_torch_file_never_unpickles_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": Evil()}, f, protocol=2)
    with pytest.raises(FormatError, match="evil.pt: not a plain PyTorch state_dict"):
        open_source(str(tmp_path / "evil.pt"))
    assert not (tmp_path / "pwned").exists()


def test_torch_file_that_is_not_a_mapping(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(FormatError, match="list.pt: holds a list, not a state_dict"):
        open_source(str(tmp_path / "list.pt"))


def test_torch_file_with_a_non_tensor(tmp_path):
    torch.save({"w": torch.zeros(2), "step": 3}, tmp_path / "m.pt")
    with pytest.raises(FormatError, match="m.pt: tensor 'step': a int is not"):
        open_source(str(tmp_path / "m.pt"))


@pytest.mark.parametrize("state, match", [
    ({3: np.zeros(2)}, "tensor name 3 is a int, not a string"),
    ({"a/b": np.zeros(2)}, "tensor name 'a/b' is not allowed"),
    ({"..": np.zeros(2)}, "tensor name '..' is not allowed"),
    ({"a\0": np.zeros(2)}, "tensor name 'a\\\\x00' is not allowed"),
    ({"c": np.zeros(2, np.complex64)}, "tensor 'c': numpy dtype complex64 is not supported"),
    ({"u": np.zeros(2, np.uint32)}, "tensor 'u': numpy dtype uint32 is not supported"),
    ({"o": np.array([object()])}, "tensor 'o': numpy dtype object"),
    ({"c": torch.zeros(2, dtype=torch.complex64)}, "tensor 'c': torch dtype torch.complex64"),
    ({"m": torch.zeros(2, device="meta")}, "tensor 'm': a torch.strided tensor on meta"),
    ({"l": [1, 2]}, "tensor 'l': a list is not a numpy array or torch tensor"),
])
def test_bad_in_memory_tensors(state, match):
    with pytest.raises(FormatError, match=match):
        open_source(state)


def test_duplicate_tensor_across_hf_shards(tmp_path):
    index = hf_sharded(tmp_path, {"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)})
    save_file({"a": torch.zeros(2), "b": torch.ones(2)}, tmp_path / index["weight_map"]["b"])
    with pytest.raises(FormatError, match="duplicate tensor name 'a' in model-00001-of-00002"):
        open_source(tmp_path)


def test_index_naming_the_wrong_file(tmp_path):
    hf_sharded(tmp_path, {"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)})
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["zzz"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FormatError, match="names tensor 'zzz' in model-00001-of-00002"):
        open_source(tmp_path)


@pytest.mark.parametrize("file", ["../outside.safetensors", "/etc/passwd.safetensors"])
def test_index_cannot_point_outside_the_folder(tmp_path, file):
    (tmp_path / "model").mkdir()
    save_file({"a": torch.zeros(2)}, tmp_path / "outside.safetensors")
    (tmp_path / "model" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": file}}))
    with pytest.raises(FormatError, match="not a plain .safetensors file name"):
        open_source(tmp_path / "model")


def test_index_that_is_not_json(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{")
    with pytest.raises(FormatError, match="not a Hugging Face index"):
        open_source(tmp_path)


def test_npy_with_objects(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{}], dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match="o.npy: not a readable .npy array"):
        open_source(tmp_path)


def test_missing_source(tmp_path):
    with pytest.raises(NotFoundError, match="push source .*nope: no such file or folder"):
        open_source(str(tmp_path / "nope"))


def test_unknown_file_kind(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(UsageError, match="m.onnx: unknown kind of file"):
        open_source(str(tmp_path / "m.onnx"))


def test_folder_without_a_model(tmp_path):
    (tmp_path / "README").write_text("hi")
    with pytest.raises(UsageError, match="holds no model.safetensors"):
        open_source(tmp_path)


def test_not_a_source():
    with pytest.raises(UsageError, match="push source int"):
        open_source(3)
