"""Loading onto a device (issue 13) on the CPU: the staged pipeline that CUDA devices take
(pool, chunks checked in the slot, copies into preallocated buffers, typed views) with the
CPU as the device, ``load_into`` of modules on the meta device, ``device_map``, ranks'
rows, and the host memory it adds. Tests marked ``gpu`` run the same on a CUDA device,
where torch sees one (tests/unit/test_device_load.py -m gpu)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
import torch

import modelshard
from modelshard.errors import IntegrityError, UsageError
from modelshard.loading.device import load_state_dict_to, rank_rows

CPU = torch.device("cpu")
rng = np.random.default_rng(3)
STATE = {
    "f32": rng.standard_normal((300, 1000)).astype(np.float32),  # 1.2 MB: two chunks
    "bf16": rng.standard_normal((5, 7)).astype(ml_dtypes.bfloat16),  # 70 bytes: what follows
    "f16": rng.standard_normal((3000, 500)).astype(np.float16),  # is not 4-byte aligned
    "i64": np.arange(-50, 50, dtype=np.int64).reshape(10, 10),
    "flag": np.array([True, False, True]),  # 3 bytes
    "after_flag": rng.standard_normal((9, 3)).astype(np.float32),  # at an odd offset
    "scalar": np.float32(2.5),
    "empty": np.zeros((0, 4), np.float32),
    "big": rng.standard_normal((1200, 1024)).astype(np.float32),  # 4.7 MiB: split in shards
}


def as_torch(a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("dev") / "cat")
    m = modelshard.push(STATE, "m", catalog=root, shard_size=2 << 20)
    assert m.tensors["big"].is_split and len(m.shards) > 2
    return root


@pytest.fixture
def staged(monkeypatch):
    """The slots and copies that CUDA devices take, with the CPU as the device: host
    destinations are otherwise read straight into, one stream per shard."""
    monkeypatch.setattr("modelshard.loading.device.STREAM_SHARE", float("inf"))


def same(got: dict, names=None) -> None:
    for n in names or STATE:
        assert torch.equal(got[n], as_torch(STATE[n])), n
        assert got[n].dtype == as_torch(STATE[n]).dtype


@pytest.mark.parametrize("pool", [1 << 20, 3 << 20, 256 << 20], ids=["1MiB", "3MiB", "256MiB"])
@pytest.mark.parametrize("workers", [1, 4])
def test_the_staged_pipeline_returns_every_dtype_and_shape(staged, cat, pool, workers):
    # 1 MiB: less than one tensor ("big" is 4.7 MiB), exactly one checksum chunk a slot.
    with modelshard.open("m", catalog=cat) as h:
        got = load_state_dict_to(h, [(n, None) for n in h.names()], device=CPU,
                                 pool_bytes=pool, workers=workers)
        s = h.stats()
    same(got)
    assert s.sources == {"file": len(h.manifest.shards)}
    assert s.bytes_served == sum(a.nbytes for a in STATE.values())
    # Every byte read was checked; beyond the tensors only the headers were read.
    assert s.verified_bytes == s.range_bytes == s.bytes_served + sum(
        sh.checksums.data_start for sh in h.manifest.shards)


@pytest.mark.parametrize("slot", [1 << 20, 3 << 20, 8 << 20])
def test_units_fit_a_slot_and_end_at_chunk_boundaries(cat, slot):
    from modelshard.loading.device import _units, _Want

    with modelshard.open("m", catalog=cat) as h:
        records = {s.path: s for s in h.manifest.shards}
        dest = torch.empty(0)
        wants = [_Want(p.shard, p.begin, p.end, dest, 0, torch.uint8)
                 for t in h.manifest.tensors.values() for p in t.pieces]
        units = _units(wants, records, slot)
    covered: dict[str, set[int]] = {}
    for u in units:
        ends = records[u.shard].checksums.ends
        assert 0 < u.hi - u.lo <= slot and u.lo in (0, *ends) and u.hi in ends
        covered.setdefault(u.shard, set()).update(range(u.lo, u.hi))
    for w in wants:  # every wanted byte is read, once
        assert set(range(w.begin, w.end)) <= covered[w.shard]
    assert sum(u.hi - u.lo for u in units) == sum(len(c) for c in covered.values())


def test_whole_tensors_are_views_of_one_buffer_per_shard(staged, cat):
    with modelshard.open("m", catalog=cat) as h:
        got = load_state_dict_to(h, [(n, None) for n in h.names()], device=CPU)
        where = {(p.shard, p.begin): (n, p.end) for n, t in h.manifest.tensors.items()
                 for p in t.pieces if not t.is_split}
    # A tensor and the one right after it in a shard share a buffer.
    adjacent = [(n, where[(shard, end)][0]) for (shard, _), (n, end) in where.items()
                if (shard, end) in where]
    shared = [got[a].untyped_storage().data_ptr() == got[b].untyped_storage().data_ptr()
              for a, b in adjacent if got[a].numel() and got[b].numel()
              and "after_flag" not in (a, b)]
    assert shared and all(shared), adjacent
    # Packed after a 3-byte tensor, at an offset its dtype cannot view: its own copy.
    assert got["after_flag"].data_ptr() % 4 == 0


def test_load_on_cpu_is_the_zero_copy_path_and_matches(cat):
    today = modelshard.load("m", catalog=cat, framework="torch")
    got = modelshard.load("m", catalog=cat, device="cpu")
    same(got)
    assert today.keys() == got.keys()


def test_dtype_casts_floating_tensors_only(cat):
    with modelshard.open("m", catalog=cat) as h:
        got = h.load_state_dict(["f16", "i64", "big"], dtype="float32", device="cpu")
        staged = load_state_dict_to(h, [("f16", None), ("i64", None), ("big", None)],
                                    device=CPU, cast=__import__(
                                        "modelshard.loading.convert", fromlist=["as_dtype"]
                                    ).as_dtype("float32"))
    for d in (got, staged):
        assert d["f16"].dtype == torch.float32 and d["i64"].dtype == torch.int64
        assert torch.equal(d["f16"], as_torch(STATE["f16"]).float())
        assert torch.equal(d["big"], as_torch(STATE["big"]))


def test_a_pool_smaller_than_one_chunk_is_refused_by_name(staged, cat):
    with modelshard.open("m", catalog=cat) as h:
        with pytest.raises(UsageError, match="smaller than one checksum chunk"):
            load_state_dict_to(h, [("big", None)], device=CPU, pool_bytes=64 << 10)
        with pytest.raises(UsageError, match="pool_bytes=-1"):
            load_state_dict_to(h, [("f32", None)], device=CPU, pool_bytes=-1)


@pytest.mark.parametrize("device", ["cuda:99", "meta", "disk", "tpu", 3.5])
def test_a_device_this_machine_lacks_is_one_clear_error(cat, device):
    with pytest.raises(UsageError, match="device="):
        modelshard.load("m", catalog=cat, device=device)


def test_framework_numpy_with_a_device_is_refused(cat):
    with pytest.raises(UsageError, match="framework='numpy'"):
        modelshard.load("m", catalog=cat, device="cpu", framework="numpy")


# -- ranks: rows and tensors of their own --------------------------------------------------
def test_rank_rows_cover_every_row_once():
    for rows, world in ((10, 3), (7, 8), (0, 2), (4096, 8)):
        parts = [rank_rows(rows, rank=r, world_size=world) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    with pytest.raises(UsageError, match="rank=4"):
        rank_rows(10, rank=4, world_size=4)


@pytest.mark.parametrize("staged", [False, True])
def test_each_rank_reads_only_its_rows(cat, staged):
    world = 3
    for rank in range(world):
        rows = {n: rank_rows(STATE[n].shape[0], rank=rank, world_size=world)
                for n in ("big", "f16")}
        with modelshard.open("m", catalog=cat) as h:
            if staged:
                got = load_state_dict_to(h, [(n, rows[n]) for n in rows], device=CPU)
            else:
                got = h.load_state_dict(list(rows), rows=rows, device="cpu")
            s = h.stats()
        for n, (a, b) in rows.items():
            assert torch.equal(got[n], as_torch(STATE[n][a:b])), (rank, n)
        wanted = sum(STATE[n][a:b].nbytes for n, (a, b) in rows.items())
        # its rows, widened to whole checksum chunks (at most 1 MiB at each end), headers
        assert wanted <= s.verified_bytes <= wanted + 4 * (1 << 20) * 2 + 4096 * 4
    with modelshard.open("m", catalog=cat) as h, pytest.raises(UsageError, match="rows"):
        h.load_state_dict(["big"], rows={"big": (0, 10**6)}, device="cpu")


# -- load_into -------------------------------------------------------------------------
class Net(torch.nn.Module):
    """Two layers and a tied head, as language models tie theirs."""

    def __init__(self, dtype=torch.float32) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(1200, 1024, dtype=dtype)
        self.proj = torch.nn.Linear(1000, 300, bias=False, dtype=dtype)
        self.head = torch.nn.Linear(1024, 1200, bias=False, dtype=dtype)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.zeros(10, 10, dtype=torch.int64))
        self.register_buffer("scratch", torch.ones(3), persistent=False)


def net_state() -> dict[str, np.ndarray]:
    return {"embed.weight": STATE["big"], "proj.weight": STATE["f32"], "steps": STATE["i64"],
            "unused": STATE["f16"]}


@pytest.fixture(scope="module")
def net_cat(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("net") / "cat")
    modelshard.push(net_state(), "net", catalog=root, shard_size=1 << 20)
    return root


def test_load_into_a_meta_module_materializes_it_on_the_device(net_cat):
    with torch.device("meta"):
        net = Net()
    r = modelshard.load_into(net, "net", catalog=net_cat, device="cpu", pool_bytes=2 << 20)
    assert torch.equal(net.embed.weight, as_torch(STATE["big"]))
    assert net.head.weight is net.embed.weight  # tied: one tensor, read once
    assert torch.equal(net.proj.weight, as_torch(STATE["f32"]))
    assert torch.equal(net.steps, as_torch(STATE["i64"]))
    assert isinstance(net.proj.weight, torch.nn.Parameter) and net.proj.weight.requires_grad
    assert net.scratch.is_meta  # non-persistent: not in a state dict, left as it was
    assert set(r.loaded) == {"embed.weight", "proj.weight", "steps"}
    assert r.unexpected_keys == ("unused",) and r.devices == {"cpu": 3}
    assert r.bytes == sum(net_state()[n].nbytes for n in ("embed.weight", "proj.weight", "steps"))


def test_load_into_fills_a_module_in_place(net_cat):
    net = Net()
    before = {n: p.data_ptr() for n, p in net.state_dict().items()}
    with modelshard.open("net", catalog=net_cat) as h:
        h.load_into(net)  # no device: where each tensor already is
        s = h.stats()
    assert {n: p.data_ptr() for n, p in net.state_dict().items()} == before
    assert torch.equal(net.head.weight, as_torch(STATE["big"]))
    assert s.reads and "unused" not in str(s.reads) and s.bytes_served < sum(
        a.nbytes for a in net_state().values())


def test_load_into_casts_floating_tensors_to_the_module_dtype(net_cat):
    with torch.device("meta"):
        net = Net(dtype=torch.bfloat16)
    modelshard.load_into(net, "net", catalog=net_cat, device="cpu")
    assert net.embed.weight.dtype == torch.bfloat16
    assert torch.equal(net.embed.weight, as_torch(STATE["big"]).to(torch.bfloat16))
    assert net.steps.dtype == torch.int64


def test_load_into_with_a_device_map(net_cat):
    with torch.device("meta"):
        net = Net()
    r = modelshard.load_into(net, "net", catalog=net_cat,
                             device_map={"embed": "cpu", "proj.weight": torch.device("cpu"),
                                         "": "cpu"})
    assert r.devices == {"cpu": 3} and torch.equal(net.proj.weight, as_torch(STATE["f32"]))
    with torch.device("meta"):
        net = Net()
    with pytest.raises(UsageError, match="device_map has no entry for 'steps'"):
        modelshard.load_into(net, "net", catalog=net_cat, device_map={"embed": "cpu",
                                                                      "proj": "cpu"})
    with pytest.raises(UsageError, match="device_map\\['x'\\]"):
        modelshard.load_into(net, "net", catalog=net_cat, device_map={"x": "disk"})
    assert net.embed.weight.is_meta  # refused before anything was read


def test_load_into_refuses_what_does_not_fit(net_cat):
    class Wider(Net):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(1000, 301, bias=False)
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(UsageError, match=r"'proj.weight' is \[300, 1000\] in the version"):
        modelshard.load_into(Wider(), "net", catalog=net_cat, strict=False)
    net = Net()
    net.extra = torch.nn.Linear(2, 2)
    with pytest.raises(UsageError, match="2 tensors the version lacks, e.g. extra.weight"):
        modelshard.load_into(net, "net", catalog=net_cat)
    r = modelshard.load_into(net, "net", catalog=net_cat, strict=False)
    assert r.missing_keys == ("extra.weight", "extra.bias")
    with torch.device("meta"):
        net = Net()
    with pytest.raises(UsageError, match="meta device; give device="):
        modelshard.load_into(net, "net", catalog=net_cat)
    net = Net()
    net.steps = torch.zeros(10, 10)
    with pytest.raises(UsageError, match="'steps' is I64 in the version but torch.float32"):
        modelshard.load_into(net, "net", catalog=net_cat)


def test_load_into_rows_for_a_tensor_parallel_rank(net_cat):
    class Rank(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(400, 1024, device="meta")

    net = Rank()
    r = modelshard.load_into(net, "net", catalog=net_cat, device="cpu", strict=True,
                             rows={"embed.weight": rank_rows(1200, rank=1, world_size=3)})
    assert torch.equal(net.embed.weight, as_torch(STATE["big"][400:800]))
    assert r.bytes == STATE["big"][400:800].nbytes


def test_a_whole_load_into_host_memory_reads_each_shard_once_straight_in(net_cat):
    with torch.device("meta"):
        net = Net()
    with modelshard.open("net", catalog=net_cat) as h:
        r = h.load_into(net, device="cpu", pool_bytes=1 << 20)  # a pool it does not need
        s = h.stats()
        wanted = {p.shard for n in r.loaded for p in h.manifest.tensors[n].pieces}
        size = sum(sh.size for sh in h.manifest.shards if sh.path in wanted)
    assert torch.equal(net.embed.weight, as_torch(STATE["big"]))
    assert torch.equal(net.proj.weight, as_torch(STATE["f32"]))
    assert torch.equal(net.steps, as_torch(STATE["i64"]))
    # One read per shard, front to back, every byte checked; "unused"'s shards not read.
    assert s.range_reads == len(wanted) and s.range_bytes == s.verified_bytes == size
    assert s.sources == {"file": len(wanted)}


def test_a_shard_mostly_not_wanted_is_read_by_its_chunks_not_whole(tmp_path):
    root = str(tmp_path / "cat")
    small = np.arange(4096, dtype=np.float32)
    modelshard.push({"big": STATE["big"], "small": small}, "two", catalog=root)
    net = torch.nn.Module()
    net.register_buffer("small", torch.zeros(4096))
    with modelshard.open("two", catalog=root) as h:
        assert len(h.manifest.shards) == 1
        h.load_into(net, strict=False)
        s = h.stats()
    assert torch.equal(net.small, torch.from_numpy(small))
    # 16 KiB of a 4.7 MiB shard: its chunk and the header, not the shard.
    assert s.verified_bytes < 64 << 10


@pytest.mark.parametrize("mode", ["stream", "staged"])
def test_a_flipped_byte_leaves_a_meta_module_untouched(tmp_path, monkeypatch, mode):
    if mode == "staged":
        monkeypatch.setattr("modelshard.loading.device.STREAM_SHARE", float("inf"))
    root = str(tmp_path / "cat")
    m = modelshard.push(net_state(), "net", catalog=root, shard_size=1 << 20)
    piece = m.tensors["proj.weight"].pieces[0]
    path = os.path.join(root, "models", "net", m.version, piece.shard)
    with open(path, "r+b") as f:
        f.seek(piece.end - 5)
        b = f.read(1)
        f.seek(piece.end - 5)
        f.write(bytes([b[0] ^ 1]))
    with torch.device("meta"):
        net = Net()
    with pytest.raises(IntegrityError, match=f"net@1: shard .*{piece.shard}.*CRC32C"):
        modelshard.load_into(net, "net", catalog=root, device="cpu", pool_bytes=1 << 20)
    assert all(t.is_meta for t in net.state_dict().values())
    with pytest.raises(IntegrityError, match="filled in place are partly overwritten"):
        modelshard.load_into(Net(), "net", catalog=root)
    with pytest.raises(IntegrityError, match=piece.shard), modelshard.open("net", catalog=root) as h:
        load_state_dict_to(h, [("proj.weight", None)], device=CPU)


def test_cli_load_onto_a_device(cat, capsys):
    from modelshard.cli import main

    assert main(["load", "m", "--catalog", cat, "--device", "cpu", "--json"]) == 0
    assert '"device": "cpu"' in capsys.readouterr().out
    assert main(["load", "m", "--catalog", cat, "--device", "meta"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "meta device holds no data" in err


# -- host memory -----------------------------------------------------------------------
RSS_SCRIPT = textwrap.dedent("""
    import sys, torch, modelshard
    def kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    cat, pool, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    def build():
        return torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(layers)])
    # Warm: imports and the manifest; not the pool, which the allocator might keep.
    import modelshard.loading.device
    modelshard.open("big", catalog=cat, record_stats=False).close()
    with torch.device("meta"):
        net = build()
    model = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    before = kib("VmRSS")
    modelshard.load_into(net, "big", catalog=cat, device="cpu", pool_bytes=pool, workers=2)
    print(model, kib("VmHWM") - before)
""")


def test_load_into_adds_the_pool_not_a_second_copy_of_the_model(tmp_path):
    layers = 20  # 20 x 16 MiB = 320 MiB of float32
    net = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(layers)])
    root = str(tmp_path / "cat")
    modelshard.push(dict(net.state_dict()), "big", catalog=root)
    del net
    pool = 64 << 20
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, root, str(pool), str(layers)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    model, added = map(int, out.stdout.split())
    assert model > 300 << 20
    # The model's own memory on the device (here the CPU), plus at most the pool + 10%.
    assert 0 < added - model <= pool * 1.1, (model, added)
    print(f"peak RSS added beyond the model: {(added - model) / 2**20:.1f} MiB, pool {pool >> 20} MiB")


# -- on a CUDA device ------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")


@pytest.mark.gpu
@gpu
def test_gpu_load_state_dict_matches_the_host(cat):
    got = modelshard.load("m", catalog=cat, device="cuda", pool_bytes=3 << 20)
    assert all(t.device.type == "cuda" for t in got.values())
    same({n: t.cpu() for n, t in got.items()})


@pytest.mark.gpu
@gpu
def test_gpu_load_into_a_meta_module_and_a_device_map(net_cat):
    with torch.device("meta"):
        net = Net()
    modelshard.load_into(net, "net", catalog=net_cat, device_map={"embed": "cuda:0",
                                                                  "": "cpu"})
    assert net.embed.weight.device.type == "cuda" and net.proj.weight.device.type == "cpu"
    assert torch.equal(net.embed.weight.cpu(), as_torch(STATE["big"]))
    assert torch.equal(net.proj.weight, as_torch(STATE["f32"]))


@pytest.mark.gpu
@gpu
def test_gpu_a_flipped_byte_is_found_on_the_host(tmp_path):
    root = str(tmp_path / "cat")
    m = modelshard.push(net_state(), "net", catalog=root, shard_size=1 << 20)
    piece = m.tensors["embed.weight"].pieces[-1]
    path = os.path.join(root, "models", "net", m.version, piece.shard)
    with open(path, "r+b") as f:
        f.seek(piece.begin + 3)
        b = f.read(1)
        f.seek(piece.begin + 3)
        f.write(bytes([b[0] ^ 0x80]))
    with pytest.raises(IntegrityError, match=piece.shard):
        modelshard.load("net", catalog=root, device="cuda")
