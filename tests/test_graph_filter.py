"""The training-free graph filters (GF-CF, ChebyCF, BSPM) against their dense formulas, and their rows."""

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from recsys.data.dataset import load_dataset
from recsys.errors import InputError
from recsys.evaluation.evaluate import evaluate_split
from recsys.evaluation.filters import bspm, chebycf, gfcf
from recsys.evaluation.filters.spectral import ItemGraph, top_right_singular_vectors
from recsys.evaluation.filters.terms import FilterScorer
from recsys.evaluation.filters.tuning import FAMILIES, FilterConfig, build_graph, select
from recsys.evaluation.ranking import full_ranking

REPO_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "interactions.csv"
NUM_USERS, NUM_ITEMS = 60, 45


@pytest.fixture(scope="module")
def graph_data() -> dict[str, np.ndarray]:
    """A random 60 x 45 interaction matrix (item 44 never seen), and its dense item-item operator."""
    rng = np.random.default_rng(0)
    r = (rng.random((NUM_USERS, NUM_ITEMS)) < 0.15).astype(np.float64)
    r[np.arange(NUM_USERS), rng.integers(0, NUM_ITEMS - 1, NUM_USERS)] = 1.0  # every user has an item
    r[:, -1] = 0.0
    du, di = r.sum(1), r.sum(0)
    with np.errstate(divide="ignore"):
        inv_u, inv_i = np.where(du > 0, du**-0.5, 0.0), np.where(di > 0, di**-0.5, 0.0)
    norm = inv_u[:, None] * r * inv_i[None, :]
    p = norm.T @ norm
    eigenvalues, vectors = np.linalg.eigh(p)
    order = np.argsort(eigenvalues)[::-1]
    return {"r": r, "di": di, "p": p, "eigenvalues": eigenvalues[order], "vectors": vectors[:, order]}


def _graph(data: dict[str, np.ndarray], rank: int = NUM_ITEMS) -> ItemGraph:
    pairs = torch.from_numpy(np.stack(np.nonzero(data["r"]))).long()
    return ItemGraph(pairs, NUM_USERS, NUM_ITEMS, rank=rank)


def _scores(graph: ItemGraph, terms, users: np.ndarray) -> np.ndarray:
    out = torch.empty(users.size, NUM_ITEMS)
    FilterScorer(graph, terms)(torch.from_numpy(users), out)
    return out.numpy().astype(np.float64)


def _power(di: np.ndarray, exponent: float) -> np.ndarray:
    return np.where(di > 0, np.where(di > 0, di, 1.0) ** exponent, 0.0)


def _ideal(data: dict[str, np.ndarray], eta: int) -> np.ndarray:
    """``V_eta V_eta^T`` from the dense eigendecomposition."""
    v = data["vectors"][:, :eta]
    return v @ v.T


USERS = np.array([0, 3, 17, 42, 59])


def test_the_basis_is_the_eigendecomposition_of_the_item_graph(graph_data) -> None:
    graph = _graph(graph_data)
    assert graph.complete and graph.rank == NUM_ITEMS
    np.testing.assert_allclose(graph.eigenvalues, np.clip(graph_data["eigenvalues"], 0, 1), atol=1e-5)
    v = graph.basis.astype(np.float64)
    np.testing.assert_allclose(v @ np.diag(graph.eigenvalues) @ v.T, graph_data["p"], atol=1e-5)
    np.testing.assert_allclose(graph.item_item.toarray(), graph_data["p"], atol=1e-6)


def test_gfcf_is_its_dense_formula(graph_data) -> None:
    graph = _graph(graph_data)
    settings = gfcf.Settings(ideal_rank=6, ideal_weight=0.3, tilt=0.2)
    r, di = graph_data["r"][USERS], graph_data["di"]
    ideal = (r * _power(di, -0.5)) @ _ideal(graph_data, 6) * _power(di, 0.5)
    expected = (r @ graph_data["p"] + 0.3 * ideal) * _power(di, 0.2)
    np.testing.assert_allclose(_scores(graph, gfcf.terms(graph, settings), USERS), expected, atol=2e-5)


def _chebyshev_naive(data: dict[str, np.ndarray], settings: chebycf.Settings) -> np.ndarray:
    """ChebyCF by its recurrence on the dense rescaled Laplacian, coefficients from the nodes by hand."""
    k, phi = settings.order, settings.flatness
    nodes = [math.cos((2 * k + 1 - 2 * j) * math.pi / (2 * k + 2)) for j in range(k + 1)]
    extrema = [math.cos((k - j) * math.pi / k) for j in range(k + 1)]
    target = [0.5 - 0.5 * math.copysign(abs(x) ** phi, x) for x in extrema]
    coeffs = []
    for order in range(k + 1):
        c = sum(t * math.cos(order * math.acos(x)) for t, x in zip(target, nodes, strict=True))
        coeffs.append(c * 2 / (k + 1) / (2 if order == 0 else 1))
    laplacian = np.eye(NUM_ITEMS) - 2 * data["p"]
    x = data["r"][USERS] * _power(data["di"], -settings.degree_exponent)
    previous, current = x, x @ laplacian
    out = coeffs[0] * previous + coeffs[1] * current
    for order in range(2, k + 1):
        previous, current = current, 2 * current @ laplacian - previous
        out += coeffs[order] * current
    out += settings.ideal_weight * x @ _ideal(data, settings.ideal_rank)
    return out * _power(data["di"], settings.degree_exponent)


def test_chebycf_is_its_chebyshev_recurrence(graph_data) -> None:
    graph = _graph(graph_data)
    other = chebycf.Settings(order=5, flatness=3.0, ideal_rank=7, degree_exponent=0.0)
    for settings in (replace(chebycf.PAPER, ideal_rank=7), other):
        expected = _chebyshev_naive(graph_data, settings)
        np.testing.assert_allclose(_scores(graph, chebycf.terms(graph, settings), USERS), expected, atol=2e-5)
    # The plateau on P's eigenvalues: 0 at the highest frequency (0), 1 at the lowest (1), a half between.
    np.testing.assert_allclose(chebycf.transfer(chebycf.PAPER)[[0, 5, 10]], [0.0, 0.5, 1.0], atol=0.01)


def _bspm_naive(data: dict[str, np.ndarray], settings: bspm.Settings) -> np.ndarray:
    """BSPM-EM by stepping its ODEs on the dense operator: Euler blurring, RK4 sharpening."""
    p, r, di = data["p"], data["r"][USERS], data["di"]
    tau = settings.blur_time / settings.blur_steps
    s = r.copy()
    for _ in range(settings.blur_steps):  # ds/dt = s (P - I)
        s = s + tau * (s @ p - s)
    s = s + settings.ideal_weight * (r * _power(di, -0.5)) @ _ideal(data, settings.ideal_rank) * _power(
        di, 0.5
    )
    tau = settings.sharpen_time / settings.sharpen_steps
    for _ in range(settings.sharpen_steps):  # ds/dt = -s P
        k1 = -s @ p
        k2 = -(s + tau / 2 * k1) @ p
        k3 = -(s + tau / 2 * k2) @ p
        k4 = -(s + tau * k3) @ p
        s = s + tau / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return s


def test_bspm_is_its_ode_steps(graph_data) -> None:
    graph = _graph(graph_data)
    for settings in (
        replace(bspm.PAPER, ideal_rank=6),
        bspm.Settings(blur_time=0.5, blur_steps=2, sharpen_time=1.5, sharpen_steps=3, ideal_rank=5),
    ):
        expected = _bspm_naive(graph_data, settings)
        for compact in (False, True):
            scores = _scores(graph, bspm.terms(graph, settings, compact=compact), USERS)
            np.testing.assert_allclose(scores, expected, atol=5e-5)
    lam = np.linspace(0, 1, 5)  # the exact solver is the heat kernel
    exact = replace(bspm.PAPER, blur_solver="exact", sharpen_solver="exact")
    np.testing.assert_allclose(bspm.blur(exact, lam) * bspm.sharpen(exact, lam), np.exp(lam - 1 - 2.5 * lam))


def test_a_truncated_basis_errs_by_at_most_the_chord_bound(graph_data) -> None:
    """With 12 of 45 eigenpairs, the chord on the rest: per user, |error| <= tail_error * |r D^-beta|."""
    full, truncated = _graph(graph_data), _graph(graph_data, rank=12)
    assert not truncated.complete and truncated.eigenvalues[-1] > 0
    settings = replace(chebycf.PAPER, ideal_rank=6, flatness=2.0)
    exact = _scores(full, chebycf.terms(full, settings), USERS)
    approx = _scores(truncated, chebycf.terms(truncated, settings), USERS)
    bound = chebycf.tail_error(truncated, settings)
    assert 0 < bound < 0.2
    pre, post = _power(graph_data["di"], -0.4), _power(graph_data["di"], 0.4)
    seen = graph_data["di"] > 0
    errors = np.linalg.norm((approx - exact)[:, seen] / post[seen], axis=1)
    norms = np.linalg.norm(graph_data["r"][USERS] * pre, axis=1)
    assert np.all(errors <= bound * norms + 1e-5)
    assert errors.max() > 0  # it does approximate
    # GF-CF's linear part is linear in P: exact with any basis.
    gf = gfcf.Settings(ideal_rank=6)
    np.testing.assert_allclose(
        _scores(truncated, gfcf.terms(truncated, gf), USERS),
        _scores(full, gfcf.terms(full, gf), USERS),
        atol=2e-5,
    )


def test_randomized_svd_finds_the_top_singular_subspace() -> None:
    rng = np.random.default_rng(0)
    left, _ = np.linalg.qr(rng.standard_normal((300, 60)))
    right, _ = np.linalg.qr(rng.standard_normal((200, 60)))
    spectrum = np.concatenate([np.linspace(1.0, 0.6, 8), np.linspace(0.3, 0.01, 52)])  # a gap after 8
    dense = (left * spectrum) @ right.T
    vt, sigma = top_right_singular_vectors(sp.csr_matrix(dense.astype(np.float32)), 8, oversampling=32)
    projection = vt.T @ vt
    exact = right[:, :8] @ right[:, :8].T
    assert np.abs(projection - exact).max() < 1e-4
    assert np.abs(vt @ vt.T - np.eye(8)).max() < 1e-4
    np.testing.assert_allclose(sigma, spectrum[:8], atol=1e-4)


def _dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "ds"
    spec = LogSpec("csv", time_col="timestamp", rating_col="rating")
    cfg = IngestConfig(
        out=out,
        spec=spec,
        input=REPO_SAMPLE,
        split="temporal",
        min_user_interactions=3,
        min_item_interactions=3,
    )
    return load_dataset(ingest(cfg).out)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The bundled sample log (1,000 users, 800 items, topic structure), ingested as the demo does."""
    return _dataset(tmp_path_factory)


SMALL = FilterConfig(
    rank=64,
    selection_users=400,
    candidates=60,
    gfcf=gfcf.grid(ideal_ranks=(32,), ideal_weights=(0.1, 1.0), tilts=(0.0, 0.2)),
    chebycf=chebycf.grid(
        flatness=(1.5, 4.0), ideal_ranks=(32,), ideal_weights=(0.2,), degree_exponents=(0.0, 0.4)
    ),
    bspm=bspm.grid(sharpen_times=(1.0, 2.5), ideal_weights=(0.2,), ideal_ranks=(32,)),
)


def _sampled(split: torch.Tensor, cfg: FilterConfig) -> torch.Tensor:
    """The pairs of the users the search samples (the same seeded draw)."""
    users = torch.unique(split[0])
    g = torch.Generator().manual_seed(cfg.seed)
    picked = users[torch.randperm(users.numel(), generator=g)[: cfg.selection_users]]
    return split[:, torch.isin(split[0], picked)]


def test_the_search_on_candidates_measures_what_full_ranking_does(sample) -> None:
    graph = build_graph(sample.train, sample.num_users, sample.num_items, SMALL)
    selection = select(graph, list(FAMILIES), sample.valid, sample.train, SMALL)
    assert selection.num_users == 400 and selection.candidates == 60
    truth = _sampled(sample.valid, SMALL)
    for name, choice in selection.choices.items():
        assert len(choice.grid) == len(SMALL.grid(name)) and choice.value == max(choice.grid.values())
        for settings in SMALL.grid(name):  # every point, scored over the whole catalogue
            scorer = FilterScorer(graph, FAMILIES[name].terms(graph, settings, compact=True))
            full = full_ranking(
                scorer,
                truth,
                num_users=sample.num_users,
                num_items=sample.num_items,
                exclude=sample.train,
                ks=(20,),
            )
            # Equal up to an item past the candidates or a tie ordered otherwise: a user or two of 400.
            assert full.metrics["recall@20"] == pytest.approx(choice.grid[settings.label()], abs=2 / 400), (
                name
            )
    best = selection.best()
    assert best.value == max(c.value for c in selection.choices.values())


def test_filter_rows_in_a_report(sample) -> None:
    rows = ("popular", "gf-cf", "chebycf", "bspm", "graph-filter")
    report = evaluate_split(sample, split="test", ks=(20,), baselines=rows, graph_filter=SMALL)
    got = {row.name: row for row in report.baselines}
    best = got["graph-filter"].details
    values = {name: got[name].details["selection_value"] for name in ("gf-cf", "chebycf", "bspm")}
    assert best["filter"] == max(values, key=lambda name: values[name])
    assert got["graph-filter"].metrics == got[best["filter"]].metrics  # the same filter, ranked again
    assert got["graph-filter"].metrics["recall@20"] > 2 * got["popular"].metrics["recall@20"]
    for name in ("gf-cf", "chebycf", "bspm", "graph-filter"):
        details = got[name].details
        assert details["selected_on"] == "valid" and details["applied_to"] == "train" and not details["refit"]
        assert got[name].seconds >= details["build_seconds"] + details["select_seconds"]
        assert details["summary"].startswith(f"{name}: {details['filter']} (")
        assert got[name].segments is not None
    assert set(best["filters"]) == {"gf-cf", "chebycf", "bspm"}


def test_filters_applied_to_train_and_valid(sample) -> None:
    one = FilterConfig(
        rank=64,
        selection_users=400,
        candidates=60,
        gfcf=(gfcf.Settings(ideal_rank=32),),
        chebycf=(),
        bspm=(),
    )
    refit = evaluate_split(
        sample, split="test", ks=(20,), baselines=("gf-cf",), graph_filter=one, filter_pairs="train+valid"
    )
    row = refit.baselines[0]
    assert row.details["applied_to"] == "train ∪ valid" and row.details["refit"]
    assert "applied to train ∪ valid" in row.details["description"] and row.details["refit_seconds"] > 0
    # The same filter fitted on train and valid by hand scores the same.
    pairs = torch.cat([sample.train, sample.valid], dim=1)
    graph = build_graph(pairs, sample.num_users, sample.num_items, one)
    scorer = FilterScorer(graph, gfcf.terms(graph, gfcf.Settings(ideal_rank=32)))
    expected = full_ranking(
        scorer, sample.test, num_users=sample.num_users, num_items=sample.num_items, exclude=pairs, ks=(20,)
    )
    assert row.metrics["recall@20"] == pytest.approx(expected.metrics["recall@20"], abs=1e-9)


def test_filter_pairs_are_checked(sample) -> None:
    with pytest.raises(InputError, match="unknown filter pairs 'all'"):
        evaluate_split(sample, baselines=("gf-cf",), filter_pairs="all")
    with pytest.raises(InputError, match="paper protocol fits the filters on train ∪ valid"):
        evaluate_split(sample, protocol="paper", baselines=("gf-cf",), filter_pairs="train")
    with pytest.raises(InputError, match="hold the evaluated split 'valid'"):
        evaluate_split(sample, split="valid", baselines=("gf-cf",), filter_pairs="train+valid")


@pytest.mark.slow
def test_graph_filter_on_gowalla_honest(gowalla_dir, tmp_path) -> None:
    """Test Recall@20 >= 0.186 under the honest protocol (train only, tuned on valid)."""
    cfg = IngestConfig(
        out=tmp_path / "gowalla",
        spec=LogSpec(format="lightgcn"),
        train=gowalla_dir / "train.txt",
        test=gowalla_dir / "test.txt",
        split="preset",
    )
    data = load_dataset(ingest(cfg).out)
    start = time.perf_counter()
    report = evaluate_split(data, split="test", ks=(20,), baselines=("graph-filter",))
    row = report.baselines[0]
    seconds = time.perf_counter() - start
    print(f"graph-filter: {row.metrics['recall@20']:.4f} / {row.metrics['ndcg@20']:.4f} in {seconds:.1f} s")
    print(row.details["summary"])
    assert row.metrics["recall@20"] >= 0.186
