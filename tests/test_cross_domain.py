"""Cross-domain data: domains on Interactions, the genre split on a hand fixture and on ML-100K, poisoning.

Hand fixture (`hand`): genres A, B, C; groups source = (A,), target = (B, C).
  items 0-9   first genre A (item 1 is {A, C}, item 3 {A, B}: still source)  -> source
  items 10-19 first genre B or C                                             -> target
  item 20     no genre                                                       -> no domain
  users 0-11  all 10 target items, 3 source items, even users also item 20   -> overlapping candidates
  users 12-14 target items only                                              -> target-only training users
  users 15-16 source items 0-4 only                                          -> source-only
  user 17     target items 10-12 and source item 0                           -> overlapping, too few target ratings
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

import transfer_meta as tm
from transfer_meta import baselines, stages
from transfer_meta.data import domains
from transfer_meta.data.cross_domain import COLD, SOURCE_SET, CrossDomainSplit, RowSets
from transfer_meta.data.examples import FeatureMatrices
from transfer_meta.data.interactions import DataError, FeatureTable, Interactions
from transfer_meta.data.movielens import cached_files, read_atomic
from transfer_meta.data.protocols import make_protocol
from transfer_meta.data.protocols.genre_split import SOURCE_GENRES, TARGET_GENRES
from transfer_meta.data.tasks import TaskData

GROUPS = dict(source_genres=("A",), target_genres=("B", "C"))
HAND_KW = dict(GROUPS, beta=0.5, valid_fraction=0.25, n_support=1, min_query=6, n_query=2, min_tasks=0)
POISON = 1000.0


def _genres(n_items: int) -> np.ndarray:
  g = np.zeros((n_items, 3), np.float32)
  g[:10, 0] = 1  # A
  g[1, 2] = g[3, 1] = 1  # item 1 {A, C}, item 3 {A, B}
  g[10:15, 1] = 1  # B
  g[15:20, 2] = 1  # C
  g[12, 2] = 1  # {B, C}
  return g


def _ratings() -> dict[int, list[int]]:
  r = {u: [*range(10, 20), u % 10, (u + 1) % 10, (u + 2) % 10] + ([20] if u % 2 == 0 else []) for u in range(12)}
  r.update({u: list(range(10, 20)) for u in (12, 13, 14)})
  r.update({u: list(range(5)) for u in (15, 16)})
  r[17] = [10, 11, 12, 0]
  return r


def make_hand(rating_of=None, scale=(1.0, 5.0)) -> Interactions:
  """The hand fixture; rating of (u, i) = 1 + (u + i) % 5 unless `rating_of(u, i, rating)` says otherwise."""
  pairs = [(u, i) for u, items in sorted(_ratings().items()) for i in items]
  user = np.array([p[0] for p in pairs], np.int32)
  item = np.array([p[1] for p in pairs], np.int32)
  rating = (1 + (user + item) % 5).astype(np.float32)
  if rating_of is not None:
    rating = np.array([rating_of(u, i, r) for u, i, r in zip(user, item, rating)], np.float32)
  n_items = 21
  return Interactions(
    name="hand",
    user=user,
    item=item,
    rating=rating,
    timestamp=np.arange(len(pairs), dtype=np.int64),
    user_features=FeatureTable(18),
    item_features=FeatureTable(n_items, multi_hot={"genre": _genres(n_items)}, vocab={"genre": ("A", "B", "C")}),
    user_raw_ids=np.arange(18).astype(object),
    item_raw_ids=np.arange(n_items).astype(object),
    rating_scale=scale,
  )


@pytest.fixture(scope="module")
def hand():
  return make_hand()


def test_interactions_domain_is_validated(hand):
  ok = domains.with_domains(hand, (hand.item >= 10).astype(np.int8), ("a", "b"))
  assert ok.domain.dtype == np.int8 and ok.domains == ("a", "b")
  assert hand.domain is None and hand.domains is None  # single domain by default
  n = len(hand)
  bad = [
    dict(domain=np.zeros(n, np.int8), domains=None),  # one without the other
    dict(domain=None, domains=("a", "b")),
    dict(domain=np.zeros(n, np.int32), domains=("a", "b")),  # dtype
    dict(domain=np.zeros(n - 1, np.int8), domains=("a", "b")),  # shape
    dict(domain=np.full(n, 2, np.int8), domains=("a", "b")),  # id outside the names
    dict(domain=np.zeros(n, np.int8), domains=("a", "a")),  # repeated name
    dict(domain=np.zeros(n, np.int8), domains=("a",)),  # one domain is no domain split
  ]
  for kw in bad:
    with pytest.raises(DataError, match="domain"):
      dataclasses.replace(hand, **kw)


def test_genre_domains_and_shared_maps_on_the_hand_fixture(hand):
  item_domain, first = domains.genre_domains(hand, (("A",), ("B", "C")))
  assert item_domain.tolist() == [0] * 10 + [1] * 10 + [-1]
  assert first.tolist() == [0] * 10 + [1] * 5 + [2] * 5 + [-1]
  row_domain = item_domain[hand.item]
  want_shared = [*range(12), 17]
  assert domains.shared(hand.user, row_domain, hand.n_users).tolist() == want_shared
  assert domains.shared(hand.item, row_domain, hand.n_items).tolist() == []  # items are in one domain each
  assert domains.counts_in(hand.user, row_domain, hand.n_users, 1).tolist() == [10] * 15 + [0, 0, 3]
  # Only the first genre counts: swapping the group of C moves no item with first genre A or B.
  swapped, _ = domains.genre_domains(hand, (("A", "C"), ("B",)))
  assert swapped.tolist() == [0] * 10 + [1] * 5 + [0] * 5 + [-1]
  with pytest.raises(ValueError, match="not in the 'genre' vocabulary"):
    domains.genre_domains(hand, (("A",), ("Z",)))
  with pytest.raises(ValueError, match="disjoint"):
    domains.genre_domains(hand, (("A", "B"), ("B",)))
  with pytest.raises(ValueError, match="non-empty"):
    domains.genre_domains(hand, (("A",), ()))
  with pytest.raises(DataError, match="no multi-hot item feature 'tags'"):
    domains.genre_domains(hand, (("A",), ("B",)), "tags")


def test_genre_split_sets_roles_and_history_on_the_hand_fixture(hand):
  split = make_protocol("genre_split", hand, seed=0, **HAND_KW)
  assert isinstance(split, CrossDomainSplit) and split.scenarios == (COLD,)
  assert split.row_domain.tolist() == [(0 if i < 10 else 1 if i < 20 else -1) for i in hand.item]
  assert split.shared_users.tolist() == [*range(12), 17] and split.shared_items.size == 0
  valid, cold, train = (split.roles[r].tolist() for r in ("valid", COLD, "train"))
  # 12 candidates (users 0-11): 3 valid, 6 cold, 3 training; user 17 (3 target ratings) is no candidate.
  assert len(valid) == 3 and len(cold) == 6 and set(valid + cold) < set(range(12))
  assert sorted(train) == sorted(set(range(12)) - set(valid + cold) | {17})
  assert split.params["users_candidates"] == 12 and split.excluded["candidates"]["fewer than 7 target ratings"] == 1
  assert sorted(split.tasks["valid"].task_ids.tolist()) == valid
  assert sorted(split.tasks[COLD].task_ids.tolist()) == cold
  # Training tasks: every non-held-out user with target ratings (users 12-14 and 17 included).
  assert split.tasks["train"].task_ids.tolist() == sorted(set(range(15)) - set(valid + cold) | {17})
  for name in ("valid", COLD):
    ts = split.tasks[name]
    assert ts.support_sizes().tolist() == [1] * len(ts) and ts.query_sizes().tolist() == [9] * len(ts)
    for t, u in enumerate(ts.task_ids):  # support + query = all the user's target rows, nothing else
      both = np.sort(np.concatenate([ts.support(t), ts.query(t)]))
      assert both.tolist() == np.flatnonzero((hand.user == u) & (hand.item >= 10) & (hand.item < 20)).tolist()
  assert np.intersect1d(split.target_train_rows(), np.flatnonzero(np.isin(hand.user, valid + cold))).size == 0
  assert split.source_rows.tolist() == np.flatnonzero(hand.item < 10).tolist()  # every source row, cold users' too
  assert split.tasks[SOURCE_SET].task_ids.tolist() == [*range(12), 15, 16]  # > n_query = 2 source ratings
  for name, ts in split.tasks.items():  # history = each task user's source rows, computed here independently
    hist = split.history[name]
    assert len(hist) == len(ts)
    for t, u in enumerate(ts.task_ids):
      assert hist.of(t).tolist() == np.flatnonzero((hand.user == u) & (hand.item < 10)).tolist()
  assert split.history["train"].of(int(np.flatnonzero(split.tasks["train"].task_ids == 12)[0])).size == 0


def test_zero_shot_beta_nesting_and_manifest_stability(hand):
  zero = make_protocol("genre_split", hand, seed=0, **{**HAND_KW, "n_support": 0})
  assert zero.tasks[COLD].support_sizes().tolist() == [0] * 6 and zero.tasks[COLD].query_sizes().tolist() == [10] * 6
  kw = {**HAND_KW, "valid_fraction": 0.1}
  by_beta = {b: make_protocol("genre_split", hand, seed=3, **{**kw, "beta": b}) for b in (0.2, 0.5, 0.8)}
  cold = {b: set(s.roles[COLD].tolist()) for b, s in by_beta.items()}
  assert [len(c) for c in cold.values()] == [2, 6, 10] and cold[0.2] <= cold[0.5] <= cold[0.8]
  assert len({tuple(s.roles["valid"].tolist()) for s in by_beta.values()}) == 1  # valid users do not move with β
  a, b = (make_protocol("genre_split", hand, seed=0, **HAND_KW).manifest for _ in range(2))
  assert a == b and a["cross_domain"]["roles"]["valid"] == a["sets"]["valid"]["task_ids"]
  assert a["cross_domain"]["rows"] == {"source genres": 47, "target genres": 153}  # 12*3+2*5+1, 15*10+3
  other = make_protocol("genre_split", hand, seed=1, **HAND_KW).manifest
  assert other["hash"] != a["hash"]
  for bad, match in (
    (dict(beta=0.0), "beta"),
    (dict(beta=0.8, valid_fraction=0.25), "leave training users"),
    (dict(min_query=5), "min_query"),
    (dict(n_support=-1), "n_support"),
    (dict(source_genres=("A",), target_genres=("A",)), "disjoint"),
  ):
    with pytest.raises(ValueError, match=match):
      make_protocol("genre_split", hand, seed=0, **{**HAND_KW, **bad})
  with pytest.raises(DataError, match="already carries domains"):
    make_protocol("genre_split", domains.with_domains(hand, np.zeros(len(hand), np.int8), ("a", "b")), **HAND_KW)


def _poisoned(data: Interactions, split: CrossDomainSplit) -> Interactions:
  """`data` with every held-out (valid and cold) user's TARGET rating set to POISON."""
  held = set(split.roles["valid"].tolist()) | set(split.roles[COLD].tolist())
  target_items = set(
    np.flatnonzero(domains.genre_domains(data, (GROUPS["source_genres"], GROUPS["target_genres"]))[0] == 1).tolist()
  )
  return make_hand(lambda u, i, r: POISON if u in held and i in target_items else r, scale=(1.0, POISON))


def test_poisoned_held_out_target_ratings_reach_no_training_stream(hand):
  clean = make_protocol("genre_split", hand, seed=0, **HAND_KW)
  data = _poisoned(hand, clean)
  split = make_protocol("genre_split", data, seed=0, **HAND_KW)
  poisoned_rows = np.flatnonzero(data.rating == POISON)
  assert poisoned_rows.size == 9 * 10  # 3 valid + 6 cold users x 10 target ratings
  for name in split.tasks:  # the split does not depend on rating values
    for f in ("task_ids", "support_rows", "query_rows"):
      np.testing.assert_array_equal(getattr(split.tasks[name], f), getattr(clean.tasks[name], f))
  feats = FeatureMatrices.from_interactions(data)
  # What the streams read of an experiment: the training protocol's switches, no residual (no prior).
  config = types.SimpleNamespace(buckets=(8, 16), resample_train=False, outer_support=False, residual="")
  exp = types.SimpleNamespace(data=data, feats=feats, config=config)
  st = types.SimpleNamespace(
    split=split, seed=0, prior=None, tasks={"train": TaskData.from_split(data, split, "train", feats, (8, 16))}
  )
  seen = {}
  for name, (make, _) in stages.STREAMS.items():
    it = make(exp, st, 4)
    targets = []
    for _ in range(40):  # several epochs of every stream
      batch = next(it)
      pairs = next(
        (k for k in (("observed", "sampled"), ("support", "query"), ("source", "target")) if k[0] in batch), None
      )
      parts = [batch[k] for k in pairs] if pairs else [batch]  # ("source", "target"): the methods' domain pairs
      targets += [p["target"][p["mask"]] for p in parts]
    seen[name] = np.concatenate(targets)
    assert seen[name].size and seen[name].max() <= 5.0, name
  # Not vacuous: the source stream carries the cold users' SOURCE ratings (their history), the target streams none.
  cold_src = np.flatnonzero(np.isin(data.user, split.roles[COLD]) & (split.row_domain == 0))
  assert np.isin(cold_src, split.source_rows).all() and cold_src.size > 0
  # The reference baselines and residual priors fit on training rows only.
  for kind in ("global_mean", "item_mean", "item_user_offset"):
    assert baselines.reference_prior(kind, data, split).max() <= 5.0
  # Held-out rows are in the evaluation sets, where the poison shows.
  assert split.target[split.tasks[COLD].query_rows].max() == POISON


def _raw_first_genre_domains() -> tuple[np.ndarray, np.ndarray]:
  """(raw item id, 0/1/-1 domain) from the ml-100k atomic file's genre column, read here without the loader."""
  df = read_atomic(cached_files()["ml-100k.item"], ("item_id", "class"))
  src, tgt = set(SOURCE_GENRES), set(TARGET_GENRES)
  first = df["class"].astype(str).str.split().map(lambda g: g[0])
  dom = np.array([0 if f in src else 1 if f in tgt else -1 for f in first])
  return df["item_id"].astype(str).to_numpy(), dom


def test_genre_split_on_ml100k_matches_the_files_first_listed_genre(ml100k):
  split = make_protocol("genre_split", ml100k, seed=0)
  raw_ids, raw_dom = _raw_first_genre_domains()
  dom_of_raw = dict(zip(raw_ids, raw_dom))
  want = np.array([dom_of_raw[str(ml100k.item_raw_ids[i])] for i in ml100k.item])
  np.testing.assert_array_equal(split.row_domain, want)
  m = split.manifest["cross_domain"]
  assert m["rows"] == {"source genres": 48242, "target genres": 51748} and m["rows_in_no_domain"] == 10
  n_src = np.bincount(ml100k.user[want == 0], minlength=ml100k.n_users)
  n_tgt = np.bincount(ml100k.user[want == 1], minlength=ml100k.n_users)
  assert split.shared_users.tolist() == np.flatnonzero((n_src > 0) & (n_tgt > 0)).tolist()
  cand = int(((n_src > 0) & (n_tgt >= 15)).sum())
  assert split.params["users_candidates"] == cand
  assert len(split.tasks[COLD]) == round(0.5 * cand) and len(split.tasks["valid"]) == round(0.1 * cand)
  held = np.concatenate([split.roles["valid"], split.roles[COLD]])
  assert not np.isin(ml100k.user[split.target_train_rows()], held).any()
  assert make_protocol("genre_split", ml100k, seed=0).manifest == split.manifest


def test_rowsets_of_users_matches_a_loop():
  rng = np.random.default_rng(0)
  row_user = rng.integers(0, 7, 50)
  rows = np.sort(rng.choice(50, 30, replace=False))
  users = np.array([5, 0, 6, 3])
  got = RowSets.of_users(users, row_user, rows)
  for t, u in enumerate(users):
    assert got.of(t).tolist() == [r for r in rows if row_user[r] == u]
  with pytest.raises(DataError, match="malformed"):
    RowSets(np.array([0, 3]), np.zeros(2, np.int64))


def _loop_source_scores(data: Interactions, split: CrossDomainSplit, lam: float) -> tuple[dict, dict]:
  """Source item means and user offsets by explicit loops over the source rows (independent of baselines.py)."""
  rows = [int(r) for r in split.source_rows]
  mu_s = sum(float(data.rating[r]) for r in rows) / len(rows)
  item_means = {}
  for i in range(data.n_items):
    own = [float(data.rating[r]) for r in rows if data.item[r] == i]
    item_means[i] = (sum(own) + lam * mu_s) / (len(own) + lam)
  offsets = {}
  for u in range(data.n_users):
    res = [float(data.rating[r]) - item_means[int(data.item[r])] for r in rows if data.user[r] == u]
    offsets[u] = sum(res) / (len(res) + lam)
  return item_means, offsets


def test_source_baselines_equal_a_loop_and_their_catalogue_scores(hand):
  lam = 2.0
  split = make_protocol("genre_split", hand, seed=0, **HAND_KW)
  ts = split.tasks[COLD]
  item_means, offsets = _loop_source_scores(hand, split, lam)
  users = np.repeat(ts.task_ids, ts.query_sizes())
  items = hand.item[ts.query_rows]
  got = baselines.baseline_scores("source_item_user_offset", hand, split, ts, lam=lam)
  np.testing.assert_allclose(got, [item_means[int(i)] + offsets[int(u)] for u, i in zip(users, items)], rtol=1e-6)
  target_means = baselines.baseline_scores("item_mean", hand, split, ts, lam=lam)
  got = baselines.baseline_scores("item_mean_source_offset", hand, split, ts, lam=lam)
  np.testing.assert_allclose(got, target_means + np.array([offsets[int(u)] for u in users]), rtol=1e-6)
  assert np.ptp([offsets[int(u)] for u in ts.task_ids]) > 0  # users differ: the offset is not a constant
  positions = np.arange(len(ts))
  for name in baselines.CROSS_DOMAIN:
    cat = baselines.catalogue_scores(name, hand, split, ts, positions, lam=lam)
    want = baselines.baseline_scores(name, hand, split, ts, lam=lam)
    np.testing.assert_allclose(cat[np.repeat(positions, ts.query_sizes()), items], want, rtol=1e-6)
  assert set(baselines.applicable(split)) == set(baselines.BASELINES)
  melu = make_protocol(
    "recbole_metarec", tm.load_dataset("synthetic", n_users=60, n_items=40, ratings_per_user=(15, 30)), min_tasks=0
  )
  assert not set(baselines.applicable(melu)) & set(baselines.CROSS_DOMAIN)
  with pytest.raises(ValueError, match="needs a cross-domain split"):
    baselines.baseline_scores("item_mean_source_offset", None, melu, melu.tasks["test"])


def test_source_item_support_offset_equals_a_hand_loop_on_item_overlap(hand):
  """Item overlap (users 0-8 source, 9-17 target): source item means (loop) + the cold user's support residual
  against them, shrunk by (support size + lam); the catalogue scores agree at the query items."""
  lam = 2.0
  data = domains.with_domains(hand, (hand.user >= 9).astype(np.int8), ("a", "b"))
  kw = dict(beta=0.5, valid_fraction=0.25, n_support=3, min_query=6, n_query=2, source="a", target="b", min_tasks=0)
  split = make_protocol("ml1m_to_ml100k", data, seed=0, **kw)
  ts = split.tasks[COLD]
  item_means, _ = _loop_source_scores(data, split, lam)
  want, offsets = [], []
  for t in range(len(ts)):
    support = ts.support_rows[ts.support_ptr[t] : ts.support_ptr[t + 1]]
    offset = sum(float(data.rating[r]) - item_means[int(data.item[r])] for r in support) / (len(support) + lam)
    offsets.append(offset)
    want += [item_means[int(data.item[r])] + offset for r in ts.query_rows[ts.query_ptr[t] : ts.query_ptr[t + 1]]]
  got = baselines.baseline_scores("source_item_support_offset", data, split, ts, lam=lam)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert np.ptp(offsets) > 0.1 and np.ptp([item_means[int(i)] for i in data.item[ts.query_rows]]) > 0.1
  # Without the support offset it is the source-only scorer (a cold user has no source row: its offset is 0).
  plain = baselines.baseline_scores("source_item_user_offset", data, split, ts, lam=lam)
  np.testing.assert_allclose(got - plain, np.repeat(offsets, ts.query_sizes()), rtol=1e-5, atol=1e-6)
  positions = np.arange(len(ts))
  cat = baselines.catalogue_scores("source_item_support_offset", data, split, ts, positions, lam=lam)
  np.testing.assert_allclose(cat[np.repeat(positions, ts.query_sizes()), data.item[ts.query_rows]], got, rtol=1e-6)


def _tiny_config():
  import importlib.util  # noqa: PLC0415
  import os  # noqa: PLC0415

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
    "cfg_genre_split", os.path.join(root, "configs", "genre_split_ml100k.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


def _records(path) -> list[dict]:
  import json  # noqa: PLC0415

  with open(path) as f:
    return [json.loads(line) for line in f]


def test_training_on_poisoned_data_is_bitwise_the_clean_run_until_the_cold_query(tmp_path):
  """End to end (every learner, the selection on valid, the baselines): poisoning the held-out users' target
  ratings changes nothing but the cold users' test metrics, so no training step or selection read them."""
  config = _tiny_config()
  with config.unlocked():  # one checkpoint per learner (at its end) and no PNGs: no check here reads either
    config.checkpoint_every, config.plots = config.num_steps, False
  clean = tm.load_dataset(config.dataset_name, **config.dataset.to_dict())
  split = make_protocol("genre_split", clean, seed=0, min_tasks=0, **config.protocol.to_dict())
  held = np.concatenate([split.roles["valid"], split.roles[COLD]])
  poison_rows = np.flatnonzero(np.isin(clean.user, split.roles[COLD]) & (split.row_domain == 1))
  rating = clean.rating.copy()
  rating[poison_rows] = POISON
  poisoned = dataclasses.replace(clean, rating=rating, rating_scale=(1.0, POISON))
  a = tm.train_and_evaluate(config, str(tmp_path / "clean"), data=clean)
  b = tm.train_and_evaluate(config, str(tmp_path / "poisoned"), data=poisoned)
  ra, rb = _records(tmp_path / "clean" / "metrics.jsonl"), _records(tmp_path / "poisoned" / "metrics.jsonl")
  assert len(ra) == len(rb) > 0 and ra == rb  # every train/* and valid/* value of every learner, bitwise
  assert a["metrics"]["valid"] == b["metrics"]["valid"] and a["selection"] == b["selection"]
  assert b["metrics"][COLD]["mae"]["mean"] > 100 * a["metrics"][COLD]["mae"]["mean"]  # the poison is evaluated
  for name in ("global_mean", "item_user_offset", "source_item_user_offset", "item_mean_source_offset"):
    assert b["baselines"][name][COLD]["mae"]["mean"] > 100  # baselines score the poisoned query too ...
    assert a["baselines"][name][COLD]["mae"]["mean"] < 2  # ... and fit on clean training rows only
  assert held.size and poison_rows.size


def test_compare_rows_pair_every_method_with_each_reference_and_say_when_none_wins():
  from experiments import ablate  # noqa: PLC0415

  def entry(per_seed):
    return {"cold_target": {"mae": {"mean": float(np.mean(per_seed)), "per_seed": per_seed}}}

  results = {
    "learner": "maml",
    "metrics": entry([0.70, 0.72, 0.71]),
    "comparisons": {"none": entry([0.80, 0.79, 0.81])},
    "baselines": {"target": entry([0.75, 0.76, 0.755]), "source": entry([0.90, 0.88, 0.89]), "other": entry([1.0] * 3)},
  }
  rows = ablate.compare_rows([{"label": "beta=0.5", "results": results}], ["target", "source"], ["mae"])
  assert [r["method"] for r in rows] == ["maml", "none", "other"]
  d = np.array([0.75, 0.76, 0.755]) - np.array([0.70, 0.72, 0.71])
  got = rows[0]["vs"]["target"]["mae"]
  np.testing.assert_allclose([got["mean"], got["se"]], [d.mean(), d.std(ddof=1) / np.sqrt(3)])
  assert rows[0]["beats_all"] and not rows[1]["beats_all"] and not rows[2]["beats_all"]
  md = ablate.compare_markdown(rows, ["target", "source"], ["mae"], "# t")
  assert "- beta=0.5, cold_target: `maml`" in md
  results["metrics"] = entry([0.80, 0.70, 0.90])  # noisy: no longer > 2 SE
  rows = ablate.compare_rows([{"label": "beta=0.5", "results": results}], ["target", "source"], ["mae"])
  assert "- beta=0.5, cold_target: **none does**" in ablate.compare_markdown(rows, ["target", "source"], ["mae"], "")
  with pytest.raises(ValueError, match="not baselines"):
    ablate.compare_rows([{"label": "x", "results": results}], ["nope"], ["mae"])


def test_compare_rows_leave_a_rankers_error_cells_empty_but_refuse_a_trained_method_without_the_metric():
  """'popularity' reports nDCG but no MAE (a count on the rating scale means nothing): its MAE cells read '—' and it
  never wins; a trained method without the metric still fails."""
  from experiments import ablate  # noqa: PLC0415

  def entry(mae, ndcg):
    out = {"ndcg@5": {"per_seed": ndcg}}
    return {"cold_target": {**out, **({"mae": {"per_seed": mae}} if mae else {})}}

  results = {
    "learner": "cmf",
    "metrics": entry([0.70, 0.71], [0.70, 0.72]),
    "baselines": {
      "target": entry([0.80, 0.82], [0.60, 0.61]),
      "source": entry([0.90, 0.91], [0.50, 0.52]),
      "popularity": entry(None, [0.65, 0.66]),
    },
  }
  rows = ablate.compare_rows([{"label": "b", "results": results}], ["target", "source"], ["mae", "ndcg@5"])
  pop = next(r for r in rows if r["method"] == "popularity")
  assert set(pop["values"]) == {"ndcg@5"} and not pop["beats_all"]
  assert pop["vs"]["target"]["ndcg@5"]["mean"] == pytest.approx(0.05)  # 0.655 - 0.605
  md = ablate.compare_markdown(rows, ["target", "source"], ["mae", "ndcg@5"], "")
  assert "| b | popularity | cold_target | — | — | +0.0500 ± 0.0000" in md and "- b, cold_target: `cmf`" in md
  results["metrics"] = entry(None, [0.7, 0.7])
  with pytest.raises(ValueError, match="'mae' is not reported"):
    ablate.compare_rows([{"label": "b", "results": results}], ["target", "source"], ["mae"])


def test_item_overlap_protocol_on_a_hand_fixture_with_data_domains(hand):
  """Users 0-8 in domain 'a' (source), 9-17 in 'b' (target): user-disjoint; items rated in both are shared."""
  data = domains.with_domains(hand, (hand.user >= 9).astype(np.int8), ("a", "b"))
  kw = dict(beta=0.5, valid_fraction=0.25, n_support=1, min_query=6, n_query=2, source="a", target="b", min_tasks=0)
  split = make_protocol("ml1m_to_ml100k", data, seed=0, **kw)
  assert split.shared_users.size == 0 and split.domains == ("a", "b")
  a_items, b_items = set(hand.item[hand.user < 9].tolist()), set(hand.item[hand.user >= 9].tolist())
  assert split.shared_items.tolist() == sorted(a_items & b_items)
  assert split.source_rows.tolist() == np.flatnonzero(hand.user < 9).tolist()
  # Candidates: target users with >= 7 target ratings (9-14; user 15-16 have 5, user 17 has 4): 6 -> 2 valid, 3 cold.
  assert split.params["users_candidates"] == 6
  held = split.roles["valid"].tolist() + split.roles[COLD].tolist()
  assert len(split.roles["valid"]) == 2 and len(split.roles[COLD]) == 3 and set(held) <= set(range(9, 15))
  assert all(split.history[COLD].sizes() == 0)  # cold users have no source history in a user-disjoint benchmark
  assert split.roles["train"].size == 0  # no overlapping users
  assert not np.isin(hand.user[split.target_train_rows()], held).any()
  assert set(hand.user[split.target_train_rows()].tolist()) == set(range(9, 18)) - set(held)
  with pytest.raises(DataError, match="need distinct 'a' and 'c'"):
    make_protocol("ml1m_to_ml100k", data, seed=0, **{**kw, "target": "c"})
  with pytest.raises(DataError, match="carry no domains"):
    make_protocol("ml1m_to_ml100k", hand, seed=0, **kw)


@pytest.fixture(scope="module")
def ml1m_ml100k():
  return tm.load_dataset("ml-1m+ml-100k")


def test_ml1m_to_ml100k_matches_1539_titles_and_holds_out_ml100k_users(ml1m_ml100k):
  data = ml1m_ml100k
  assert data.domains == ("ml-1m", "ml-100k") and np.bincount(data.domain).tolist() == [1_000_209, 99_693]
  split = make_protocol("ml1m_to_ml100k", data, seed=0)
  assert split.shared_items.size == 1539 and split.shared_users.size == 0
  raw = data.user_raw_ids.astype(str)
  held = np.concatenate([split.roles["valid"], split.roles[COLD]])
  assert all(r.startswith("100k_") for r in raw[held])
  assert len(split.tasks[COLD]) == round(0.5 * 943) and len(split.tasks["valid"]) == round(0.1 * 943)
  assert split.source_rows.size == 1_000_209 and not np.isin(data.user[split.target_train_rows()], held).any()
  titles = data.item_raw_ids.astype(str)  # shared items are titles rated in both files
  in_1m = set(titles[np.unique(data.item[data.domain == 0])])  # distinct ids first: 1M titles made a set slowly
  in_100k = set(titles[np.unique(data.item[data.domain == 1])])
  assert sorted(titles[split.shared_items]) == sorted(in_1m & in_100k)
  assert make_protocol("ml1m_to_ml100k", data, seed=0).manifest["hash"] == split.manifest["hash"]


def test_sorted_unique_is_np_unique(ml1m_ml100k):
  """The loader's dense ids (`builder.sorted_unique`, hashing then sorting only the distinct ids) are np.unique's,
  on the two-domain data's string ids and on small ints, strings and mixed types (a TypeError, as np.unique)."""
  from transfer_meta.data.builder import sorted_unique  # noqa: PLC0415

  data = ml1m_ml100k
  rng = np.random.default_rng(0)
  rows = np.arange(0, data.user.size, 97)  # every 97th row of both domains (np.unique of all 1.1M: 1.6 CPU-s)
  cases = [
    data.user_raw_ids[data.user[rows]],
    data.item_raw_ids[data.item[rows]].astype(str),
    rng.integers(-5, 50, 1000),
    rng.normal(size=20).round(1),
    np.array(["b", "a", "b", "c"], object),
    np.array([7]),
  ]
  for raw in cases:
    want, want_inv = np.unique(raw, return_inverse=True)
    got, got_inv = sorted_unique(raw)
    assert got.dtype == want.dtype and got.tolist() == want.tolist()
    np.testing.assert_array_equal(got_inv, want_inv.reshape(-1))
  for bad in (np.array([1, "a"], object), np.array([2.0, "x", 1], object)):
    with pytest.raises(TypeError):
      np.unique(bad)
    with pytest.raises(TypeError):
      sorted_unique(bad)


def test_source_only_model_is_a_strategy_row_pretrained_on_source_rows(tmp_path):
  from experiments import runner  # noqa: PLC0415
  from transfer_meta import strategies  # noqa: PLC0415

  config = _tiny_config()
  module, _ = runner.config_module("genre_split_ml100k")
  overrides = {
    **module.SOURCE_ONLY,
    "strategy": {**module.SOURCE_ONLY["strategy"], "pretrain_steps": 4, "batch_size": 32},
    "plots": False,  # no check reads the PNGs (tests/test_run_outputs.py checks them)
  }
  config = runner.apply_overrides(config, overrides)
  built = tm.train.build_experiment(config)
  strategy = strategies.get_strategy(config.strategy_name, built.model, config, built.spec, **config.strategy.to_dict())
  assert [s.stream for s in strategy.stages] == ["source_interactions"]
  results = tm.train_and_evaluate(config, str(tmp_path), data=built.data)
  row = results["comparisons"]["pretrain_finetune"]
  assert set(row) == {"valid", COLD} and all(np.isfinite(v["mean"]) for v in row[COLD].values())
  assert results["strategy"]["stages"][0]["stream"] == "source_interactions"
  with pytest.raises(ValueError, match="pretraining stream 'tasks'"):
    strategies.get_strategy("pretrain_finetune", built.model, config, built.spec, stream="tasks")


def test_csv_export_refuses_domains_instead_of_dropping_them(hand, tmp_path):
  from transfer_meta.data.csv_export import write_csv  # noqa: PLC0415

  with pytest.raises(DataError, match="does not write domains"):
    write_csv(domains.with_domains(hand, (hand.item >= 10).astype(np.int8), ("a", "b")), tmp_path)
  assert not list(tmp_path.iterdir())


def test_catalogue_ranking_on_a_cross_domain_split_ranks_target_items_only(hand):
  from transfer_meta import ranking_eval  # noqa: PLC0415

  split = make_protocol("genre_split", hand, seed=0, **HAND_KW)
  rated = ranking_eval.Rated.build(hand, split)
  owners = split.tasks[COLD].task_ids
  unrated = rated.unrated(owners)
  target_items = set(range(10, 20))  # items 0-9 are source, 20 in no domain
  for b, u in enumerate(owners):
    want = target_items - set(hand.item[hand.user == u].tolist())
    assert set(np.flatnonzero(unrated[b]).tolist()) == want
  melu_like = make_protocol("recbole_metarec", hand, seed=0, n_query=2, min_ratings=3, max_ratings=20, min_tasks=0)
  assert ranking_eval.Rated.build(hand, melu_like).outside is None  # single-domain splits: the whole catalogue


def test_max_query_caps_held_out_queries_and_the_rest_is_never_trained_on(hand):
  full = make_protocol("genre_split", hand, seed=0, **HAND_KW)
  capped = make_protocol("genre_split", hand, seed=0, **HAND_KW, max_query=6)
  for name in ("valid", COLD):
    assert capped.tasks[name].query_sizes().tolist() == [6] * len(capped.tasks[name])
    np.testing.assert_array_equal(capped.tasks[name].support_rows, full.tasks[name].support_rows)
    assert set(capped.tasks[name].query_rows.tolist()) < set(full.tasks[name].query_rows.tolist())
  np.testing.assert_array_equal(capped.target_train_rows(), full.target_train_rows())  # the cut rows stay unused
  assert full.params["max_query"] is None and capped.params["max_query"] == 6
  with pytest.raises(ValueError, match="max_query"):
    make_protocol("genre_split", hand, seed=0, **HAND_KW, max_query=5)  # below min_query
