"""GAPL prototype head: released tensors, an independent attention computation, PCA prototypes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from aigi import heads
from tests.conftest import shared_path
from tests.heads.synth import make_set


def _released():
    gapl = shared_path("gapl")
    return gapl / "stage1.pt", gapl / "pca_3type_num64.pt"


def test_released_tensors_load_into_the_head() -> None:
    stage1, protos = _released()
    head = heads.gapl_prototype(stage1, protos)
    w = torch.load(stage1, weights_only=True, map_location="cpu")
    p = torch.load(protos, weights_only=True, map_location="cpu")
    assert head.cfg.inputs == ("pooler",) and head.cfg.in_dim == 1024 and head.prototypes.shape == (64, 128)
    assert torch.equal(head.proj.weight, w) and torch.equal(head.prototypes, p)
    torch.testing.assert_close(p.norm(dim=1), torch.ones(64))


def test_forward_equals_independent_multihead_attention() -> None:
    stage1, protos = _released()
    head = heads.gapl_prototype(stage1, protos)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in (*head.attn.parameters(), head.fc.weight):
            p.normal_(0, 0.1)
    x = torch.randn(7, 1024)
    with torch.no_grad():
        got = head({"pooler": x})
        w = torch.load(stage1, weights_only=True, map_location="cpu")
        kv = torch.load(protos, weights_only=True, map_location="cpu")
        q = F.normalize(x @ w.T, dim=1)
        # (1) torch's MultiheadAttention, sequence-first layout, weights copied
        mha = torch.nn.MultiheadAttention(128, 4)
        mha.load_state_dict(head.attn.state_dict())
        out, _ = mha(q.unsqueeze(0), kv.unsqueeze(1).expand(-1, 7, -1), kv.unsqueeze(1).expand(-1, 7, -1))
        ref1 = out.squeeze(0) @ head.fc.weight.T
        # (2) the same attention written out per head
        wq, wk, wv = head.attn.in_proj_weight.chunk(3)
        bq, bk, bv = head.attn.in_proj_bias.chunk(3)
        qh = (q @ wq.T + bq).view(7, 4, 32)
        kh = (kv @ wk.T + bk).view(64, 4, 32)
        vh = (kv @ wv.T + bv).view(64, 4, 32)
        att = torch.softmax(torch.einsum("nhd,phd->nhp", qh, kh) / 32**0.5, dim=-1)
        heads_out = torch.einsum("nhp,phd->nhd", att, vh).reshape(7, 128)
        ref2 = (heads_out @ head.attn.out_proj.weight.T + head.attn.out_proj.bias) @ head.fc.weight.T
    torch.testing.assert_close(got, ref1.squeeze(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, ref2.squeeze(-1), rtol=1e-5, atol=1e-6)


def test_imported_head_trains_stage2_only_and_keeps_prototypes() -> None:
    stage1, protos = _released()
    head = heads.gapl_prototype(stage1, protos, feature="f")
    before = head.prototypes.clone()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 1024)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    hist = heads.fit(head, {"f": X}, y, cfg=heads.FitConfig(epochs=1, batch_size=50))
    assert [s["name"] for s in hist["stages"]] == ["stage2"]
    assert torch.equal(head.prototypes, before)


def test_pca_prototypes_are_orthonormal_per_class_and_match_sklearn() -> None:
    data = make_set(500, seed=5)
    head = heads.build("prototype", inputs="a", in_dim=16, embed_dim=8, per_class=4, num_heads=2)
    proj_after_stage1 = {}

    def snap(name: str) -> None:
        if name == "stage1":
            proj_after_stage1["w"] = head.proj.weight.detach().clone()

    heads.fit(head, data["X"], data["y"], cfg=heads.FitConfig(epochs=3, batch_size=64), on_stage_end=snap)
    protos = head.prototypes.numpy()
    for block in (protos[:4], protos[4:]):
        np.testing.assert_allclose(block @ block.T, np.eye(4), atol=1e-5)
    emb = F.normalize(torch.from_numpy(data["X"]["a"]) @ proj_after_stage1["w"].T, dim=1).numpy()
    real = PCA(n_components=4).fit(emb[data["y"] == 0]).components_
    fake = PCA(n_components=4).fit(emb[data["y"] == 1]).components_
    np.testing.assert_allclose(np.abs(protos), np.abs(np.concatenate([real, fake])), atol=1e-5)


def _gapl_prototypes(emb: np.ndarray, y: np.ndarray, per_class: int) -> torch.Tensor:
    """GAPL's prototype script: sklearn PCA(n_components) per class (default solver) on the float32 embeddings,
    components as float32 tensors, real then fake, rows L2-normalised with torch."""
    parts = [
        torch.tensor(PCA(n_components=per_class).fit(emb[y == c]).components_, dtype=torch.float32) for c in (0, 1)
    ]
    return F.normalize(torch.tensor(np.concatenate(parts, axis=0)), dim=1)


def test_pca_prototypes_equal_gapls_computation() -> None:
    from aigi.heads.prototype import pca_prototypes

    rng = np.random.default_rng(1)
    emb = F.normalize(
        torch.from_numpy(
            rng.standard_normal((3000, 128)).astype(np.float32) * np.linspace(0.2, 3, 128).astype(np.float32)
        ),
        dim=1,
    ).numpy()
    y = (rng.random(3000) < 0.5).astype(int)
    got = torch.from_numpy(pca_prototypes(emb, y, 32))
    assert torch.equal(got, _gapl_prototypes(emb, y, 32))


def test_attention_is_called_as_gapl_calls_it() -> None:
    """GAPL calls `cross_attention(query=, key=, value=)` with torch's defaults (need_weights=True, whose math path
    rounds differently from the fused one); the head must give GAPL's numbers exactly."""
    head = heads.build("prototype", inputs="f", in_dim=48, embed_dim=128, per_class=32, num_heads=4).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (*head.parameters(), head.prototypes):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        x = torch.randn(16, 48, generator=g)
        e = F.normalize(head.proj(x), dim=1)
        pro = head.prototypes.unsqueeze(0).expand(16, -1, -1)
        out, _ = head.attn(query=e.unsqueeze(1), key=pro, value=pro)
        expected = head.fc(out.squeeze(1)).squeeze(-1)
        assert torch.equal(head({"f": x}), expected)


def _random_head(in_dim: int = 48) -> heads.PrototypeHead:
    head = heads.build("prototype", inputs="f", in_dim=in_dim, embed_dim=128, per_class=32, num_heads=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in (*head.parameters(), head.prototypes):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return head


def _gapl_attend(head, e: torch.Tensor) -> torch.Tensor:
    pro = head.prototypes.unsqueeze(0).expand(len(e), -1, -1)
    return head.attn(query=e.unsqueeze(1), key=pro, value=pro)[0].squeeze(1)


def test_scoring_is_gapls_call_bit_for_bit_at_any_row_count() -> None:
    head = _random_head().eval()
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for n in (1, 5, 128, 3000):
                e = F.normalize(torch.randn(n, 128, generator=torch.Generator().manual_seed(n)), dim=1)
                with torch.no_grad():
                    assert torch.equal(head.attend(e), _gapl_attend(head, e)), (n_threads, n)
    finally:
        torch.set_num_threads(threads)


def test_training_attention_has_gapls_values_and_gradients() -> None:
    head = _random_head().train()
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    grads = []
    for attend in (head.attend, lambda e: _gapl_attend(head, e)):
        head.zero_grad()
        out = head.fc(attend(F.normalize(head.proj(x), dim=1)))
        (out.square().sum()).backward()
        grads.append((out.detach(), {k: p.grad.clone() for k, p in head.named_parameters() if p.grad is not None}))
    (fast, g_fast), (ref, g_ref) = grads
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    assert g_fast.keys() == g_ref.keys() and {"proj.weight", "attn.in_proj_weight", "fc.weight"} <= g_fast.keys()
    for k in g_ref:  # float32 sums over the 64 rows x 64 prototypes in another order: relative to the norm
        assert float((g_fast[k] - g_ref[k]).norm() / g_ref[k].norm()) < 1e-5, k


def test_moments_are_merged_only_when_the_embeddings_pass_the_exact_pca_cap(monkeypatch) -> None:
    import aigi.heads.prototype as proto

    data = make_set(600, seed=2)
    added = []
    real_add = proto.ClassMoments.add
    monkeypatch.setattr(proto.ClassMoments, "add", lambda self, e, y: added.append(len(e)) or real_add(self, e, y))
    cfg = heads.FitConfig(epochs=1, batch_size=64, eval_batch_size=100)
    exact = heads.build("prototype", inputs="a", in_dim=16, embed_dim=8, per_class=4, num_heads=2)
    heads.fit(exact, data["X"], data["y"], cfg=cfg)
    assert added == []  # 600 embeddings fit the cap: GAPL's exact PCA, no moments
    monkeypatch.setattr(proto, "EXACT_PCA_BYTES", 250 * 8 * 4)  # passed at the third batch of 100 rows
    head = heads.build("prototype", inputs="a", in_dim=16, embed_dim=8, per_class=4, num_heads=2)
    stage1 = {}
    snap = lambda name: stage1.setdefault("w", head.proj.weight.detach().clone())  # noqa: E731
    heads.fit(head, data["X"], data["y"], cfg=cfg, on_stage_end=snap)
    assert added == [100] * 6  # every batch once, in order
    emb = F.normalize(torch.from_numpy(data["X"]["a"]) @ stage1["w"].T, dim=1).numpy()
    for c, block in enumerate((head.prototypes[:4].numpy(), head.prototypes[4:].numpy())):
        want = PCA(n_components=4, svd_solver="full").fit(emb[data["y"] == c]).components_
        np.testing.assert_allclose(np.abs(block), np.abs(want), atol=1e-5)
