"""Item features from catalogue attributes: which columns, how scaled, missing values, the setting."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from service.errors import InvalidInputError
from service.ingest.catalogue import import_items, load_catalogue
from service.ingest.item_features import (
    FeatureSpec,
    column_kinds,
    feature_matrix,
    fit_feature_spec,
    parse_feature_names,
)
from service.settings import Settings
from service.store.db import make_engine, make_session_factory, session_scope

# price: present 1 and 3 (mean 2, population std 1); fresh: True/False (share true 0.5); topic: text;
# tags: a list; item 2 has no attributes at all, item 3 a None price and an infinite "weight" only.
ATTRIBUTES = [
    {"price": 1.0, "fresh": True, "topic": "news", "tags": ["a", "b"]},
    {"price": 3, "fresh": False, "topic": "sport"},
    None,
    {"price": None, "weight": float("inf")},
]


def test_numeric_and_boolean_columns_are_features_text_and_lists_are_not() -> None:
    assert column_kinds(ATTRIBUTES) == {
        "price": "number",
        "fresh": "boolean",
        "topic": "text",
        "tags": "text",
        "weight": "text",  # never a finite value: nothing to learn from
    }
    spec = fit_feature_spec(ATTRIBUTES)
    assert spec.names == ["fresh", "price"]  # name order
    np.testing.assert_array_equal(
        feature_matrix(spec, ATTRIBUTES),
        np.array([[1.0, -1.0], [0.0, 1.0], [0.5, 0.0], [0.5, 0.0]], dtype=np.float32),
    )


def test_missing_indicators_follow_the_values() -> None:
    spec = fit_feature_spec(ATTRIBUTES, missing_indicators=True)
    assert spec.width == 4
    np.testing.assert_array_equal(
        feature_matrix(spec, ATTRIBUTES)[:, 2:], np.array([[0, 0], [0, 0], [1, 1], [1, 1]], dtype=np.float32)
    )


def test_new_items_are_scaled_with_the_training_statistics() -> None:
    spec = FeatureSpec.from_json(json.loads(json.dumps(fit_feature_spec(ATTRIBUTES).to_json())))
    assert spec == fit_feature_spec(ATTRIBUTES)
    new = [
        {"price": 5, "fresh": True},  # (5 - 2) / 1 = 3
        {"price": "cheap", "fresh": 0},  # text in a number column: missing; a number in a boolean one
        {"price": 1e300},  # clipped to the bound
    ]
    np.testing.assert_array_equal(
        feature_matrix(spec, new), np.array([[1.0, 3.0], [0.0, 0.0], [0.5, 1e6]], dtype=np.float32)
    )


def test_a_constant_column_is_zero_not_nan() -> None:
    spec = fit_feature_spec([{"c": 5}, {"c": 5}, {"c": 5.0}])
    assert spec.columns[0].std == 1.0
    np.testing.assert_array_equal(feature_matrix(spec, [{"c": 5}, {"c": 7}]), [[0.0], [2.0]])


def test_the_setting_narrows_and_orders_the_columns() -> None:
    spec = fit_feature_spec(ATTRIBUTES, parse_feature_names(" price , fresh"))
    assert spec.names == ["price", "fresh"]
    np.testing.assert_array_equal(feature_matrix(spec, ATTRIBUTES[:1]), [[-1.0, 1.0]])
    assert parse_feature_names(None) is None and parse_feature_names("  ") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("price,nope", "DQFD_ITEM_FEATURES names 'nope', which is not a column of the catalogue"),
        ("topic", "DQFD_ITEM_FEATURES names 'topic', which holds text or lists"),
        ("price,,fresh", "has an empty column name"),
        ("price,price", "names 'price' twice"),
    ],
)
def test_a_bad_setting_names_the_column(value: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        fit_feature_spec(ATTRIBUTES, parse_feature_names(value))
    assert info.value.field == "DQFD_ITEM_FEATURES"
    if "nope" in value:
        assert "numeric columns: fresh, price" in info.value.message


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQFD_ITEM_FEATURES", "price,fresh")
    assert parse_feature_names(Settings().item_features) == ["price", "fresh"]


def test_imported_items_csv_columns_become_features(database_url: str) -> None:
    frame = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "appeal": [0.2, 0.4, None],  # an empty cell: not stored, so missing
            "new": [True, False, True],
            "title": ["x", "y", "z"],
        }
    )
    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            import_items(session, frame)
        with session_scope(make_session_factory(engine)) as session:
            catalogue = load_catalogue(session, attributes=True)
            assert load_catalogue(session).attributes is None
    finally:
        engine.dispose()
    spec = fit_feature_spec(catalogue.attributes)
    assert spec.names == ["appeal", "new"]
    np.testing.assert_allclose(
        feature_matrix(spec, catalogue.attributes), [[-1.0, 1.0], [1.0, 0.0], [0.0, 1.0]], atol=1e-6
    )


def test_numeric_text_is_text_and_an_int_past_float_range_is_missing() -> None:
    # "1.5" in a cell pandas read as text stays text: the column is not a feature.
    assert column_kinds([{"size": "1.5"}, {"size": 2.0}]) == {"size": "text"}
    spec = fit_feature_spec([{"n": 1}, {"n": 3}])
    np.testing.assert_array_equal(feature_matrix(spec, [{"n": 10**400}, {"n": "2"}]), [[0.0], [0.0]])
