"""The synthetic generator: shapes, determinism, and the planted structure it promises."""

import numpy as np
import pytest

import transfer_meta as tm
from transfer_meta.data import synthetic
from transfer_meta.data.interactions import UNKNOWN

U, I, RANGE = 500, 100, (20, 60)


def _small(**kw):
  return synthetic.generate(n_users=U, n_items=I, ratings_per_user=RANGE, seed=1, **kw)


def test_shapes_dtypes_and_features():
  d = tm.load_dataset("synthetic", n_users=U, n_items=I, ratings_per_user=RANGE, seed=1)
  assert (d.n_users, d.n_items) == (U, I) and d.name == "synthetic"
  assert d.user.dtype == np.int32 and d.item.dtype == np.int32 and d.rating.dtype == np.float32
  assert d.timestamp.dtype == np.int64 and d.item_year.dtype == np.int32
  counts = d.user_counts()
  assert counts.min() >= RANGE[0] and counts.max() <= RANGE[1] and counts.sum() == len(d)
  assert set(np.unique(d.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
  assert np.unique(d.user.astype(np.int64) * I + d.item).size == len(d)  # distinct items per user
  assert (np.diff(d.user) >= 0).all()  # grouped by user, chronological within a user
  assert (np.diff(d.timestamp)[np.diff(d.user) == 0] >= 0).all()
  assert d.item_year.min() >= 1980 and d.item_year.max() <= 1998
  u, i = d.user_features, d.item_features
  assert sorted(u.categorical) == ["age", "gender", "occupation"]
  assert u.vocab["gender"] == (UNKNOWN, "F", "M") and len(u.vocab["occupation"]) == 22 and len(u.vocab["age"]) == 8
  assert u.categorical["age"].min() >= 1  # generated users have no missing features
  genres = i.multi_hot["genre"]
  assert genres.shape == (I, 18) and genres.sum(1).min() >= 1 and genres.sum(1).max() <= 3
  years = np.array([int(i.vocab["release_year"][c]) for c in i.categorical["release_year"]])
  np.testing.assert_array_equal(years, d.item_year)
  assert i.text["title"][17] == "Item 17"


def test_deterministic_under_seed():
  a, b, c = _small(), _small(), synthetic.generate(n_users=U, n_items=I, ratings_per_user=RANGE, seed=2)
  for field in ("user", "item", "rating", "timestamp", "item_year"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  np.testing.assert_array_equal(a.user_features.cat_matrix(), b.user_features.cat_matrix())
  assert len(a) != len(c) or not np.array_equal(a.rating, c.rating)


def test_sampling_covers_all_items_when_a_user_rates_everything():
  d = synthetic.generate(n_users=5, n_items=30, ratings_per_user=(30, 30), popularity=3.0)
  for u in range(5):
    assert sorted(d.item[d.user == u].tolist()) == list(range(30))


def test_popularity_skews_item_counts():
  flat = synthetic.generate(n_users=300, n_items=400, ratings_per_user=(20, 20), popularity=1.0).item_counts()
  skew = synthetic.generate(n_users=300, n_items=400, ratings_per_user=(20, 20), popularity=3.0).item_counts()
  assert flat.sum() == skew.sum() == 6000
  assert np.sort(skew)[-40:].sum() > 2 * np.sort(flat)[-40:].sum()  # top 10% of items


def test_bad_arguments():
  with pytest.raises(ValueError, match=r"ratings_per_user must satisfy 1 <= low <= high <= n_items=10"):
    synthetic.generate(n_users=5, n_items=10, ratings_per_user=(5, 11))
  with pytest.raises(ValueError, match="rank must be >= 1"):
    synthetic.generate(rank=0)


def _feature_model(d, train):
  """Per-item ridge regression of ratings on one-hot user features (+ intercept), fit on `train` rows.

  Returns (F [U, P] user design, W [I, P]): prediction for (u, i) is F[u] @ W[i].
  """
  f = d.user_features
  F = np.concatenate([np.ones((d.n_users, 1))] + [np.eye(len(f.vocab[k]))[f.categorical[k]] for k in f.categorical], 1)
  W = np.zeros((d.n_items, F.shape[1]))
  for i in range(d.n_items):
    rows = train & (d.item == i)
    X = F[d.user[rows]]
    W[i] = np.linalg.solve(X.T @ X + np.eye(F.shape[1]), X.T @ d.rating[rows])
  return F, W


def _cold_start_rmse(d):
  """RMSE on new users' query rows of: the global mean, the feature model, the feature model + the user's
  mean residual on a random half of their ratings (support)."""
  rng = np.random.default_rng(0)
  new_user = np.isin(d.user, rng.permutation(d.n_users)[:150])
  support = new_user & (rng.random(len(d)) < 0.5)
  query = new_user & ~support
  F, W = _feature_model(d, ~new_user)
  pred = (F[d.user] * W[d.item]).sum(1)
  resid = np.where(support, d.rating - pred, 0)
  offset = np.bincount(d.user, resid, d.n_users) / np.maximum(np.bincount(d.user[support], minlength=d.n_users), 1)
  rmse = lambda p: float(np.sqrt(np.mean((d.rating[query] - p[query]) ** 2)))
  return rmse(np.full(len(d), d.rating[~new_user].mean())), rmse(pred), rmse(pred + offset[d.user])


def test_features_beat_the_global_mean_on_new_users():
  mean, feature, _ = _cold_start_rmse(_small())
  assert feature < 0.8 * mean  # measured 0.83 vs 1.17


def test_adapting_on_support_beats_not_adapting():
  _, feature, adapted = _cold_start_rmse(_small())
  assert adapted < 0.97 * feature  # measured 0.76 vs 0.83
  # Without a per-user deviation there is nothing for the support set to reveal.
  _, feature0, adapted0 = _cold_start_rmse(_small(user_deviation=0.0))
  assert adapted0 > 0.99 * feature0  # measured 0.4778 vs 0.4775
  assert feature0 < feature


def test_one_million_ratings():
  d = synthetic.generate(n_users=10_000, n_items=2_000, ratings_per_user=(100, 100))
  assert len(d) == 1_000_000 and (d.user_counts() == 100).all() and d.n_items == 2_000
