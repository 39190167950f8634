"""Training pairs: manifests and WebDataset shards, split across ranks and workers, resumable."""

import io
import itertools
import tarfile
import json

import pytest
import torch
from helpers import make_pairs, write_manifest, write_shards

from ttd.data.pairs import PairLoader, decode_pair, list_shards
from ttd.errors import TTDError


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_manifest_ranks_split_each_global_batch(tmp_path):
    manifest = write_manifest(tmp_path, make_pairs(10))
    one = take(PairLoader(manifest, 4, image_size=32, seed=3), 5)  # 20 samples: two epochs
    halves = [take(PairLoader(manifest, 4, image_size=32, seed=3, rank=r, world=2), 5) for r in (0, 1)]
    for whole, a, b in zip(one, *halves):
        assert whole.keys == a.keys + b.keys
        assert torch.equal(whole.images, torch.cat([a.images, b.images]))
    first_epoch = [k for batch in one for k in batch.keys][:10]
    assert sorted(first_epoch, key=int) == [str(i) for i in range(1, 11)]  # every line once per epoch
    assert one[0].images.shape == (4, 3, 32, 32)
    other_seed = take(PairLoader(manifest, 4, image_size=32, seed=4), 1)[0]
    assert other_seed.keys != one[0].keys


def test_manifest_resumes_from_state_and_counts_unreadable(tmp_path):
    manifest = write_manifest(tmp_path, make_pairs(10), corrupt=(2, 7))
    loader = PairLoader(manifest, 4, image_size=32, workers=2)
    batches = take(loader, 3)
    assert sum(len(b) for b in batches) == 10 and loader.skipped == 2  # 12 drawn, 2 unreadable
    state = loader.state_dict()
    assert state == {"kind": "manifest", "step": 3, "skipped": 2}
    resumed = PairLoader(manifest, 4, image_size=32, state=state)
    expected = take(PairLoader(manifest, 4, image_size=32), 5)[3:]
    assert [b.keys for b in take(resumed, 2)] == [b.keys for b in expected]


def test_shards_in_img2dataset_layout(tmp_path):
    pairs = make_pairs(12)
    write_shards(tmp_path / "txt", pairs, per_shard=5)
    write_shards(tmp_path / "json", pairs, per_shard=5, caption_as="json")
    assert [p.rsplit("/", 1)[1] for p in list_shards(str(tmp_path / "txt"))] == ["00000.tar", "00001.tar", "00002.tar"]
    assert list_shards(str(tmp_path / "txt" / "{00000..00001}.tar")) == list_shards(str(tmp_path / "txt" / "0000[01].tar"))
    for kind in ("txt", "json"):
        batch = take(PairLoader(str(tmp_path / kind), 12, image_size=32, shuffle=False), 1)[0]
        assert batch.captions == [c for _, c in pairs]
        assert batch.keys == [f"{i:09d}" for i in range(12)]


def test_shards_split_across_ranks_and_workers_cover_an_epoch(tmp_path):
    root = write_shards(tmp_path, make_pairs(24), per_shard=3)  # 8 shards
    keys = []
    for rank in (0, 1):
        loader = PairLoader(str(root), 4, image_size=32, rank=rank, world=2, workers=2, epochs=1, shuffle_buffer=2)
        keys += [k for batch in loader for k in batch.keys]
    assert sorted(keys) == [f"{i:09d}" for i in range(24)]


def test_corrupt_shard_sample_is_skipped_and_counted(tmp_path):
    root = write_shards(tmp_path, make_pairs(9), per_shard=3, corrupt=(4,))
    loader = PairLoader(str(root), 4, image_size=32, epochs=1)
    keys = [k for batch in loader for k in batch.keys]
    assert len(keys) == 8 and "000000004" not in keys
    assert loader.skipped == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00000.tar").write_bytes((root / "00000.tar").read_bytes()[:700])  # truncated mid-member
    (broken / "00001.tar").write_bytes((root / "00001.tar").read_bytes())
    loader = PairLoader(str(broken), 1, image_size=32, epochs=1, shuffle=False)
    assert [k for batch in loader for k in batch.keys] == ["000000003", "000000005"]  # 4 is corrupt
    assert loader.skipped >= 2


def test_shard_stream_resumes_exactly(tmp_path):
    root = write_shards(tmp_path, make_pairs(20), per_shard=4, corrupt=(6,))
    kw = dict(image_size=32, workers=2, shuffle_buffer=3, seed=1)
    straight = take(PairLoader(str(root), 3, **kw), 9)
    first = PairLoader(str(root), 3, **kw)
    head = take(first, 4)  # stops after a batch from worker 1: the next is worker 0's
    resumed = take(PairLoader(str(root), 3, state=first.state_dict(), **kw), 5)
    assert [b.keys for b in head + resumed] == [b.keys for b in straight]
    head3 = PairLoader(str(root), 3, **kw)
    take(head3, 3)  # the next batch is worker 1's: the resumed loader must start with it
    assert [b.keys for b in take(PairLoader(str(root), 3, state=head3.state_dict(), **kw), 2)] == [
        b.keys for b in straight[3:5]
    ]
    with pytest.raises(TTDError, match="resume with the same numbers"):
        PairLoader(str(root), 3, state=first.state_dict(), image_size=32, workers=1)


def test_keep_list_filters_shard_samples(tmp_path):
    root = write_shards(tmp_path / "s", make_pairs(10), per_shard=5)
    keep = tmp_path / "keep.txt"
    keep.write_text("000000001\n000000007\n000000008\n")
    loader = PairLoader(str(root), 10, image_size=32, epochs=1, keep=keep)
    assert sorted(k for b in loader for k in b.keys) == ["000000001", "000000007", "000000008"]


def test_decode_pair_errors():
    sample = {"__key__": "k", "__url__": "s.tar", "jpg": make_pairs(1)[0][0]}
    with pytest.raises(TTDError, match="s.tar:k: no caption"):
        decode_pair(sample, 32)
    with pytest.raises(TTDError, match="s.tar:k: no image member"):
        decode_pair({"__key__": "k", "__url__": "s.tar", "txt": b"a cat"}, 32)
    with pytest.raises(TTDError, match="cannot read image s.tar:k.jpg"):
        decode_pair({**sample, "jpg": b"garbage", "json": json.dumps({"caption": "a cat"}).encode()}, 32)


def test_loader_errors(tmp_path):
    manifest = write_manifest(tmp_path / "m", make_pairs(4))
    root = write_shards(tmp_path / "s", make_pairs(4), per_shard=4)
    with pytest.raises(TTDError, match="batch size 5 cannot be split evenly across 2 processes"):
        PairLoader(manifest, 5, world=2)
    with pytest.raises(TTDError, match="no shards match"):
        PairLoader(str(tmp_path / "none" / "*.tar"), 2)
    with pytest.raises(TTDError, match="shard not found"):
        PairLoader(str(tmp_path / "s" / "00009.tar"), 2)
    with pytest.raises(TTDError, match="1 shard\\(s\\) cannot feed 2 processes"):
        PairLoader(str(root), 2, world=2)
    with pytest.raises(TTDError, match="manifest not found"):
        PairLoader(str(tmp_path / "missing.jsonl"), 2)
    with pytest.raises(TTDError, match="a keep-list filters shards"):
        PairLoader(manifest, 2, keep=tmp_path / "k.txt")


def test_resumed_shard_stream_counts_a_broken_member_once(tmp_path):
    root = write_shards(tmp_path, make_pairs(8), per_shard=8)
    with tarfile.open(root / "00000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(root / "00000.tar", "w") as tar:  # sample 2 holds two images: a bad member
        for member, data in members:
            for _ in range(2 if member.name == "000000002.jpg" else 1):
                tar.addfile(member, io.BytesIO(data))
    kw = dict(image_size=32, shuffle=False)
    loader = PairLoader(str(root), 2, **kw)
    straight = iter(loader)
    head = [next(straight) for _ in range(2)]
    resumed = PairLoader(str(root), 2, state=loader.state_dict(), **kw)
    assert [b.keys for b in take(resumed, 3)] == [next(straight).keys for _ in range(3)]
    assert resumed.skipped == loader.skipped == head[1].skipped == 1  # counted before the checkpoint, once
