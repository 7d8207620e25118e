"""The data schema: declared once, validated with messages that name the field, resolved by name, path
or mapping; and the generic attribute encoding every attribute-aware model uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.schema import DataSchema, FieldSpec, SchemaError, load_schema, resolve_schema
from training.attributes import encode_side, fit_field

SHOP = {
    "name": "shop",
    "user_features": {"segment": {"type": "categorical"}, "age": {"type": "numeric", "min": 13}},
    "item_features": {
        "price": {"type": "numeric", "min": 0, "n_bins": 4},
        "tags": {"type": "list", "separator": ";"},
        "title": {"type": "text", "max_tokens": 3, "min_count": 2},
    },
}


def test_the_builtin_movielens_schema_is_the_default() -> None:
    schema = resolve_schema(None)
    assert schema.name == "movielens" and list(schema.user_features) == ["age", "gender", "occupation"]
    assert resolve_schema("movielens") == schema
    assert load_schema(None) == schema


def test_a_schema_resolves_from_a_mapping_a_file_or_a_name(tmp_path: Path) -> None:
    inline = resolve_schema(SHOP)
    path = tmp_path / "shop.yaml"
    path.write_text(
        "name: shop\nuser_features: {segment: {type: categorical}, age: {type: numeric, min: 13}}\n"
        "item_features:\n  price: {type: numeric, min: 0, n_bins: 4}\n  tags: {type: list, separator: ';'}\n"
        "  title: {type: text, max_tokens: 3, min_count: 2}\n"
    )
    assert resolve_schema(str(path)) == inline
    assert inline.fingerprint() == resolve_schema({**SHOP, "name": "renamed"}).fingerprint()
    changed = {**SHOP, "item_features": {**SHOP["item_features"], "brand": {"type": "categorical"}}}
    assert resolve_schema(changed).fingerprint() != inline.fingerprint()  # an attribute is data


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"item_features": {"Price": {"type": "numeric"}}}, "lower-case identifiers"),
        ({"item_features": {"rating": {"type": "numeric"}}}, "pipeline writes a column of that name"),
        (
            {
                "user_features": {"country": {"type": "categorical"}},
                "item_features": {"country": {"type": "categorical"}},
            },
            "distinct names",
        ),
        ({"item_features": {"price": {"type": "money"}}}, "price"),
        ({"item_features": {"price": {"type": "numeric", "min": 5, "max": 1}}}, "min 5.0 > max 1.0"),
        ({"item_features": {"year": {"type": "numeric", "bins": [3, 1]}}}, "strictly ascending"),
        ({"item_features": {"title": {"type": "text", "drop_pattern": "("}}}, "not a regular expression"),
        ({"item_features": {"price": {"type": "numeric", "unit": "EUR"}}}, "unit"),
    ],
)
def test_bad_declarations_fail_naming_the_field(declaration: dict, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        resolve_schema(declaration)


def test_unknown_names_and_missing_files_say_what_exists(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"no schema named 'shopx'; built in: \[.*'movielens'"):
        resolve_schema("shopx")
    with pytest.raises(SchemaError, match="does not exist"):
        resolve_schema(str(tmp_path / "missing.yaml"))


def test_field_encodings() -> None:
    price = fit_field("price", FieldSpec(type="numeric", n_bins=4), [1, 2, 3, 4, 5, 6, 7, 8, None, "x"])
    assert len(price.edges) == 3 and price.codes(1)[0] != price.codes(8)[0] and price.codes(None)[0] == 0
    assert price.standardised(4.5) == pytest.approx(0.0) and price.standardised(None) == 0.0
    year = fit_field("year", FieldSpec(type="numeric", bin_width=5), [1991, 1994, 1996])
    assert year.vocab == ["1990", "1995"] and year.codes(1993)[0] == 1 and year.codes(2020)[0] == 0
    tags = fit_field(
        "tags", FieldSpec(type="list", max_tokens=2, min_count=2), [["a", "b"], ["a", "c"], "a|b", []]
    )
    assert tags.vocab == ["a", "b"] and list(tags.codes(["c", "b", "a"])) == [
        2,
        1,
    ]  # unknown dropped, then cut
    title = fit_field(
        "title", FieldSpec(type="text", drop_pattern=r"\(\d{4}\)"), ["Toy Story (1995)", "Story"]
    )
    assert title.vocab == ["story", "toy"] and list(title.tokens("Toy Story (1995)")) == ["toy", "story"]


def test_encode_side_aligns_rows_to_the_index_and_pads_items() -> None:
    schema = DataSchema.model_validate(SHOP)
    rows = pd.DataFrame(
        {
            "price": [10.0, 20.0, None],
            "tags": [["x"], ["x", "y"], []],
            "title": ["red shoe", "red hat", "box"],
        },
        index=["p1", "p2", "p3"],
    )
    items = encode_side("item", schema, rows, ["p2", "p9", "p1"], padding=True)
    assert items.codes.shape == (4, 1 + 8 + 3) and (items.codes[0] == 0).all()  # row 0 = padding
    assert (items.codes[2] == 0).all() and items.numbers[2, 0] == 0.0  # p9: no attributes, all unknown
    assert items.codes[1, 1] > 0 and items.codes[3, 1] > 0  # both have tag x
    codes, numbers = items.encode([{"price": 20.0, "tags": ["y"], "title": "red"}])
    assert np.array_equal(codes[0], items.codes[1][: codes.shape[1]]) is False  # another title, other codes
    assert numbers[0, 0] == pytest.approx(items.numbers[1, 0])


def test_a_schema_without_attributes_encodes_one_empty_row_per_entity() -> None:
    """An ids-only dataset (no attribute declared) still has one (empty) row per user and item, so the
    attribute-aware models train on the ids alone."""
    import torch

    from training.attributes import AttributeEncoder, Attributes
    from training.models import build_model

    schema = DataSchema.model_validate({"name": "ids_only"})
    rows = pd.DataFrame(index=pd.Index(["p1", "p2"], name="item_id"))
    items = encode_side("item", schema, rows, ["p1", "p2", "p3"], padding=True)
    users = encode_side("user", schema, pd.DataFrame(index=["u1"]), ["u1", "u2"], padding=False)
    assert items.codes.shape == (4, 0) and users.codes.shape == (2, 0) and users.numbers.shape == (2, 0)
    assert AttributeEncoder(items, 4)(torch.tensor([1, 3])).shape == (2, 0, 4)
    module = build_model("twotower", 2, 3, Attributes(schema, users, items), embedding_size=8)
    with torch.no_grad():
        assert torch.isfinite(
            module.full_sort_predict(torch.tensor([0, 1]), torch.zeros(2, 1).long())[:, 1:]
        ).all()
