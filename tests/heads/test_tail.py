"""Tail heads: zero adapters change nothing, training from tokens entering block 0 equals LoRA fine-tuning of the
whole backbone (an independent merged-weight LoRA written with torch.nn.utils.parametrize), the stages train what
they say, save/load keeps only the adapters, gates, router and classifiers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize

from aigi import extractors, heads
from aigi.extractors.tail import VitTail, build_tail
from aigi.heads._lora import orthogonality_loss

ARCH = "vit_tiny_patch16_224"
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8}


def _vit() -> nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=0, **TINY).eval()
    with torch.no_grad():  # LayerNorms away from identity so the test sees them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Tokens entering block 0, by timm's own embedding steps."""
    with torch.no_grad():
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


@pytest.fixture(scope="module")
def data() -> dict:
    torch.manual_seed(1)
    x = torch.randn(24, 3, 32, 32)
    y = np.array([0, 1] * 12)
    x[y == 1] += 0.3 * torch.randn(1, 3, 32, 32)  # a learnable difference
    return {"x": x, "y": y}


class MergedLora(nn.Module):
    """W + s * B A on output rows [start, stop) of a weight: LoRA by merging, not by the heads' forward hooks."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: float, start: int, stop: int) -> None:
        super().__init__()
        self.A, self.B = nn.Parameter(a.clone()), nn.Parameter(b.clone())
        self.scale, self.start, self.stop = scale, start, stop

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        delta = self.scale * self.B @ self.A
        return w + F.pad(delta, (0, 0, self.start, w.shape[0] - self.stop))


def _reference_lora(model: nn.Module, head: nn.Module) -> list[nn.Parameter]:
    """Parametrize the whole backbone's Linears with the head's initial adapters; returns their parameters."""
    lora, params = head.lora, []
    for key, pair in lora.experts[0].items():
        block, target = key[1:].split("_", 1)
        path, start, stop = head.tail.lora_targets[target]
        linear = model.blocks[int(block)].get_submodule(path)
        start, stop = (0, linear.out_features) if start is None else (start, stop)
        merged = MergedLora(pair.A.detach(), pair.B.detach(), lora.scale, start, stop)
        parametrize.register_parametrization(linear, "weight", merged)
        params += [merged.A, merged.B]
    return params



def whole_model_losses(model: nn.Module, classifier: nn.Module, params: list, x, y, cfg) -> list[float]:
    """Mean loss per epoch of LoRA fine-tuning run through the whole timm model, as `heads.fit` would batch it."""
    opt = torch.optim.AdamW([*params, *classifier.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen, target, losses = torch.Generator().manual_seed(cfg.seed), torch.as_tensor(y, dtype=torch.float32), []
    for _ in range(cfg.epochs):
        steps = []
        for idx in torch.randperm(len(target), generator=gen).split(cfg.batch_size):
            logits = classifier(model.forward_head(model.forward_features(x[idx]), pre_logits=True))
            loss = F.binary_cross_entropy_with_logits(logits.squeeze(-1), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps.append(loss.item())
        losses.append(float(np.mean(steps)))
    return losses

def test_whole_backbone_tail_equals_lora_finetuning(data: dict) -> None:
    model = _vit()
    tokens = _embed(model, data["x"]).numpy()
    tail = VitTail(_vit(), 0, proj=False).requires_grad_(False)
    head = heads.build("tail_lora", frozen=tail, inputs=["l-1.tokens"], targets=["q", "v", "out", "fc1"], rank=4)
    assert head.lora.scale == 4.0  # alpha 16 / rank 4
    for p in model.parameters():
        p.requires_grad_(False)
    params = _reference_lora(model, head)
    classifier = nn.Linear(32, 1)
    classifier.load_state_dict(head.classifier.state_dict())
    cfg = heads.FitConfig(epochs=4, batch_size=8, lr=3e-3, seed=3)
    history = heads.fit(head, {"l-1.tokens": tokens}, data["y"], cfg=cfg)
    losses = whole_model_losses(model, classifier, params, data["x"], data["y"], cfg)
    got = [e["loss"] for e in history["stages"][0]["epochs"]]
    assert max(abs(a - b) for a, b in zip(got, losses)) <= 1e-4, (got, losses)
    assert losses[-1] < losses[0] - 1e-3  # it trained: the adapters moved off zero
    assert head.lora.experts[0]["b1_q"].B.abs().max() > 0


def test_zero_adapters_change_nothing_and_q_is_a_slice(data: dict) -> None:
    tail = VitTail(_vit(), 1, proj=False)
    tokens = {"l0.tokens": torch.randn(4, 17, 32)}
    with torch.no_grad():
        base = tail(tokens["l0.tokens"])["pooler"]
    for name in ("tail_lora", "tail_sef", "tail_moe"):
        head = heads.build(
            name, frozen=tail, inputs=["l0.tokens"], **({"domains": ["a", "b"]} if "moe" in name else {})
        )
        with torch.no_grad():
            for k in range(len(head.lora.experts)):
                assert torch.equal(head.run_tail(tokens["l0.tokens"], k)["pooler"], base)
    head = heads.build("tail_lora", frozen=tail, inputs=["l0.tokens"], targets=["q"], rank=2)
    qkv = tail.blocks[0].attn.qkv
    seen = {}
    hook = qkv.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    with torch.no_grad():
        head.lora.experts[0]["b1_q"].B.fill_(1.0)
        head.run_tail(tokens["l0.tokens"], 0)
        adapted = seen["out"].clone()
        tail(tokens["l0.tokens"])  # adapters off
        plain = seen["out"]
    hook.remove()
    assert not torch.equal(adapted[..., :32], plain[..., :32]) and torch.equal(adapted[..., 32:], plain[..., 32:])


def test_save_keeps_only_what_trains_and_reloads(data: dict, tmp_path: Path) -> None:
    ex = extractors.build(f"timm:{ARCH}", features=["l0.tokens", "pooler"], device="cpu", **TINY)
    spec = dataclasses.asdict(ex.spec)
    feats = ex(data["x"])
    X = {"l0.tokens": feats["l0.tokens"].numpy()}
    head = heads.build("tail_lora", frozen=build_tail(spec, weights=None, feature="l0.tokens"), inputs=["l0.tokens"])
    heads.fit(head, X, data["y"], cfg=heads.FitConfig(epochs=2, batch_size=8))
    heads.save(head, tmp_path / "h", meta={"extractor_spec": {"main": spec}})
    stored = load_file(str(tmp_path / "h" / "head.safetensors"))
    assert stored and all(k.startswith(("lora.", "classifier.")) for k in stored)
    assert heads.read_info(tmp_path / "h")["extractor_spec"]["main"]["features"] == ["l0.tokens", "pooler"]
    with pytest.raises(ValueError, match="needs the frozen tail"):
        heads.load(tmp_path / "h")
    again, _ = heads.load(tmp_path / "h", frozen=build_tail(spec, weights=None, feature="l0.tokens"))
    assert np.array_equal(heads.predict(again, X), heads.predict(head, X))


def test_wrong_tail_or_inputs_are_refused() -> None:
    tail = VitTail(_vit(), 1, proj=False)
    with pytest.raises(ValueError, match="entering block 2"):
        heads.build("tail_lora", frozen=tail, inputs=["l1.tokens"])
    with pytest.raises(ValueError, match="token feature"):
        heads.build("tail_lora", frozen=tail, inputs=["pooler"])
    with pytest.raises(ValueError, match="not one of the tail's"):
        heads.build("tail_lora", frozen=tail, inputs=["l0.tokens"], output="proj")
    with pytest.raises(ValueError, match="unknown LoRA target"):
        heads.build("tail_lora", frozen=tail, inputs=["l0.tokens"], targets=["w_o"])
    with pytest.raises(ValueError, match="takes no frozen"):
        heads.build("linear", frozen=tail, inputs=["pooler"], in_dim=4)


def _groups(n: int) -> dict[str, np.ndarray]:
    source = np.array(["real", "vae:a", "real", "sr:b"] * (n // 4))
    return {"source": source, "domain": np.array(["human", "human", "animal", "animal"] * (n // 4))}


EXPERT_1 = ("lora.experts.1.", "expert_heads.1.")


def test_sef_experts_train_apart_then_only_the_gate_and_classifier(data: dict) -> None:
    tail = VitTail(_vit(), 1, proj=False)
    tokens = {"l0.tokens": torch.randn(24, 17, 32).numpy()}
    y = np.array([0, 1, 0, 1] * 6)
    head = heads.build("tail_sef", frozen=tail, inputs=["l0.tokens"], rank=2, gate_hidden=8)
    snaps = {}

    def snap(stage: str) -> None:
        snaps[stage] = {k: v.clone() for k, v in head.state_dict().items()}

    hist = heads.fit(
        head, tokens, y, groups=_groups(24), cfg=heads.FitConfig(epochs=2, batch_size=6), on_stage_end=snap
    )
    assert [(s["name"], s["rows"]) for s in hist["stages"]] == [("expert:vae", 18), ("expert:sr", 18), ("fusion", 24)]
    changed = lambda a, b: {k for k in snaps[a] if not torch.equal(snaps[a][k], snaps[b][k])}  # noqa: E731
    assert changed("expert:vae", "expert:sr") == {k for k in snaps["expert:sr"] if k.startswith(EXPERT_1)}
    assert {k.split(".")[0] for k in changed("expert:sr", "fusion")} == {"gate", "classifier"}
    out = heads.explain(head, tokens)
    assert out["gates"].shape == (24, 2) and np.allclose(out["gates"].sum(1), 1)
    assert out["expert_names"] == ["vae", "sr"]


def test_moe_router_stage_manual_weights_and_orthogonality() -> None:
    tail = VitTail(_vit(), 1, proj=False)
    tokens = {"l0.tokens": torch.randn(24, 17, 32).numpy()}
    y = np.array([0, 1, 0, 1] * 6)
    head = heads.build("tail_moe", frozen=tail, inputs=["l0.tokens"], domains=["human", "animal"], top_k=1, rank=2)
    hist = heads.fit(head, tokens, y, groups=_groups(24), cfg=heads.FitConfig(epochs=1, batch_size=6))
    assert [s["name"] for s in hist["stages"]] == ["expert:human", "expert:animal", "expert:artifact", "router"]
    gates = heads.explain(head, tokens)["gates"]
    assert gates.shape == (24, 3) and np.all(gates[:, 2] == 1) and np.allclose(gates[:, :2].sum(1), 1)
    head.set_manual_weights({"animal": 0.5})
    assert np.all(heads.explain(head, tokens)["gates"][:, :2] == [0.0, 0.5])
    with pytest.raises(ValueError, match="unknown expert"):
        head.set_manual_weights({"anima": 1.0})
    # orthogonality of expert 1 to expert 0, computed by hand on one site
    lora = head.lora
    key = "b1_q"
    a0, a1 = lora.experts[0][key].A.detach(), lora.experts[1][key].A.detach()
    b0, b1 = lora.experts[0][key].B.detach(), lora.experts[1][key].B.detach()
    na = lambda a: a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)  # noqa: E731
    nb = lambda b: b / b.norm(dim=0, keepdim=True).clamp_min(1e-12)  # noqa: E731
    site = torch.linalg.norm(na(a0) @ na(a1).T) + torch.linalg.norm(nb(b0).T @ nb(b1))
    one_site = heads.build("tail_moe", frozen=tail, inputs=["l0.tokens"], domains=["x", "y"], top_k=1, rank=2,
                           targets=["q"])  # fmt: skip
    one_site.load_state_dict({**one_site.state_dict(), **{k: v for k, v in head.state_dict().items() if "b1_q" in k}})
    assert torch.allclose(orthogonality_loss(one_site.lora, 1, [0]), site, atol=1e-6)
    assert orthogonality_loss(one_site.lora, 0, []).item() == 0.0


@pytest.mark.parametrize("name", ["tail_lora", "tail_sef", "tail_moe"])
def test_learns_a_separable_token_set(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(32, generator=gen)
    n = 96
    y = np.array([0, 1] * (n // 2))
    tokens = torch.randn(2 * n, 17, 32, generator=gen)
    labels = np.concatenate([y, y])
    tokens[labels == 1] += 0.8 * direction  # fakes: every token moved along one direction
    X = {"l0.tokens": tokens[:n].numpy()}
    tail = VitTail(_vit(), 1, proj=False)
    extra = {"domains": ["human", "animal"], "top_k": 1, "dropout": 0.0} if name == "tail_moe" else {}
    head = heads.build(name, frozen=tail, inputs=["l0.tokens"], rank=4, **extra)
    heads.fit(head, X, y, groups=_groups(n), cfg=heads.FitConfig(epochs=8, batch_size=16, lr=3e-3))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, heads.predict(head, {"l0.tokens": tokens[n:].numpy()})) > 0.9


def test_gapl_mapping_prototypes_are_pca_of_stage1_embeddings() -> None:
    from sklearn.decomposition import PCA

    tail = VitTail(_vit(), 1, proj=False)
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(40, 17, 32, generator=gen)
    y = np.array([0, 1] * 20)
    head = heads.build(
        "tail_lora", frozen=tail, inputs=["l0.tokens"], mapping="prototype", targets=["qkv"],
        embed_dim=8, per_class=3, num_heads=2,
    )  # fmt: skip
    snaps = {}
    hist = heads.fit(
        head, {"l0.tokens": tokens.numpy()}, y, cfg=heads.FitConfig(epochs=2, batch_size=8),
        on_stage_end=lambda name: snaps.setdefault(name, head.mapping.proj.weight.detach().clone()),
    )  # fmt: skip
    assert [s["name"] for s in hist["stages"]] == ["stage1", "stage2"]
    assert not any(n.startswith("lora") for n in hist["stages"][0]["trainable"])
    assert any(n.startswith("lora") for n in hist["stages"][1]["trainable"])
    with torch.no_grad():
        emb = F.normalize(tail(tokens)["pooler"] @ snaps["stage1"].T, dim=-1).numpy()
    for c, rows in enumerate((slice(0, 3), slice(3, 6))):
        axes = PCA(n_components=3, svd_solver="full").fit(emb[y == c]).components_
        got = head.mapping.prototypes[rows].numpy()
        # same axes up to sign
        assert np.allclose(np.abs((axes * got).sum(1)), 1.0, atol=1e-4)
