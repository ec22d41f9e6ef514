"""Training on the real YARN: the same seed gives the same weights as the inline runner (bit
for bit, the inner and outer momentum included), no weights go through the shuffle (Hadoop's
own counter), and an epoch leaves nothing in the staging on HDFS."""

import numpy as np
from safetensors.numpy import load_file

from modelshard import api
from modelshard.catalog.catalog import Catalog
from modelshard.fs import get_fs
from modelshard.jobs.train.driver import train
from modelshard.jobs.train.reduce_task import INNER, MOMENTUM, Outer, train_plans
from modelshard.quickstart import SPEC, digits, write_records


def write_splits(fs, folder, x, y, splits=3):
    for i, part in enumerate(np.array_split(np.arange(len(y)), splits)):
        write_records(fs, f"{folder}/part-{i:05d}.jsonl", x[part], y[part], range(part[0], part[-1] + 1))


def test_yarn_trains_the_same_weights_as_inline_without_weights_in_the_shuffle(hdfs_root, tmp_path):
    fs, root = hdfs_root
    x, y = digits()
    x, y = x[:900], y[:900]
    write_splits(fs, f"{root}/data", x, y)
    local_fs, local = get_fs(str(tmp_path))
    write_splits(local_fs, f"{local}/data", x, y)

    catalog = fs.uri(f"{root}/catalog")
    outer = Outer(lr=0.7, momentum=0.9)  # not the default: with an outer momentum to keep too
    on_yarn = train("digits", fs.uri(f"{root}/data"), epochs=2, lr=0.1, catalog=catalog, init=SPEC, seed=7,
                    runner="hadoop", echo=print, outer=outer)
    inline = train("digits", f"{local}/data", epochs=2, lr=0.1, catalog=f"{local}/catalog", init=SPEC, seed=7,
                   outer=outer)

    a, b = (api.pull("digits", catalog=c, with_optimizer_state=True) for c in (catalog, f"{local}/catalog"))
    assert a.keys() == b.keys() and any(k.startswith(MOMENTUM) for k in a) and any(k.startswith(INNER) for k in a)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    # For inference, the model's tensors only: in memory, and in a folder pulled from HDFS.
    model = sorted(k for k in a if not k.startswith((INNER, MOMENTUM)))
    assert sorted(api.pull("digits", catalog=catalog)) == model
    api.pull("digits", tmp_path / "pulled", catalog=catalog)
    files = sorted((tmp_path / "pulled").glob("*.safetensors"))
    assert files and sorted(k for f in files for k in load_file(f)) == model
    assert [e.loss for e in on_yarn.epochs] == [e.loss for e in inline.epochs]
    for e in on_yarn.epochs:
        print(f"epoch {e.epoch}: shuffle {e.shuffle_bytes} bytes, peak RSS map {e.peak_rss_map_mib} MiB, "
              f"reduce {e.peak_rss_reduce_mib} MiB")
        assert 0 < e.shuffle_bytes < 64 * 1024  # reports of a few hundred bytes, not 200 KB of weights
        assert e.peak_rss_map_mib > 0 and e.peak_rss_reduce_mib > 0

    cat = Catalog(catalog)
    manifest = cat.manifest("digits", "3")
    assert len(manifest.shards) == len(train_plans(cat.manifest("digits", "2"), outer=outer))
    staging = cat.model_dir("digits") + "/.staging"
    assert not cat.fs.exists(staging) or list(cat.fs.walk_files(staging)) == []
    assert [f.path.rsplit("/", 1)[1] for f in cat.fs.ls(cat.version_dir("digits", "3") + "/shards")] \
        == ["model-00001-of-00001.safetensors"]
    api.verify("digits@3", catalog=catalog)
