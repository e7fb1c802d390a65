"""MMCAFNet: presets, missing data, gradients, staged training, checkpoints, export."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmscale import MMCAFNet, MMCAFNetConfig
from mmscale.models.mmcafnet import CHECKPOINT_FORMAT

# A model smaller than "tiny" so most tests take milliseconds.
MICRO = dict(stem_channels=8, widths=(16, 32, 64), cardinality=4, fusion_dims=(16, 16, 16),
             num_heads=2, table_dim=16)
MICRO_SINGLE = dict(MICRO, fusion="single", fusion_dims=(12, 6, 4), num_heads=1)
SHAPE = (3, 1, 8, 32, 32)
# The paper preset's logits on test_paper_preset_golden_logits's input (seeded weights).
GOLDEN_PAPER = [[-0.005754716921249459], [0.022527788762775308]]  # float64 run; float32 agrees to 1e-8


def micro(fusion: str = "tokens", **kw) -> MMCAFNet:
    torch.manual_seed(0)
    base = MICRO if fusion == "tokens" else MICRO_SINGLE
    return MMCAFNet.from_preset("tiny", **{**base, **kw})


def inputs(b: int = 3):
    g = torch.Generator().manual_seed(1)
    vol = torch.randn(b, *SHAPE[1:], generator=g)
    num = torch.randn(b, 2, generator=g)
    cat = torch.stack([torch.randint(0, k, (b,), generator=g) for k in (2, 10, 4, 7, 2)], dim=1)
    return vol, num, cat


FUSIONS = pytest.mark.parametrize("fusion", ["tokens", "single"])


# ------------------------------------------------------------------ presets and config
def test_paper_preset_parameter_count_and_pyramid_shapes():
    with torch.device("meta"):
        model = MMCAFNet.from_preset("paper")
    assert sum(p.numel() for p in model.parameters()) == 89_267_126
    assert sum(p.numel() for p in model.backbone.parameters()) == 10_502_896
    assert model.config.fusion == "single" and model.config.fusion_dims == (24, 12, 6)
    assert model.table_encoder.kan.dims == (7, 24)
    vol = torch.empty(2, 1, 12, 192, 192, device="meta")
    shapes = [tuple(f.shape) for f in model.encode_volume(vol)]
    assert shapes == [(2, 256, 6, 48, 48), (2, 512, 3, 24, 24), (2, 1024, 2, 12, 12)]
    gates = model.spatial_attention_maps(vol)
    assert [tuple(g.shape) for g in gates] == [(2, 1, 6, 48, 48), (2, 1, 3, 24, 24), (2, 1, 2, 12, 12)]
    # The paper shares one spatial-attention conv across the three levels.
    sas = {id(m.sa) for m in model.pyramid.attention}
    assert len(sas) == 1
    logits = model(vol, torch.empty(2, 2, device="meta"), torch.zeros(2, 5, dtype=torch.long, device="meta"))
    assert tuple(logits.shape) == (2, 1)


def test_config_contract_fields_and_defaults():
    names = {f.name for f in dataclasses.fields(MMCAFNetConfig)}
    for required in ("in_channels", "num_classes", "num_numerical", "categorical_cardinalities",
                     "fusion", "freeze_image_encoder"):
        assert required in names
    cfg = MMCAFNetConfig()
    assert (cfg.in_channels, cfg.num_classes, cfg.fusion, cfg.freeze_image_encoder) == (1, 2, "tokens", False)
    assert cfg.num_features == 7
    # Lists (JSON / argparse) become tuples.
    assert MMCAFNetConfig(categorical_cardinalities=[3, 4]).categorical_cardinalities == (3, 4)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(fusion="late"), "fusion"),
        (dict(num_classes=0), "num_classes"),
        (dict(num_numerical=-1), "num_numerical"),
        (dict(categorical_cardinalities=(2, 0)), "categorical_cardinalities"),
        (dict(num_numerical=0, categorical_cardinalities=()), "no table feature"),
        (dict(fusion_dims=(8, 8)), "fusion_dims"),
        (dict(num_heads=3), "num_heads"),
        (dict(neck_dropout=1.5), "neck_dropout"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MMCAFNetConfig(**kwargs)


def test_preset_errors():
    with pytest.raises(ValueError, match="name"):
        MMCAFNet.from_preset("huge")
    with pytest.raises(ValueError, match="widthz"):
        MMCAFNet.from_preset("tiny", widthz=(1, 2, 3))
    with pytest.raises(ValueError, match="config"):
        MMCAFNet(config={"fusion": "tokens"})


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((torch.randn(2, 2, 8, 32, 32),), {}, "volume"),
        ((torch.randn(2, 8, 32, 32),), {}, "volume"),
        ((torch.randn(2, 1, 8, 32, 32), torch.randn(2, 3)), {}, "numerical"),
        ((torch.randn(2, 1, 8, 32, 32), torch.randn(2, 2), torch.zeros(2, 4, dtype=torch.long)), {}, "categorical"),
        ((torch.randn(2, 1, 8, 32, 32), torch.randn(2, 2), torch.tensor([[0, 0, 4, 0, 0]] * 2)), {}, "categorical column 2"),
        ((torch.randn(2, 1, 8, 32, 32), torch.randn(3, 2)), {}, "batch size"),
        ((torch.randn(2, 1, 8, 32, 32),), dict(volume_present=torch.ones(2)), "volume_present"),
        ((), {}, "at least one"),
    ],
)
def test_forward_errors_name_the_argument(args, kwargs, name):
    model = micro().eval()
    with pytest.raises(ValueError, match=name):
        model(*args, **kwargs)


def test_forward_type_errors_name_the_argument():
    """A table of the wrong kind is a TypeError naming it, like a volume of the wrong dtype."""
    model = micro().eval()
    vol = torch.randn(2, 1, 8, 32, 32)
    with pytest.raises(TypeError, match="categorical must be an integer tensor"):
        model(vol, torch.randn(2, 2), torch.zeros(2, 5))
    with pytest.raises(TypeError, match="numerical must be a torch.Tensor"):
        model(vol, [[1.0, 2.0], [3.0, 4.0]])


# ------------------------------------------------------------------ forward, shapes
@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(1, 3),
    d=st.sampled_from([4, 5, 8]),
    hw=st.sampled_from([16, 24, 33]),
    classes=st.integers(1, 4),
    fusion=st.sampled_from(["tokens", "single"]),
)
def test_output_shapes_across_configurations(b, d, hw, classes, fusion):
    model = micro(fusion, num_classes=classes, depths=(1, 1, 1)).eval()
    vol = torch.randn(b, 1, d, hw, hw)
    logits, att = model(vol, torch.randn(b, 2), torch.zeros(b, 5, dtype=torch.long), return_attention=True)
    assert logits.shape == (b, classes) and torch.isfinite(logits).all()
    assert set(att) and all(torch.isfinite(w).all() for w in att.values())


def test_ct_plus_pet_input_with_a_three_channel_stem():
    model = micro(in_channels=2, stem_in_channels=3).eval()
    vol = torch.randn(2, 2, 8, 32, 32)
    assert model(vol, torch.randn(2, 2), None).shape == (2, 2)
    assert model.backbone.stem[0].in_channels == 3


def test_attention_dict_shapes_tokens():
    model = micro().eval()
    vol, num, cat = inputs()
    _, att = model(vol, num, cat, return_attention=True)
    assert set(att) == {f"scale{s}.{k}" for s in range(3) for k in ("volume_to_table", "table_to_volume")}
    assert att["scale0.volume_to_table"].shape == (3, 2, 32, 7)
    assert att["scale2.table_to_volume"].shape == (3, 2, 7, 32)
    torch.testing.assert_close(att["scale1.volume_to_table"].sum(-1), torch.ones(3, 2, 32))


def test_spatial_attention_maps():
    model = micro().eval()
    vol, _, _ = inputs()
    feats = model.encode_volume(vol)
    gates = model.spatial_attention_maps(vol)
    assert len(gates) == 3
    for g, f in zip(gates, feats, strict=False):
        assert g.shape == (3, 1, *f.shape[2:])
        assert ((g > 0) & (g < 1)).all()


# ------------------------------------------------------------------ missing data
@FUSIONS
def test_masked_inputs_do_not_change_the_output(fusion):
    model = micro(fusion).eval()
    vol, num, cat = inputs()
    present = torch.tensor([True, False, True])
    num[0, 1] = float("nan")
    cat[2, 3] = -1
    out = model(vol, num, cat, volume_present=present)
    assert torch.isfinite(out).all()
    vol2 = vol.clone()
    vol2[1] = torch.randn_like(vol2[1]) * 100
    vol2[1, 0, 0, 0, 0] = float("nan")
    torch.testing.assert_close(model(vol2, num, cat, volume_present=present), out, rtol=0, atol=0)
    # Present values do matter.
    vol3 = vol.clone()
    vol3[0] += 1
    assert not torch.allclose(model(vol3, num, cat, volume_present=present)[0], out[0])
    num2 = num.clone()
    num2[1, 0] += 1
    assert not torch.allclose(model(vol, num2, cat, volume_present=present)[1], out[1])


def test_absent_volumes_do_not_reach_batch_statistics_in_training():
    # Absent volumes are zeroed before the backbone, so even BatchNorm's batch
    # statistics (train mode) cannot see their content.
    model = micro().train()
    vol, num, cat = inputs()
    present = torch.tensor([True, False, True])
    torch.manual_seed(5)
    out = model(vol, num, cat, volume_present=present)
    vol[1] = torch.randn_like(vol[1]) * 50
    torch.manual_seed(5)
    torch.testing.assert_close(model(vol, num, cat, volume_present=present), out, rtol=0, atol=0)


@FUSIONS
def test_whole_modality_missing(fusion):
    model = micro(fusion).eval()
    vol, num, cat = inputs()
    absent = torch.zeros(3, dtype=torch.bool)
    table_only = model(None, num, cat)
    assert table_only.shape == (3, 2) and torch.isfinite(table_only).all()
    # No volume at all == volumes present but all flagged absent.
    torch.testing.assert_close(model(vol, num, cat, volume_present=absent), table_only)
    image_only = model(vol)
    nan_num = torch.full((3, 2), float("nan"))
    missing_cat = torch.full((3, 5), -1)
    torch.testing.assert_close(model(vol, nan_num, missing_cat), image_only)
    assert torch.isfinite(model(vol, nan_num, None)).all()
    # Nothing at all but the (empty) table: still a finite, constant prediction.
    prior = model(None, nan_num, missing_cat)
    assert torch.isfinite(prior).all()
    torch.testing.assert_close(prior[0], prior[1])


@FUSIONS
def test_missing_values_do_not_poison_training_gradients(fusion):
    model = micro(fusion).train()
    vol, num, cat = inputs()
    num[:, 0] = float("nan")
    cat[1] = -1
    loss = model(vol, num, cat, volume_present=torch.tensor([True, False, True])).logsumexp(-1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


# ------------------------------------------------------------------ gradients, staged training
def test_gradients_reach_every_trainable_parameter():
    model = micro().train()
    vol, num, cat = inputs()
    num[0, 0] = float("nan")  # exercise the missing-embedding path
    cat[0, 1] = -1
    model(vol, num, cat).pow(2).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_single_path_gradients_reach_all_but_the_one_key_qk():
    model = micro("single").train()
    vol, num, cat = inputs()
    num[0, 0] = float("nan")
    model(vol, num, cat).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        one_key_qk = name.startswith("fusion.") and (".q_proj." in name or ".k_proj." in name)
        if one_key_qk:
            # Softmax over a single key is identically 1: its q/k gradient is zero up to
            # rounding (the softmax backward subtracts two equal terms).
            assert p.grad.abs().max() < 1e-7, name
        else:
            assert p.grad.abs().sum() > 0, name


@FUSIONS
def test_frozen_image_encoder(fusion):
    model = micro(fusion, freeze_image_encoder=True)
    model.train()
    encoder = [model.backbone, model.neck_norm, model.pyramid]
    assert all(not m.training for m in encoder) and model.head.training
    stats = model.neck_norm[0][0].running_mean.clone()
    vol, num, cat = inputs()
    model(vol, num, cat).sum().backward()
    for m in encoder:
        for p in m.parameters():
            assert not p.requires_grad and p.grad is None
    torch.testing.assert_close(model.neck_norm[0][0].running_mean, stats)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    model.set_image_encoder_trainable(True)
    assert model.config.freeze_image_encoder is False
    assert all(m.training for m in encoder)
    assert all(p.requires_grad for p in model.backbone.parameters())
    model.set_image_encoder_trainable(False)
    assert model.config.freeze_image_encoder is True and not model.backbone.training


# ------------------------------------------------------------------ checkpoints
@FUSIONS
def test_checkpoint_round_trip(fusion, tmp_path):
    model = micro(fusion, num_classes=3, categorical_cardinalities=(2, 3), num_numerical=1).eval()
    schema = {"columns": ["age", "sex", "t"], "mean": [60.0], "vocab": {"sex": ["F", "M"]}}
    state = model.checkpoint_state(table_schema=schema)
    assert state["format"] == CHECKPOINT_FORMAT and state["table_schema"] == schema
    state["optimizer"] = {"lr": 1e-3}  # trainers add their own keys
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    loaded = MMCAFNet.from_checkpoint(path).eval()
    assert loaded.config == model.config
    assert isinstance(loaded.config.categorical_cardinalities, tuple)
    assert isinstance(loaded.config.widths, tuple)
    assert loaded.table_schema == schema
    g = torch.Generator().manual_seed(3)
    vol = torch.randn(2, 1, 8, 32, 32, generator=g)
    num = torch.randn(2, 1, generator=g)
    cat = torch.tensor([[0, 2], [1, -1]])
    torch.testing.assert_close(loaded(vol, num, cat), model(vol, num, cat), rtol=0, atol=0)
    # weights_only-safe: a plain state round-trips through a buffer too, schema None.
    buf = io.BytesIO()
    torch.save(model.checkpoint_state(), buf)
    buf.seek(0)
    assert MMCAFNet.from_checkpoint(buf).table_schema is None


def test_checkpoint_errors(tmp_path):
    model = micro()
    with pytest.raises(ValueError, match="table_schema"):
        model.checkpoint_state(table_schema=["age"])
    bad = model.checkpoint_state()
    bad["format"] = "other/1"
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="format"):
        MMCAFNet.from_checkpoint(tmp_path / "bad.pt")
    bad = model.checkpoint_state()
    bad["config"]["not_a_field"] = 1
    torch.save(bad, tmp_path / "bad2.pt")
    with pytest.raises(ValueError, match="not_a_field"):
        MMCAFNet.from_checkpoint(tmp_path / "bad2.pt")


def test_frozen_state_survives_checkpoint():
    model = micro(freeze_image_encoder=True)
    loaded = MMCAFNet.from_state(model.checkpoint_state())
    assert not any(p.requires_grad for p in loaded.backbone.parameters())


# ------------------------------------------------------------------ training step, dtypes
def test_tiny_preset_training_step():
    torch.manual_seed(0)
    model = MMCAFNet.from_preset("tiny").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    vol = torch.randn(2, 1, 16, 64, 64)
    num, cat = torch.randn(2, 2), torch.tensor([[0, 1, 2, 0, 1], [1, -1, 0, 3, 0]])
    y = torch.tensor([0, 1])
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(vol, num, cat), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@FUSIONS
def test_cpu_autocast_bfloat16(fusion):
    model = micro(fusion).eval()
    vol, num, cat = inputs()
    num[0, 0] = float("nan")
    ref = model(vol, num, cat)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(vol, num, cat)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.15, rtol=0.1)


# ------------------------------------------------------------------ deployment
def _export_inputs():
    vol, num, cat = inputs(2)
    num[1, 0] = float("nan")
    cat[0, 2] = -1
    return vol, num, cat


@pytest.mark.parametrize("fusion", ["single"])  # "tokens" goes through torch.export in the ONNX test
def test_torch_export_matches_eager(fusion):
    model = micro(fusion).eval()
    args = _export_inputs()
    program = torch.export.export(model, args)
    torch.testing.assert_close(program.module()(*args), model(*args))


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["tokens"])  # the path with masked multi-head SDPA
def test_onnx_round_trip(fusion, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = micro(fusion).eval()
    args = _export_inputs()
    path = tmp_path / "model.onnx"
    exported = torch.export.export(model, args)
    torch.testing.assert_close(exported.module()(*args), model(*args))
    program = torch.onnx.export(exported, args, dynamo=True, verbose=False)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=False)}
    (out,) = session.run(None, feeds)
    torch.testing.assert_close(torch.from_numpy(out), model(*args), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_torch_compile_smoke():
    # Dynamo capture of the whole model (value checks must step aside while tracing);
    # the "eager" backend keeps this affordable on 2 CPU cores. Inductor also works
    # (checked by hand; its CPU compile takes minutes here).
    torch._dynamo.reset()
    model = micro().eval()
    args = _export_inputs()
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(compiled(*args), model(*args), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ fidelity to the published MMCAF-Net
PUBLISHED = dict(
    num_classes=1, fusion="single", fusion_dims=(24, 12, 6), num_heads=(4, 2, 2), freeze_mode="weights",
    se_activation="leaky_relu", drop_path_mode="batch", drop_path_schedule="penet", neck_align_corners=True,
    neck_always_project=False, fusion_combine="mean", fusion_down_dropout=0.5, kan_grid_range=(-1.0, 1.0),
    stem_in_channels=3, drop_path_rate=0.5, neck_dropout=0.3, image_dropout=0.5,
)


@pytest.fixture(scope="module")
def paper() -> MMCAFNet:
    """The paper preset, built once (89 M parameters), seeded."""
    torch.manual_seed(0)
    return MMCAFNet.from_preset("paper").eval()


def test_paper_preset_sets_every_published_value(paper):
    cfg = paper.config
    for name, value in PUBLISHED.items():
        assert getattr(cfg, name) == value, name
    blocks = [b for s in paper.backbone.stages for b in s]
    assert all(b.se.activation == "leaky_relu" and b.drop_path.mode == "batch" for b in blocks)
    survival = [1 - b.drop_path.drop_prob for b in blocks]
    assert survival == pytest.approx([1 - (i / 13) * 0.5 for i in range(13)])
    assert paper.pyramid.align_corners and all(f.align_corners and not f.always_project for f in paper.pyramid.fuse)
    assert paper.fusion.combine == "mean" and [a.num_heads for a in paper.fusion.attn] == [4, 2, 2]
    assert paper.table_encoder.kan.layers[0].grid_range == (-1.0, 1.0)
    assert paper.head[-1].out_features == 1
    # mmscale's own choices stay the defaults (and the tiny preset's).
    tiny = MMCAFNet.preset_config("tiny")
    assert (tiny.se_activation, tiny.drop_path_mode, tiny.drop_path_schedule, tiny.neck_align_corners,
            tiny.freeze_mode, tiny.num_classes) == ("relu", "sample", "linear", False, "eval", 2)


def test_paper_preset_parameter_count_per_part(paper):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    parts = {
        "backbone": count(paper.backbone), "neck_norm": count(paper.neck_norm),
        "msca": count(paper.pyramid.attention), "up": count(paper.pyramid.up), "fuse": count(paper.pyramid.fuse),
        "image_proj": count(paper.image_proj), "table": count(paper.table_encoder),
        "fusion": count(paper.fusion), "head": count(paper.head),
    }
    assert parts == {
        "backbone": 10_502_896, "neck_norm": 3_584, "msca": 6_258_350, "up": 700_672, "fuse": 71_770_632,
        "image_proj": 24_600, "table": 1_519, "fusion": 4_848, "head": 25,
    }
    assert sum(parts.values()) == count(paper) == 89_267_126


def test_paper_preset_golden_logits(paper):
    # Seeded weights (torch.manual_seed(0) before from_preset) on a fixed small input;
    # frozen so that no change to the paper preset's function goes unseen.
    g = torch.Generator().manual_seed(1)
    vol = torch.randn(2, 1, 8, 16, 16, generator=g)
    num = torch.randn(2, 2, generator=g)
    cat = torch.tensor([[0, 1, 2, 0, 1], [1, -1, 0, 3, 0]])
    with torch.no_grad():
        logits = paper(vol, num, cat)
    torch.testing.assert_close(logits, torch.tensor(GOLDEN_PAPER), rtol=1e-4, atol=1e-6)


def test_tiny_preset_still_computes_what_it_did():
    # The tiny preset (the demo's numbers) keeps its function and its state-dict keys.
    torch.manual_seed(0)
    model = MMCAFNet.from_preset("tiny").eval()
    g = torch.Generator().manual_seed(1)
    vol, num = torch.randn(2, 1, 8, 32, 32, generator=g), torch.randn(2, 2, generator=g)
    cat = torch.tensor([[0, 1, 2, 0, 1], [1, -1, 0, 3, 0]])
    with torch.no_grad():
        logits = model(vol, num, cat)
    want = [[-0.6578367352485657, 0.2106308937072754], [-0.6997801661491394, 0.23293378949165344]]
    torch.testing.assert_close(logits, torch.tensor(want), rtol=1e-4, atol=1e-5)
    keys = sorted(model.state_dict())
    assert len(keys) == 302
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16] == "74db363e3bdb8e97"


def test_weights_freeze_keeps_training_mode_and_freezes_the_projection():
    model = micro("single", freeze_mode="weights", drop_path_mode="batch")
    model.set_image_encoder_trainable(False)
    model.train()
    frozen = [model.backbone, model.neck_norm, model.pyramid, model.image_proj]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(m.training for m in frozen)  # BN, dropout and stochastic depth stay active
    stats = model.neck_norm[0][0].running_mean.clone()
    vol, num, cat = inputs()
    model(vol, num, cat).sum().backward()
    assert not torch.equal(model.neck_norm[0][0].running_mean, stats)  # BN statistics keep updating
    assert all(p.grad is None for m in frozen for p in m.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("table_encoder.", "fusion.", "head.")) for n in trainable)
    # Dropout is live while training: two passes differ.
    assert not torch.equal(model(vol, num, cat), model(vol, num, cat))
    model.set_image_encoder_trainable(True)
    assert all(p.requires_grad for m in frozen for p in m.parameters())
    # The eval-mode freeze (mmscale's default) leaves the projection trainable and the encoder in eval.
    evalf = micro("single", freeze_image_encoder=True).train()
    assert not evalf.backbone.training and all(p.requires_grad for p in evalf.image_proj.parameters())


# ------------------------------------------------------------------ refusing bad input by name
def test_forward_refuses_empty_wrong_dtype_and_non_finite_volumes():
    model = micro().eval()
    num, cat = torch.randn(2, 2), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="volume has an empty dimension"):
        model(torch.randn(2, 1, 0, 32, 32), num, cat)
    with pytest.raises(TypeError, match="volume has dtype torch.float64"):
        model(torch.randn(2, 1, 8, 32, 32, dtype=torch.float64), num, cat)
    with pytest.raises(TypeError, match="volume must be a floating-point"):
        model(torch.zeros(2, 1, 8, 32, 32, dtype=torch.long), num, cat)
    with pytest.raises(TypeError, match="volume must be a torch.Tensor"):
        model([[0.0]], num, cat)
    vol = torch.randn(2, 1, 8, 32, 32)
    vol[1, 0, 3, 4, 5] = float("inf")
    with pytest.raises(ValueError, match=r"volume has non-finite values.*\[1\]"):
        model(vol, num, cat)
    with pytest.raises(ValueError, match="volume has non-finite"):
        model.spatial_attention_maps(vol)
    # A flagged-absent sample may hold anything.
    out = model(vol, num, cat, volume_present=torch.tensor([True, False]))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="numerical column 0 holds an infinite value"):
        model(vol[:1], torch.tensor([[float("-inf"), 0.0]]), cat[:1])
    # Under autocast a lower-precision volume is fine.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(2, 1, 8, 32, 32).bfloat16(), num, cat).shape == (2, 2)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(widths=256), "widths"),
        (dict(cardinality=0), "cardinality"),
        (dict(depths=(1, 1.5, 1)), "depths"),
        (dict(in_channels=True), "in_channels"),
        (dict(num_heads=(4, 2)), "num_heads"),
        (dict(num_heads=2.0), "num_heads"),
        (dict(fusion_dims=(24, 12, 6), num_heads=(4, 5, 2)), "num_heads"),
        (dict(kan_grid_range=(1.0, -1.0)), "kan_grid_range"),
        (dict(kan_grid_range=3), "kan_grid_range"),
        (dict(freeze_image_encoder="no"), "freeze_image_encoder"),
        (dict(freeze_mode="train"), "freeze_mode"),
        (dict(se_activation="gelu"), "se_activation"),
        (dict(drop_path_mode="token"), "drop_path_mode"),
        (dict(drop_path_schedule="cosine"), "drop_path_schedule"),
        (dict(fusion_combine="max"), "fusion_combine"),
        (dict(neck_align_corners=1), "neck_align_corners"),
        (dict(head_dropout="0.1"), "head_dropout"),
        (dict(fusion_down_dropout=1.0), "fusion_down_dropout"),
        (dict(backend="cuda"), "backend"),
        (dict(mid_widths=(128, 256)), "mid_widths"),
        (dict(stem_in_channels=0), "stem_in_channels"),
        (dict(categorical_cardinalities=5), "categorical_cardinalities"),
        (dict(kan_hidden=(0,)), "kan_hidden"),
        (dict(se_reduction=-1), "se_reduction"),
        (dict(msca_kernel_sizes=3), "msca_kernel_sizes"),
    ],
)
def test_ill_typed_config_fields_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MMCAFNetConfig(**kwargs)


def test_from_checkpoint_names_the_file_and_the_problem(tmp_path):
    model = micro()
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "notes.pt"
    text.write_text("epoch 3: loss 0.4\n")
    no_model = tmp_path / "no_model.pt"
    state = model.checkpoint_state()
    del state["model"]
    torch.save(state, no_model)
    bad_schema = tmp_path / "bad_schema.pt"
    schema = {"columns": [{"name": "age", "kind": "numerical"}, {"name": "sex", "kind": "categorical"}]}
    torch.save(model.checkpoint_state(table_schema=schema), bad_schema)
    malformed = tmp_path / "malformed.pt"
    torch.save(model.checkpoint_state(table_schema={"columns": [{"name": "age"}]}), malformed)
    wrong_weights = tmp_path / "wrong_weights.pt"
    state = model.checkpoint_state()
    state["config"]["num_classes"] = 5
    torch.save(state, wrong_weights)
    truncated = tmp_path / "truncated.pt"
    torch.save(model.checkpoint_state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    for path, problem in [
        (empty, "is an empty file"),
        (text, "not a torch checkpoint"),
        (truncated, "not a torch checkpoint"),
        (no_model, "no 'model' dict"),
        (bad_schema, "1 numerical and 1 categorical columns, but the config expects 2 and 5"),
        (malformed, "table_schema 'columns' must be a list"),
        (wrong_weights, "weights do not fit its config"),
        (listed, "checkpoint must be a dict"),
    ]:
        with pytest.raises(ValueError, match=problem) as info:
            MMCAFNet.from_checkpoint(path)
        assert str(path) in str(info.value), path
    with pytest.raises(FileNotFoundError):
        MMCAFNet.from_checkpoint(tmp_path / "missing.pt")
