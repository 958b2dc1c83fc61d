"""The novel-attack indicator on its own (`modeling_molex.novelty`): the distance and its scale, the nearest class of
a clip scored in windows, fitting signatures to a model (refusing or extending them), the file `save_pretrained`
writes and the validation of `routing_signatures.json`. Plain numpy, milliseconds per test."""

import json

import numpy as np
import pytest

from modeling_molex.novelty import (
    DISTANCE_DESCRIPTION,
    RoutingSignatures,
    check_signatures,
    clip_novelty,
    load_routing_signatures,
    nearest_signatures,
    routing_novelty,
    signature_distance,
    signatures_file_contents,
)


# 2 routers x 2 experts, top-1: each usage row sums to 1, so the largest L1 distance is 2 * 1 * 2 = 4.
A01 = np.array([1.0, 0.0, 0.0, 1.0])
A07 = np.array([0.0, 1.0, 1.0, 0.0])


def two_classes(threshold: float = 0.3, **fields) -> RoutingSignatures:
    return RoutingSignatures({"A01": A01, "A07": A07}, threshold=threshold, **fields)


# ----------------------------------------------------------------------------------------------- the distance
def test_routing_novelty_finds_the_nearest_signature_on_a_0_to_1_scale():
    close = routing_novelty(np.array([[0.0, 1.0], [0.75, 0.25]]), two_classes(), top_k=1)
    assert (close.nearest, close.distance, close.threshold, close.novel) == ("A07", 0.5 / 4, 0.3, False)
    middle = routing_novelty(np.array([[0.5, 0.5], [0.5, 0.5]]), two_classes(), top_k=1)
    assert middle.novel and middle.distance == 0.5
    assert signature_distance(np.array([[1.0, 0], [0, 1]]), [0, 1, 1, 0], top_k=1) == 1.0
    assert signature_distance(np.array([[1.0, 0], [0, 1]]), A01, top_k=1) == 0.0


def test_the_scale_divides_by_top_k_and_the_number_of_routers():
    """3 routers x 4 experts, top-2: disjoint experts in one router of three is 4 / (2 * 2 * 3) = 1/3."""
    known = np.array([[1.0, 1, 0, 0]] * 3)
    usage = known.copy()
    usage[1] = [0.0, 0, 1, 1]
    assert signature_distance(usage, known.reshape(-1), top_k=2) == pytest.approx(1 / 3)
    assert signature_distance(1.0 - known, known.reshape(-1), top_k=2) == pytest.approx(1.0)


def test_nearest_signatures_returns_each_rows_nearest_distance_and_index():
    usages = np.array([[[1.0, 0], [0, 1]], [[0, 1.0], [1, 0]], [[0.5, 0.5], [1, 0]]])  # (3, routers, experts)
    distances, nearest = nearest_signatures(usages, np.stack([A01, A07]), top_k=1)
    assert nearest.tolist() == [0, 1, 1]
    np.testing.assert_allclose(distances, [0.0, 0.0, 0.25])


def test_float32_usage_is_measured_in_float64():
    """The model's usage and the analysis's centroids are float32; the distance is compared with a threshold that
    was computed in float64, so it must not carry float32 rounding."""
    rng = np.random.default_rng(0)
    usages, centroids = rng.uniform(0, 1, (16, 3, 5)).astype(np.float32), rng.uniform(0, 1, (4, 15)).astype(np.float32)
    distances, nearest = nearest_signatures(usages, centroids, top_k=2)
    exact = np.abs(usages.astype(np.float64).reshape(16, 1, 15) - centroids.astype(np.float64)).sum(-1) / 12.0
    assert distances.dtype == np.float64
    np.testing.assert_array_equal(distances, exact.min(axis=1))
    np.testing.assert_array_equal(nearest, exact.argmin(axis=1))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: routing_novelty(np.zeros((2, 3)), two_classes(), 1), "6 values but the routing signatures have 4"),
        (lambda: routing_novelty(np.zeros(4), two_classes(), 1), r"must be \(routers, experts\), got shape \(4,\)"),
        (lambda: nearest_signatures(np.zeros((2, 2)), A01[None], 1), r"\(clips or windows, routers, experts\)"),
        (lambda: signature_distance(np.zeros((1, 2, 2)), A01, 1), r"got shape \(1, 1, 2, 2\)"),
    ],
)
def test_usage_of_the_wrong_shape_is_refused_naming_the_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_distance_equal_to_the_threshold_is_not_novel():
    at = routing_novelty(np.array([[0.5, 0.5], [0.5, 0.5]]), two_classes(threshold=0.5), top_k=1)
    assert (at.distance, at.novel) == (0.5, False)
    above = routing_novelty(np.array([[0.5, 0.5], [0.5, 0.5]]), two_classes(threshold=0.49), top_k=1)
    assert above.novel


# ----------------------------------------------------------------------------------------------- clips in windows
def test_clip_novelty_averages_window_distances_not_window_usages():
    # Windows routed to opposite known classes: each sits exactly on a signature (distance 0), while their averaged
    # usage sits between (> 0.2): the clip must read as known, as each window does; nearest = the most common.
    windows = np.array([[[1.0, 0], [0, 1]], [[0, 1.0], [1, 0]], [[1.0, 0], [0, 1]]])
    result = clip_novelty(windows, two_classes(threshold=0.2), top_k=1)
    assert (result.nearest, result.distance, result.novel, result.signatures) == ("A01", 0.0, False, "derived")
    assert routing_novelty(windows.mean(0), two_classes(threshold=0.2), top_k=1).distance > 0.2


def test_clip_novelty_is_the_mean_of_the_window_distances_and_its_nearest_the_most_common():
    windows = np.array([[[0.5, 0.5], [1, 0]], [[0, 1.0], [1, 0]], [[1.0, 0], [0.5, 0.5]]])  # A07 .25, A07 0, A01 .25
    result = clip_novelty(windows, two_classes(threshold=0.1), top_k=1)
    assert (result.nearest, result.distance, result.novel) == ("A07", pytest.approx(0.5 / 3), True)
    last_is_most_common = np.array([[[1.0, 0], [0, 1]], [[0, 1.0], [1, 0]], [[0, 1.0], [1, 0]]])
    assert clip_novelty(last_is_most_common, two_classes(), top_k=1).nearest == "A07"


def test_extended_signatures_say_so_in_every_result():
    signatures = two_classes(extended_experts=("expert_2",))
    assert (signatures.origin, signatures.size) == ("extended", 4)
    assert routing_novelty(np.array([[1.0, 0], [0, 1]]), signatures, top_k=1).signatures == "extended"
    assert two_classes().origin == "derived"


# ----------------------------------------------------------------------------------------------- fitting to a model
ROUTERS = ["layer_0", "layer_1"]


def fit(signatures: RoutingSignatures, num_experts: int = 2, top_k: int = 1, packs=None, routers=ROUTERS):
    return check_signatures(signatures, routers, num_experts, top_k, "sig.json", packs)


def test_signatures_that_fit_the_model_are_used_as_they_are():
    signatures = two_classes(top_k=1, router_names=list(ROUTERS))
    assert fit(signatures) is signatures
    assert fit(signatures, packs={"base": 2}) is signatures  # no packs recorded in the file: any layout of 2
    recorded = two_classes(expert_packs={"base": 2})
    assert fit(recorded, packs={"base": 2}) is recorded
    assert fit(recorded) is recorded  # a model that records no packs


@pytest.mark.parametrize(
    ("signatures", "kwargs", "message"),
    [
        (two_classes(top_k=2), {}, r"^sig\.json: top_k is 2 but this model routes to top_k=1$"),
        (two_classes(router_names=["block_0", "block_1"]), {}, r"^sig\.json: router_names \['block_0', 'block_1'\]"),
        (two_classes(), {"num_experts": 1}, r"^sig\.json: signatures have 4 values but this model has 2 routers x 1 "),
        (two_classes(), {"routers": ["a", "b", "c"], "num_experts": 3}, "3 routers x 3 experts = 9$"),
        (two_classes(), {"routers": []}, "0 routers x 2 experts = 0$"),
        (
            two_classes(),
            {"num_experts": 5, "packs": {"base": 3, "new": 2}},
            r"5 experts = 10; the signatures cover no prefix of whole packs \{'base': 3, 'new': 2\}$",
        ),
        (
            two_classes(expert_packs={"other": 2}),
            {"num_experts": 4, "packs": {"base": 2, "new": 2}},
            r"`expert_packs` \{'other': 2\} are not the first packs of this model \(\{'base': 2, 'new': 2\}\)",
        ),
        (
            two_classes(expert_packs={"other": 2}),
            {"packs": {"base": 2}},
            r"`expert_packs` \{'other': 2\} are not the first packs",
        ),
    ],
)
def test_signatures_for_another_model_are_refused_naming_what_differs(signatures, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(signatures, **kwargs)


def test_signatures_that_predate_new_experts_get_zero_columns_for_them():
    signatures = two_classes(expert_packs={"base": 2}, extended_experts=("expert_1",))
    extended = fit(signatures, num_experts=5, packs={"base": 2, "new": 3})
    np.testing.assert_array_equal(extended.known["A01"], [1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(extended.known["A07"], [0, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    assert extended.extended_experts == ("expert_1", "expert_2", "expert_3", "expert_4")
    assert extended.expert_packs == {"base": 2, "new": 3} and extended.origin == "extended"
    assert (extended.threshold, extended.size) == (0.3, 10)
    unrecorded = fit(two_classes(), num_experts=3)  # no packs anywhere: any larger expert count extends
    assert unrecorded.expert_packs is None and unrecorded.extended_experts == ("expert_2",)
    novelty = routing_novelty(np.array([[1.0, 0, 0], [0, 1, 0]]), unrecorded, top_k=1)
    assert (novelty.nearest, novelty.distance, novelty.signatures) == ("A01", 0.0, "extended")


# ----------------------------------------------------------------------------------------------- the saved file
def test_the_saved_file_holds_every_field_fitted_to_the_model():
    signatures = RoutingSignatures(
        {"A01": np.array([1, 0, 0, 1, 0, 0])}, 0.25, extended_experts=("expert_2",), dropped=("field 'x': earlier",)
    )
    contents = signatures_file_contents(signatures, ("layer_0", "layer_1"), {"base": 2, "new": 1}, np.int64(1))
    assert contents == {
        "distance": DISTANCE_DESCRIPTION,
        "top_k": 1,
        "router_names": ["layer_0", "layer_1"],
        "threshold": 0.25,
        "known": {"A01": [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]},
        "expert_packs": {"base": 2, "new": 1},
        "extended_experts": ["expert_2"],
        "dropped": ["field 'x': earlier"],
    }
    assert type(contents["top_k"]) is int and type(contents["known"]["A01"][0]) is float
    json.dumps(contents)  # plain JSON types only


def test_a_saved_file_round_trips_keeping_its_description_and_naming_what_it_drops(tmp_path):
    path = tmp_path / "routing_signatures.json"
    original = {"distance": "my own words", "threshold": 0.5, "known": {"A01": [1, 0, 0, 1]}, "z_extra": 1, "a": 2}
    path.write_text(json.dumps(original))
    loaded = load_routing_signatures(path)
    assert loaded.unknown_fields == ("a", "z_extra") and loaded.description == "my own words"
    contents = signatures_file_contents(loaded, ROUTERS, {"base": 2}, 1)
    assert contents["distance"] == "my own words"
    assert contents["dropped"] == [
        "field 'a': not a routing-signatures field, not carried over",
        "field 'z_extra': not a routing-signatures field, not carried over",
    ]
    path.write_text(json.dumps(contents))
    reloaded = load_routing_signatures(path)
    assert reloaded.unknown_fields == () and reloaded.dropped == tuple(contents["dropped"])
    assert (reloaded.top_k, reloaded.router_names, reloaded.expert_packs) == (1, ROUTERS, {"base": 2})
    assert signatures_file_contents(reloaded, ROUTERS, {"base": 2}, 1) == contents


# ----------------------------------------------------------------------------------------------- reading the file
def test_a_minimal_file_loads_with_the_optional_fields_unset(tmp_path):
    path = tmp_path / "routing_signatures.json"
    path.write_text(json.dumps({"threshold": 1, "known": {"A01": [1, 0], "bonafide": [0.5, 0.5]}, "distance": 3}))
    loaded = load_routing_signatures(str(path))
    assert list(loaded.known) == ["A01", "bonafide"] and loaded.known["A01"].dtype == np.float64
    np.testing.assert_array_equal(loaded.known["bonafide"], [0.5, 0.5])
    assert type(loaded.threshold) is float and loaded.threshold == 1.0
    assert (loaded.top_k, loaded.router_names, loaded.expert_packs, loaded.description) == (None, None, None, None)
    assert (loaded.extended_experts, loaded.dropped, loaded.unknown_fields, loaded.origin) == ((), (), (), "derived")
    path.write_text(json.dumps({"threshold": 0, "known": {"A01": [1, 0]}, "top_k": 3, "extended_experts": ["e_1"]}))
    loaded = load_routing_signatures(path)
    assert (loaded.threshold, loaded.top_k, loaded.extended_experts, loaded.origin) == (0.0, 3, ("e_1",), "extended")


GOOD = {"known": {"A01": [1, 0]}, "threshold": 1}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "cannot read routing signatures: not valid JSON"),
        ("[1, 2]", "'known' must be a non-empty object"),
        ({"known": {}, "threshold": 1.0}, "'known' must be a non-empty object"),
        ({"known": [[1, 0]], "threshold": 1.0}, "'known' must be a non-empty object"),
        ({"threshold": 1.0}, "'known' must be a non-empty object"),
        ({"known": {"A01": [1, 0]}}, "'threshold' must be a finite number, got None"),
        ({**GOOD, "threshold": "high"}, "'threshold' must be a finite number, got 'high'"),
        ({**GOOD, "threshold": True}, "'threshold' must be a finite number, got True"),
        ({**GOOD, "threshold": float("inf")}, "'threshold' must be a finite number, got inf"),
        ({**GOOD, "threshold": float("nan")}, "'threshold' must be a finite number, got nan"),
        ({"known": {"A01": [1, "x"]}, "threshold": 1}, r"known\['A01'\] must be a non-empty list of finite numbers"),
        ({"known": {"A01": [1, True]}, "threshold": 1}, r"known\['A01'\] must be a non-empty list"),
        ({"known": {"A01": [1, float("nan")]}, "threshold": 1}, r"known\['A01'\] must be a non-empty list"),
        ({"known": {"A01": []}, "threshold": 1}, r"known\['A01'\] must be a non-empty list"),
        ({"known": {"A01": 1}, "threshold": 1}, r"known\['A01'\] must be a non-empty list"),
        ({"known": {"A01": [1, 0], "A02": [1]}, "threshold": 1}, r"differ in length \(\[1, 2\]\); they must all"),
        ({**GOOD, "top_k": 0}, "'top_k' must be a positive integer, got 0"),
        ({**GOOD, "top_k": 1.5}, "'top_k' must be a positive integer, got 1.5"),
        ({**GOOD, "top_k": True}, "'top_k' must be a positive integer, got True"),
        ({**GOOD, "router_names": "layer_0"}, "'router_names' must be a list of strings"),
        ({**GOOD, "router_names": ["layer_0", 1]}, "'router_names' must be a list of strings"),
        ({**GOOD, "expert_packs": {}}, r"'expert_packs' must map pack names to positive expert counts, got \{\}"),
        ({**GOOD, "expert_packs": {"base": 0}}, "'expert_packs' must map pack names to positive expert counts"),
        ({**GOOD, "expert_packs": [["base", 2]]}, "'expert_packs' must map pack names to positive expert counts"),
        ({**GOOD, "extended_experts": "expert_4"}, "'extended_experts' must be a list of expert names$"),
        ({**GOOD, "extended_experts": [4]}, "'extended_experts' must be a list of expert names$"),
        ({**GOOD, "dropped": "something"}, "'dropped' must be a list of strings$"),
    ],
)
def test_malformed_signatures_name_the_file_and_field(tmp_path, payload, message):
    path = tmp_path / "routing_signatures.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    with pytest.raises(ValueError, match=message) as error:
        load_routing_signatures(path)
    assert str(error.value).startswith(f"{path}: ") and str(error.value).count(str(path)) == 1


def test_a_missing_file_is_a_value_error_naming_it(tmp_path):
    path = tmp_path / "routing_signatures.json"
    with pytest.raises(ValueError, match="cannot read routing signatures") as error:
        load_routing_signatures(path)
    assert str(path) in str(error.value)


def test_a_top_k_of_one_and_large_counts_are_accepted(tmp_path):
    path = tmp_path / "routing_signatures.json"
    path.write_text(json.dumps({**GOOD, "top_k": 1, "expert_packs": {"base": 1, "new": 64}}))
    loaded = load_routing_signatures(path)
    assert (loaded.top_k, loaded.expert_packs) == (1, {"base": 1, "new": 64})
