"""Neuron selection (Luo et al., AAAI 2016; METHODS.md §1, §7c): selection and the loss."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import f_oneway

from facekd.engine.distiller import Distiller
from facekd.losses.neuron_selection import NeuronSelectionLoss, neuron_selection_loss
from facekd.models import build_backbone
from facekd.selection import (
    CELEBA_ATTRIBUTES,
    DEFAULT_IA,
    DEFAULT_NA,
    NeuronSelection,
    read_attribute_file,
    select_neurons,
    validate_split,
)
from facekd.selection.solver import descent_guaranteed, mean_field, solve_k
from facekd.selection.statistics import identity_scores, threshold_balanced_accuracy
from facekd.teachers.cache import build_teacher_cache
from facekd.teachers.select_neurons import run_selection
from facekd.types import Batch, ModelOutput


def planted(signed=False, n=3000, d=512, seed=0):
    """100 IA-selective, 100 NA-selective, 50 dead neurons, the rest noise (METHODS §7c)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 40)) < rng.uniform(0.2, 0.6, 40)).astype(np.uint8)
    col = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
    perm = rng.permutation(d)
    ia, na, dead = perm[:100], perm[100:200], perm[200:250]
    a = rng.normal(0.0, 1.0, (n, d))
    for j, i in enumerate(ia):
        a[:, i] += 2.0 * labels[:, col[DEFAULT_IA[j % len(DEFAULT_IA)]]]
    for j, i in enumerate(na):
        a[:, i] += 2.0 * labels[:, col[DEFAULT_NA[j % len(DEFAULT_NA)]]]
    if signed:  # BN-like embedding: dead neurons barely move
        a[:, dead] = rng.normal(0.0, 1e-3, (n, dead.size))
    else:  # ReLU layer: live neurons mostly fire, dead ones never do
        a = np.maximum(a + 4.0, 0.0)
        a[:, dead] = 0.0
    return a, labels, set(ia), set(na), set(dead)


@pytest.fixture(scope="module")
def relu_case():
    a, labels, ia, na, dead = planted()
    return a, labels, ia, na, dead, select_neurons(a, k=100, attributes=labels)


@pytest.mark.parametrize("signed", [False, True])
def test_planted_ia_neurons_are_selected_and_dead_ones_never(signed, relu_case):
    a, labels, ia, na, dead, sel = relu_case if not signed else (*planted(True), None)
    sel = sel or select_neurons(a, k=100, attributes=labels)
    chosen = set(sel.indices.tolist())
    assert len(chosen & ia) >= 90 and not chosen & dead
    assert sel.mode == "attributes" and sel.hyper["signed"] is signed
    assert sel.s_na[list(na)].mean() > 2 * sel.s_na[list(ia)].mean()


def test_exact_k_by_bisection(relu_case):
    a, labels, _, _, dead = relu_case[:5]
    for k in (1, 37, 150, 190, 512):
        sel = select_neurons(a[:600, :256] if k < 512 else a[:600], k=k, attributes=labels[:600])
        assert sel.indices.size == k and np.all(np.diff(sel.indices) > 0)
        assert sel.diagnostics["exact_k"] and (sel.q > 0.5).sum() == k
    assert select_neurons(a[:600], attributes=labels[:600]).k == 422  # round(0.824 * 512)
    # the 50 dead neurons have identical energies: no b separates them, q and index decide
    sel = select_neurons(a[:600], k=511, attributes=labels[:600])
    assert sel.indices.size == 511 and not sel.diagnostics["exact_k"]
    assert set(range(512)) - set(sel.indices.tolist()) == {max(dead)}


def test_ties_are_broken_by_q_then_index():
    unary = np.array([1.0, 0.0, 0.0, 2.0, -1.0])  # neurons 1 and 2 cannot be separated by b
    res = solve_k(unary, np.zeros((5, 5)), 0.0, 2, 0.5, 100, 1e-9)
    assert res.indices.tolist() == [1, 4] and not res.exact


def test_free_energy_never_increases_under_the_damping_bound(relu_case):
    fe = np.array(relu_case[-1].diagnostics["free_energy"])
    assert relu_case[-1].diagnostics["descent_guaranteed"]
    assert len(fe) > 2 and np.all(np.diff(fe) <= 1e-9 * np.abs(fe[:-1]))
    rng = np.random.default_rng(1)  # a strongly coupled case still inside the proven bound
    w = np.abs(np.corrcoef(rng.normal(size=(40, 200)) + rng.normal(size=(1, 200))))
    np.fill_diagonal(w, 0.0)
    lam = 11.5 / w.sum(1).max()
    assert descent_guaranteed(w, lam, 0.5)
    fe = mean_field(rng.normal(size=40), w, lam, 0.5, 300, 1e-12, track=True).free_energy
    assert np.all(np.diff(fe) <= 1e-9)
    # not vacuous: undamped sweeps outside the bound oscillate and the free energy goes up
    w2 = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert not descent_guaranteed(w2, 20.0, 1.0)
    fe = mean_field(np.array([-10.0, -9.0]), w2, 20.0, 1.0, 10, 1e-12, track=True).free_energy
    assert np.max(np.diff(fe)) > 0.5


def test_fixed_seed_gives_identical_results(relu_case):
    a, labels = relu_case[:2]
    one, two = (select_neurons(a[:800], k=50, attributes=labels[:800], seed=3) for _ in "ab")
    for name in ("indices", "q", "s_ia", "s_na", "rho"):
        assert np.array_equal(getattr(one, name), getattr(two, name))
    assert one.data_hash == two.data_hash and one.bias == two.bias
    other = select_neurons(a[:800], k=50, attributes=labels[:800], seed=4)
    assert not np.array_equal(one.s_ia, other.s_ia)  # the seed picks the held-out split


def test_identity_fallback_reproduces_the_planted_split():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(200), 10)  # 200 identities x 10 images
    n, d = ids.size, 512
    perm = rng.permutation(d)
    idn, nui, dead, weak = perm[:100], perm[100:200], perm[200:250], perm[250:]
    a = rng.normal(0.0, 1.0, (n, d))
    a[:, idn] += 2.0 * rng.normal(size=(200, 100))[ids]  # identity-driven
    a[:, nui] += 2.0 * rng.normal(size=(n, 5)) @ rng.normal(size=(5, 100))  # nuisance-driven
    a[:, weak] += 0.3 * rng.normal(size=(200, weak.size))[ids]  # weak identity signal
    a = np.maximum(a + 6.0, 0.0)
    a[:, dead] = 0.0
    sel = select_neurons(a, k=100, identity_labels=ids)
    chosen = set(sel.indices.tolist())
    assert sel.mode == "identity_fallback"
    assert len(chosen & set(idn)) >= 90 and not chosen & (set(dead) | set(nui))
    assert sel.s_ia[idn].min() > sel.s_ia[nui].max()
    assert sel.s_na[nui].min() > sel.s_na[idn].max()
    groups = [a[ids == g, idn[0]] for g in range(200)]
    assert identity_scores(a, ids)["f"][idn[0]] == pytest.approx(f_oneway(*groups).statistic)


def test_threshold_classifier_matches_brute_force():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(30, 4)), 1)  # rounding makes ties
    x[:, 3] = 1.0  # a constant neuron scores exactly chance
    y = rng.random((30, 2)) < 0.4
    y[:2], y[20:22] = True, False
    got = threshold_balanced_accuracy(x[:20], y[:20], x[20:], y[20:])

    def bal(pred, yy):
        return 0.5 * (pred[yy].mean() + (~pred[~yy]).mean())

    for i, k in itertools.product(range(4), range(2)):
        cuts = np.concatenate([[-np.inf], np.unique(x[:20, i]), [np.inf]])
        ts = [(lo + hi) / 2 if np.isfinite(lo + hi) else lo for lo, hi in itertools.pairwise(cuts)]
        best = max(ts, key=lambda t: abs(bal(x[:20, i] > t, y[:20, k]) - 0.5))
        up = bal(x[:20, i] > best, y[:20, k]) >= 0.5
        assert got[k, i] == pytest.approx(bal((x[20:, i] > best) == up, y[20:, k]))
    assert np.all(got[:, 3] == 0.5)


def _loss_inputs():
    teacher = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (B=2, D=3)
    student = torch.tensor([[2.0, 1.0, 2.0], [6.0, 4.0, 7.0]])  # (B=2, K=3)
    return student, teacher, torch.tensor([2, 0, 1])  # targets [[3,1,2],[6,4,5]]


def test_loss_hand_computed_values():
    s, t, idx = _loss_inputs()  # residuals [-1,0,0], [0,0,2]: sum of squares 5
    assert neuron_selection_loss(s, t, idx).item() == pytest.approx(5 / 4)  # 1/(2B)
    assert neuron_selection_loss(s, t, idx, "mse").item() == pytest.approx(5 / 6)  # 1/(BK)
    cos = [(6 + 1 + 4) / (3 * 14**0.5), (36 + 16 + 35) / (77**0.5 * 101**0.5)]
    got = neuron_selection_loss(s, t, idx, "cosine").item()
    assert got == pytest.approx(1 - sum(cos) / 2)
    assert neuron_selection_loss(t[:, [2, 0, 1]], t, idx).item() == 0.0
    with pytest.raises(ValueError, match="unknown"):
        neuron_selection_loss(s, t, idx, "l1")


def _out(x):
    return ModelOutput(embedding=x)


def _batch(b):
    return Batch(images=torch.zeros(b, 3, 4, 4), labels=torch.zeros(b, dtype=torch.long))


def test_loss_module_zero_gradients_and_buffers():
    s, t, idx = _loss_inputs()
    assert NeuronSelectionLoss(indices=idx).student_kwargs() == {"num_features": 3}  # the paper
    loss = NeuronSelectionLoss(indices=idx, adapter=True)  # [OURS] opt-in
    assert loss.student_kwargs() == {}
    loss.build(_out(s), _out(t))
    assert loss.adapter is None
    assert loss(_out(t[:, idx]), _out(t), _batch(2)).item() == 0.0
    student = torch.randn(2, 8, requires_grad=True)  # D_s = 8 != K = 3: adapter
    teacher = t.clone().requires_grad_(True)
    loss.build(_out(student.detach()), _out(teacher.detach()))
    assert loss.adapter.weight.shape == (3, 8)
    loss(_out(student), _out(teacher), _batch(2)).backward()
    assert student.grad is not None and loss.adapter.weight.grad is not None
    assert teacher.grad is None
    state = loss.state_dict()
    assert state["indices"].tolist() == [2, 0, 1] and state["k"].item() == 3
    other = NeuronSelectionLoss(indices=[0, 1, 2], adapter=True)
    other.build(_out(student.detach()), _out(teacher.detach()))
    other.load_state_dict(state)
    assert other.indices.tolist() == [2, 0, 1]


def test_loss_validation():
    s, t, _ = _loss_inputs()
    with pytest.raises(ValueError, match="exactly one"):
        NeuronSelectionLoss()
    with pytest.raises(ValueError, match="unique"):
        NeuronSelectionLoss(indices=[1, 1])
    with pytest.raises(ValueError, match="does not exist"):
        NeuronSelectionLoss(indices=[0, 5, 1]).build(_out(s), _out(t))
    with pytest.raises(ValueError, match="num_features=2"):
        NeuronSelectionLoss(indices=[0, 2]).build(_out(s), _out(t))  # the default: no adapter
    with pytest.raises(ValueError, match="num_features=2"):
        NeuronSelectionLoss(indices=[0, 2])(_out(s), _out(t), _batch(2))


def test_json_round_trip_and_loss_from_file(tmp_path, relu_case):
    sel = relu_case[-1]
    sel.to_json(tmp_path / "sel.json")
    back = NeuronSelection.from_json(tmp_path / "sel.json")
    for name, value in sel.__dict__.items():
        same = np.array_equal if isinstance(value, np.ndarray) else (lambda x, y: x == y)
        assert same(value, getattr(back, name)), name
    loss = NeuronSelectionLoss(selection=tmp_path / "sel.json")
    assert loss.indices.tolist() == sel.indices.tolist()
    with pytest.raises(ValueError, match="512-d teacher"):
        loss.build(_out(torch.zeros(2, 100)), _out(torch.zeros(2, 256)))


def test_attribute_file_readers(tmp_path):
    names = list(CELEBA_ATTRIBUTES)
    rows = [f"{i:06d}.jpg " + " ".join("1" if (i + j) % 3 == 0 else "-1" for j in range(40))
            for i in (1, 2, 3)]  # fmt: skip
    (tmp_path / "celeba.txt").write_text("3\n" + " ".join(names) + " \n" + "\n".join(rows))
    got_names, labels, keys = read_attribute_file(tmp_path / "celeba.txt")
    assert got_names == names and keys == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert labels.dtype == np.uint8 and labels[0, :4].tolist() == [0, 0, 1, 0]
    _, aligned, _ = read_attribute_file(tmp_path / "celeba.txt", ["7/000003.jpg", "000001.jpg"])
    assert np.array_equal(aligned, labels[[2, 0]])
    (tmp_path / "a.csv").write_text("image,Male,Smiling\nx/a.png,1,0\nx/b.png,0,1\n")
    (tmp_path / "b.csv").write_text("image,Male,Smiling\nx/a.png,1,-1\nx/b.png,-1,1\n")
    for f in ("a.csv", "b.csv"):
        got = read_attribute_file(tmp_path / f, ["x/b.png"])
        assert got[0] == ["Male", "Smiling"] and got[1].tolist() == [[0, 1]]
    (tmp_path / "c.csv").write_text("image,Male\na,1\nb,0\nc,-1\n")
    for bad, match in (("c.csv", "one convention"), ("a.csv", "no attribute row")):
        with pytest.raises(ValueError, match=match):
            read_attribute_file(tmp_path / bad, ["nope.png"] if bad == "a.csv" else None)


def test_invalid_names_and_arguments_raise(relu_case):
    with pytest.raises(ValueError, match="not CelebA"):
        validate_split(["Male", "Has_Wings"], None)
    with pytest.raises(ValueError, match="overlap"):
        validate_split(["Male", "Smiling"], ["Smiling"])
    a, labels = relu_case[0][:100], relu_case[1][:100]
    with pytest.raises(ValueError, match="not among"):
        select_neurons(a, attributes=labels[:, :2], attribute_names=["Male", "Young"],
                       ia_names=["Male", "Bald"])  # fmt: skip
    bad = [{"k": 0}, {"k": 513}, {"damping": 0.0}, {"mode": "paper"}, {"holdout": 1.0}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            select_neurons(a, attributes=labels, **kwargs)
    with pytest.raises(ValueError, match="identity_labels"):
        select_neurons(a, mode="identity_fallback")


class Faces(torch.utils.data.Dataset):
    def __init__(self, n=24, size=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.labels = np.arange(n) // 4  # 6 identities x 4 images
        self.keys = [f"{i // 4}/{i:03d}.jpg" for i in range(n)]

    def __len__(self):
        return len(self.x)

    def image_keys(self):
        return self.keys

    def __getitem__(self, i):
        return {"image": self.x[i], "label": int(self.labels[i]), "index": i}


def test_run_selection_feeds_the_distiller(tmp_path):
    torch.manual_seed(0)
    teacher = build_backbone("iresnet18", width=0.125, input_size=32, num_features=32).eval()
    data = Faces()
    sel = run_selection(teacher, data, tmp_path / "fallback.json", k=8, batch_size=5)
    cache = build_teacher_cache(teacher, data, tmp_path / "c", "p", dtype="float32",
                                progress=False)  # fmt: skip
    cached = run_selection(None, data, tmp_path / "cached.json", teacher_cache=cache, k=8)
    assert sel.mode == "identity_fallback" and np.array_equal(sel.indices, cached.indices)
    rng = np.random.default_rng(0)
    csv = "image,Male,Smiling\n" + "".join(
        f"{i:03d}.jpg,{int(rng.random() < 0.5)},{int(rng.random() < 0.5)}\n" for i in range(24)
    )
    (tmp_path / "attr.csv").write_text(csv)
    attr = run_selection(
        teacher, data, tmp_path / "attr.json", attribute_file=tmp_path / "attr.csv"
    )
    assert attr.mode == "attributes" and attr.ia_names == ["Male"] and attr.k == 26
    student = build_backbone("mobilefacenet", width=0.25, input_size=32, num_features=8)
    loss = NeuronSelectionLoss(selection=tmp_path / "fallback.json")
    distiller = Distiller(student, losses={"neuron_selection": loss}, teacher=teacher)
    batch = Batch(images=data.x[:4], labels=torch.tensor(data.labels[:4]))
    distiller.prepare(batch)
    out = distiller(batch)
    assert loss.adapter is None and torch.isfinite(out["kd/neuron_selection"])
    out["loss"].backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    assert NeuronSelection.from_json(tmp_path / "cached.json").meta["teacher_cache"]
