"""The trainer: TTD lowers its loss, resumes exactly, matches across processes, writes adapters."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from helpers import make_pairs, tiny_model, write_manifest, write_shards

from ttd.checkpoints import latest_checkpoint
from ttd.cli import main
from ttd.config import TrainConfig, load_config, resolve_config
from ttd.data.pairs import PairLoader
from ttd.errors import TTDError
from ttd.method.objectives import ContrastiveObjective, TTDObjective
from ttd.method.tags import TagSelection, batch_tags, select_tags
from ttd.models.lora import load_adapter
from ttd.train import Trainer, train

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def config(data, out, **kw) -> TrainConfig:
    base = dict(steps=8, batch_size=4, image_size=32, workers=0, warmup_steps=2, lr=3e-3, log_every=2, save_every=100, tensorboard=False)
    return load_config(data=str(data), out=str(out), **{**base, **kw})


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_short_run_lowers_the_loss(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data", make_pairs(8))
    batch = next(iter(PairLoader(manifest, 8, image_size=32, shuffle=False)))
    model, objective = tiny_model(), TTDObjective()
    with torch.no_grad():
        before = objective(model.eval(), batch)[0].item()
    result = train(config(manifest, tmp_path / "run", steps=20, batch_size=8, warmup_steps=0), model=model, progress=False)
    with torch.no_grad():
        after = objective(model.eval(), batch)[0].item()
    assert after < 0.8 * before
    assert result.step == 20 and not result.stopped_early
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert {"loss", "l_distill", "l_tag", "lr", "samples_per_s", "skipped", "grad_norm"} <= set(log[0])
    summary = capsys.readouterr().out  # one line at start; every setting goes to config.yaml
    assert summary.count("\n") == 1 and "20 steps × batch 8 at 32 px" in summary and "config.yaml" in summary
    assert "lora_rank: 8" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.parametrize("kind, workers", [("manifest", 0), ("shards", 2)])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, kind, workers):
    pairs = make_pairs(18)
    if kind == "manifest":
        data = write_manifest(tmp_path / "data", pairs, corrupt=(3,))
    else:
        data = write_shards(tmp_path / "data", pairs, per_shard=4, corrupt=(5,))
    kw = dict(workers=workers, lora_dropout=0.2, shuffle_buffer=3, save_every=3)  # dropout: RNG must resume too
    straight = tiny_model()
    train(config(data, tmp_path / "a", **kw), model=straight, progress=False)
    first = train(config(data, tmp_path / "b", **kw), model=tiny_model(), progress=False, stop_after=5)
    assert first.stopped_early and first.step == 5 and latest_checkpoint(tmp_path / "b").name == "step_00000005"
    resumed = tiny_model()
    train(config(data, tmp_path / "b", **kw), model=resumed, progress=False, resume=True)
    a, b = trainable(straight), trainable(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "a" / "log.jsonl").read_text()
    log_b = (tmp_path / "b" / "log.jsonl").read_text()
    strip = lambda text: [{k: v for k, v in json.loads(l).items() if k != "samples_per_s"} for l in text.splitlines()]
    assert strip(log_a) == strip(log_b)
    assert strip(log_a)[-1]["skipped"] == 1
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step_00000006", "step_00000008"]


def test_sigterm_stops_with_a_checkpoint(tmp_path):
    manifest = write_manifest(tmp_path / "data", make_pairs(8))

    class Interrupted(TTDObjective):
        calls = 0

        def __call__(self, model, batch):
            Interrupted.calls += 1
            if Interrupted.calls == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(model, batch)

    trainer = Trainer(config(manifest, tmp_path / "run"), Interrupted(), model=tiny_model())
    result = trainer.fit(progress=False)
    assert result.stopped_early and result.step == 3 and result.adapter is None
    assert latest_checkpoint(tmp_path / "run").name == "step_00000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_trained_adapter_reloads_onto_a_fresh_base(tmp_path):
    manifest = write_manifest(tmp_path / "data", make_pairs(8))
    model = tiny_model()
    result = train(config(manifest, tmp_path / "run", steps=4), model=model, progress=False)
    assert result.adapter == tmp_path / "run" / "adapter.safetensors"
    images = torch.randn(2, 3, 32, 32)
    texts = ["a red dot", "a green stripe on a blue background."]
    fresh = load_adapter(tiny_model(), result.adapter)
    for m in (model, fresh):
        m.eval()
    with torch.no_grad():
        a, b = model.encode_image(images), fresh.encode_image(images)
        assert torch.allclose(a[1], b[1], atol=1e-6)
        assert torch.allclose(model.heatmap(a[1], texts), fresh.heatmap(b[1], texts), atol=1e-6)
    assert torch.equal(fresh.calibration.weight, model.calibration.weight)
    assert model.calibration.weight.item() != 10.0  # the calibration was trained
    checkpoint_adapter = load_file(str(result.checkpoint / "adapter.safetensors"))
    assert all(torch.equal(v, load_file(str(result.adapter))[k]) for k, v in checkpoint_adapter.items())


def test_two_processes_match_one(tmp_path):
    manifest = write_manifest(tmp_path / "data", make_pairs(16), corrupt=(6,))
    kw = dict(steps=3, batch_size=4, warmup_steps=1, log_every=1)
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from helpers import tiny_model\n"
        "from ttd.train import train\n"
        "from ttd.config import load_config\n"
        f"cfg = load_config(data={str(manifest)!r}, out={str(tmp_path / 'two')!r}, image_size=32, workers=0, "
        f"lr=3e-3, tensorboard=False, **{kw!r})\n"
        "train(cfg, model=tiny_model(), progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    train(config(manifest, tmp_path / "one", **kw), model=tiny_model(), progress=False)
    one = load_file(str(tmp_path / "one" / "adapter.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter.safetensors"))
    assert one.keys() == two.keys()
    changed = [k for k in one if not torch.equal(one[k], tiny_model_adapter_init(k, one[k]))]
    assert changed  # training moved the weights
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k
    # AdamW's first steps barely depend on the gradient's scale: compare the losses and the
    # (all-reduced) gradient norms of every step as well
    for one_entry, two_entry in zip(*(read_log(tmp_path / run) for run in ("one", "two")), strict=True):
        for key in ("loss", "l_distill", "l_tag", "grad_norm", "selected"):
            assert one_entry[key] == pytest.approx(two_entry[key], rel=1e-5), (one_entry["step"], key)
    assert one_entry["skipped"] == two_entry["skipped"] == 1


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def tiny_model_adapter_init(key: str, like: torch.Tensor) -> torch.Tensor:
    """B matrices start at zero and the calibration at (10, −2.5): training must move them."""
    if key == "calibration.weight":
        return torch.tensor(10.0)
    if key == "calibration.bias":
        return torch.tensor(-2.5)
    return torch.zeros_like(like) if key.endswith(".B") else like


def test_contrastive_objective_trains_with_the_same_machinery(tmp_path):
    manifest = write_manifest(tmp_path / "data", make_pairs(8))
    batch = next(iter(PairLoader(manifest, 8, image_size=32, shuffle=False)))
    model, objective = tiny_model(), ContrastiveObjective()
    with torch.no_grad():
        before = objective(model.eval(), batch)[0].item()
    trainer = Trainer(config(manifest, tmp_path / "run", steps=15, batch_size=8, finetune="full", lr=1e-3), objective, model=model)
    trainer.fit(progress=False)
    with torch.no_grad():
        after = objective(model.eval(), batch)[0].item()
    assert after < 0.8 * before


def test_tag_selection_helpers():
    tags = batch_tags(["A dog, a cat!", "...", "dog"])
    assert tags.words == [["a", "dog", "cat"], [], ["dog"]]
    assert tags.unique == ["a", "dog", "cat"]
    assert tags.index.tolist() == [[0, 1, 2], [0, 0, 0], [1, 0, 0]]
    assert tags.valid.tolist() == [[True, True, True], [False, False, False], [True, False, False]]
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.9, 0.9, 0.9], [0.3, 0.0, 0.0]])
    assert select_tags(scores, 0.5, valid=tags.valid).tolist() == [[False, True, False], [False] * 3, [False] * 3]
    assert select_tags(scores, 0.15, True, tags.valid).tolist() == [
        [False, True, True],
        [False] * 3,
        [True, False, False],
    ]


@pytest.mark.parametrize("scorer", ["pixel", "image"])
def test_objective_runs_with_either_scorer_and_empty_captions(scorer):
    batch = next(iter(_batch_of(["a red dot.", "!!!"])))
    loss, metrics = TTDObjective(TagSelection(scorer=scorer, template="a photo of a {}."))(tiny_model(), batch)
    loss.backward()
    assert torch.isfinite(loss) and metrics["candidates"].item() == 1.5


def test_noun_tagger_as_tag_source_selects_exactly_the_nouns():
    pytest.importorskip("spacy")
    from ttd.train import ttd_objective

    objective = ttd_objective(TrainConfig(data="unused", scorer="nouns"))
    batch = next(iter(_batch_of(["a dog and a cat on grass", "a red ball"])))
    loss, metrics = objective(tiny_model(), batch)
    loss.backward()
    assert torch.isfinite(loss) and metrics["selected"].item() == 2.0  # dog, cat, grass | ball


@pytest.mark.parametrize("stopwords, candidates", [(False, 5.0), (True, 2.0)])
def test_training_candidates_keep_stop_words_unless_asked(stopwords, candidates):
    from ttd.train import ttd_objective

    objective = ttd_objective(TrainConfig(data="unused", stopwords=stopwords))
    _, metrics = objective(tiny_model(), next(iter(_batch_of(["a dog on the grass"]))))
    assert metrics["candidates"].item() == candidates  # a, dog, on, the, grass | dog, grass


def _batch_of(captions):
    from ttd.data.pairs import PairBatch

    yield PairBatch(torch.randn(len(captions), 3, 32, 32), list(captions), [str(i) for i in range(len(captions))])


def test_config_from_yaml_and_flags(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 1e-4\nlora-targets: [q, v]\nsteps: 50\ndata: a.jsonl\n")
    cfg = load_config(path, steps=7, lora_towers="text")
    assert (cfg.lr, cfg.steps, cfg.lora_targets, cfg.lora_towers, cfg.data) == (1e-4, 7, ("q", "v"), ("text",), "a.jsonl")
    assert load_config(**yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg  # the saved YAML round-trips
    for bad, message in [
        ({"lr_rate": 1}, "unknown config key 'lr_rate'"),
        ({"steps": "many"}, "config key 'steps': cannot read 'many' as int"),
    ]:
        with pytest.raises(TTDError, match=message):
            load_config(**bad)
    for bad, message in [
        ({"data": ""}, "no training data"),
        ({"tau": 1.5}, "tau must lie in"),
        ({"distance": "huber"}, "unknown distance 'huber'; choose one of: l1, mse, bce"),
        ({"dense": "groupvit"}, "unknown dense variant 'groupvit'"),
        ({"lora_targets": "q,mlp"}, "unknown LoRA target"),
    ]:
        with pytest.raises(TTDError, match=message):
            load_config(**{"data": "a.jsonl", **bad}).validate()


def test_resume_reuses_the_saved_configuration(tmp_path):
    manifest = write_manifest(tmp_path / "data", make_pairs(8))
    train(config(manifest, tmp_path / "run", lora_rank=4), model=tiny_model(), progress=False, stop_after=2)
    cfg = resolve_config(None, {"out": str(tmp_path / "run"), "steps": 10}, resume=True)
    assert (cfg.lora_rank, cfg.steps, cfg.data) == (4, 10, str(manifest))
    with pytest.raises(TTDError, match="already holds a run"):
        train(config(manifest, tmp_path / "run"), model=tiny_model(), progress=False)
    with pytest.raises(TTDError, match="no checkpoint under"):
        train(config(manifest, tmp_path / "new"), model=tiny_model(), progress=False, resume=True)


def test_calibration_takes_its_own_learning_rate(tmp_path):
    manifest = write_manifest(tmp_path / "data", make_pairs(8))
    moves = {}
    for calibration_lr in (None, 0.5):
        model = tiny_model()
        train(config(manifest, tmp_path / f"run{calibration_lr}", steps=4, lr=1e-4, warmup_steps=0,
                     calibration_lr=calibration_lr), model=model, progress=False)
        moves[calibration_lr] = abs(model.calibration.bias.item() + 2.5)
    assert moves[None] <= 4 * 1e-4 * 1.01  # Adam: about lr per step at most
    assert moves[0.5] > 100 * moves[None]
    log = [json.loads(line) for line in (tmp_path / "run0.5" / "log.jsonl").read_text().splitlines()]
    assert {"calibration_w", "calibration_b"} <= set(log[-1]) and log[-1]["calibration_b"] != -2.5
    with pytest.raises(TTDError, match="calibration_lr must be positive"):
        load_config(data="x", calibration_lr=0).validate()


def test_cli_errors_are_one_line(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data", make_pairs(4))
    cases = [
        (["train"], "no training data"),
        (["train", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r")], "manifest not found"),
        (["train", "--data", str(manifest), "--tau", "2"], "tau must lie in [0, 1]"),
        (["train", "--data", str(manifest), "--out", str(tmp_path / "r"), "--resume"], "no checkpoint under"),
    ]
    prune = ["data", "prune", "--data", str(manifest), "--out", str(tmp_path / "p.jsonl")]
    cases += [
        ([*prune, "--keep-fraction", "0"], "keep fraction must lie in (0, 1], got 0.0"),
        (["data", "prune", "--data", str(tmp_path / "none"), "--out", "k.txt"], "shard not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"ttd {argv[0]}: error: ") and message in err and "\n" not in err


def test_prune_manifest_and_shards_agree_and_resume(tmp_path):
    from ttd.data.prune import prune

    pairs = make_pairs(12)
    manifest = write_manifest(tmp_path / "m", pairs, corrupt=(2,))
    shards = write_shards(tmp_path / "s", pairs, per_shard=5, corrupt=(2,))
    model = tiny_model()
    out = tmp_path / "out" / "pruned.jsonl"
    result = prune(str(manifest), out, model, keep_fraction=0.5, batch_size=3, workers=0, image_size=32, chunk=4, progress=False)
    assert (result.scored, result.kept, result.skipped) == (11, 6, 1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["score"] >= result.threshold - 1e-6 for r in rows) and len(rows) == 6
    assert all((out.parent / r["image"]).is_file() for r in rows)  # paths relative to the new manifest
    kept_lines = {int(Path(r["image"]).stem) for r in rows}
    keep = tmp_path / "keep.txt"
    shard_result = prune(str(shards), keep, model, keep_fraction=0.5, batch_size=3, workers=2, image_size=32, progress=False)
    assert {int(k) for k in keep.read_text().split()} == kept_lines
    assert shard_result.threshold == pytest.approx(result.threshold, abs=1e-6)
    # resumable: drop one saved chunk, run again, get the same output
    scores = sorted((out.parent / "pruned.jsonl.scores").glob("chunk_*.json"))
    assert len(scores) == 3
    scores[1].unlink()
    before = out.read_text()
    again = prune(str(manifest), out, model, keep_fraction=0.5, batch_size=3, workers=0, image_size=32, chunk=4, progress=False)
    assert out.read_text() == before and again.scored == 11
    with pytest.raises(TTDError, match="keep fraction must lie in"):
        prune(str(manifest), out, model, keep_fraction=0.0)


def test_frozen_teacher_selects_with_the_weights_before_training():
    from ttd.models.lora import inject_lora, set_trainable
    from ttd.method.tags import TAG_SCORERS, register_tag_scorer

    seen = []
    register_tag_scorer("spy", lambda inp: seen.append(inp.tag_cosines) or TAG_SCORERS["pixel"](inp))
    try:
        batch = next(_batch_of(["a red dot on a blue background.", "a green stripe."]))
        base = tiny_model()
        TTDObjective(TagSelection(scorer="spy"))(base, batch)
        for finetune in ("lora", "full"):
            model = tiny_model()
            if finetune == "lora":
                inject_lora(model)
            set_trainable(model, finetune)
            frozen, online = TTDObjective(TagSelection(scorer="spy"), teacher="frozen"), TTDObjective(TagSelection(scorer="spy"))
            frozen.prepare(model)
            with torch.no_grad():  # what training would do: every trainable weight moves
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(0.2 * torch.randn_like(p))
            frozen(model, batch)
            online(model, batch)
            assert torch.allclose(seen[-2], seen[0], atol=1e-6), finetune  # the teacher is the base model
            assert not torch.allclose(seen[-1], seen[0], atol=1e-3), finetune  # online: the current one
    finally:
        del TAG_SCORERS["spy"]
    with pytest.raises(TTDError, match="unknown teacher 'ema'"):
        TTDObjective(teacher="ema")


def test_pretrain_cli_from_random_weights_resumes_and_writes_clip_weights(tmp_path, capsys):
    from helpers import TINY

    import ttd

    manifest = write_manifest(tmp_path / "data", make_pairs(8))
    arch = tmp_path / "tiny.yaml"
    arch.write_text(yaml.safe_dump(TINY.to_dict()))
    out = tmp_path / "pre"
    argv = ["pretrain", "--data", str(manifest), "--out", str(out), "--clip-config", str(arch), "--steps", "4",
            "--batch-size", "4", "--image-size", "32", "--workers", "0", "--no-tensorboard", "--no-progress"]
    assert main([*argv, "--stop-after", "2"]) == 0
    assert "continue with: ttd pretrain" in capsys.readouterr().out
    assert main(["pretrain", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith("model.safetensors")
    weights = load_file(str(out / "model.safetensors"))
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in weights  # OpenAI names
    assert not torch.equal(weights["logit_scale"], torch.tensor(2.6592600345611572))  # the scale was trained
    model = ttd.load_model(str(out / "model.safetensors"), device="cpu")  # the normal loader reads it back
    assert model.config == dataclasses.replace(TINY, image_size=32)
    arch.write_text("width: 3\n")
    assert main(argv[:-2] + ["--out", str(tmp_path / "other")]) == 2
    assert "unknown field 'width'" in capsys.readouterr().err


def test_pretrain_init_continues_from_given_weights(tmp_path, capsys):
    from helpers import TINY

    import ttd

    manifest = write_manifest(tmp_path / "data", make_pairs(8))
    arch = tmp_path / "tiny.yaml"
    arch.write_text(yaml.safe_dump(dataclasses.replace(TINY, image_size=32).to_dict()))
    common = ["--data", str(manifest), "--steps", "2", "--batch-size", "4", "--workers", "0", "--no-tensorboard", "--no-progress"]
    assert main(["pretrain", *common, "--out", str(tmp_path / "a"), "--clip-config", str(arch)]) == 0
    first = tmp_path / "a" / "model.safetensors"
    assert main(["pretrain", *common, "--out", str(tmp_path / "b"), "--init", str(first), "--lr", "1e-12"]) == 0
    capsys.readouterr()
    start, again = load_file(str(first)), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert start.keys() == again.keys() and all(torch.allclose(start[k], again[k], atol=1e-6) for k in start)  # the init
    assert main(["pretrain", *common, "--out", str(tmp_path / "c"), "--init", str(first)]) == 0
    moved = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not torch.equal(moved["visual.conv1.weight"], start["visual.conv1.weight"])  # it trains from there
    assert ttd.load_model(str(tmp_path / "c" / "model.safetensors")).config == ttd.load_model(str(first)).config
    assert main(["pretrain", *common, "--out", str(tmp_path / "d"), "--init", str(first), "--clip-config", str(arch)]) == 2
    assert "--init takes the architecture from its weights" in capsys.readouterr().err


def test_every_config_key_is_documented():
    import dataclasses

    docs = (TESTS.parent / "docs" / "training.md").read_text()
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f"`{f.name}`" not in docs]
    assert not missing


def test_defaults_follow_the_model_and_say_what_they_do(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data", make_pairs(4))
    short = config(manifest, tmp_path / "run", image_size=None, warmup_steps=500, steps=3)
    train(short, model=tiny_model(), progress=False, stop_after=2)
    out = capsys.readouterr().out  # on stdout: errors alone go to stderr, one line each
    assert "warning: steps (3) ≤ warmup_steps (500)" in out and out.count("\n") == 2
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.image_size == tiny_model().config.image_size  # the model's own resolution
    train(config(manifest, tmp_path / "run", image_size=None, warmup_steps=500, steps=3), model=tiny_model(),
          progress=False, resume=True)
    assert "resuming from step 2" in capsys.readouterr().err
    assert 1 <= TrainConfig().workers <= 4


@pytest.mark.parametrize("asked, local_rank, world, expected", [
    ("cuda", "0", "1", torch.device("cuda", 3)),  # a bare "cuda" is the current GPU: set_device refuses it
    (None, "0", "1", torch.device("cuda", 3)),
    ("cuda:1", "0", "1", torch.device("cuda", 1)),
    (None, "2", "4", torch.device("cuda", 2)),  # torchrun: one GPU per local rank
])
def test_process_device_names_a_gpu_index(monkeypatch, asked, local_rank, world, expected):
    from ttd.distributed import process_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    assert process_device(asked) == expected


def test_api_training_refuses_a_folder_another_live_process_writes(tmp_path):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    (out / ".ttd.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "command": "train"}))
    config = load_config(data=str(write_manifest(tmp_path / "pairs", make_pairs(4))), out=str(out), steps=1, batch_size=2,
                         image_size=32, workers=0, tensorboard=False)
    with pytest.raises(TTDError, match=f"is being written by ttd train \\(pid {os.getppid()}"):
        train(config, model=tiny_model(), progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".ttd.lock"]  # nothing written


def test_output_lock_is_reentrant_and_released_by_its_outermost_holder(tmp_path):
    from ttd.locks import output_lock

    with output_lock(tmp_path, "train"):
        with output_lock(tmp_path, "train"):  # the CLI around the API: the same process, no error
            assert (tmp_path / ".ttd.lock").is_file()
        assert (tmp_path / ".ttd.lock").is_file()
    assert not (tmp_path / ".ttd.lock").exists()
