"""End users' corrections are untrusted labels (issue #13): caps and contradictions."""

from __future__ import annotations

from training.data import PoolSample, build_training_set, trust_user_labels
from training.synthetic import LabeledText


def correction(user: str, text: str, label: str, n: int) -> PoolSample:
    return PoolSample(
        session_id=f"s-{user}-{n}", request_id=f"r{n}", text=text, predicted_intent="greeting",
        confidence=0.5, label=label, label_source="correction", quality="high", user_id=user,
        ts_ms=1_000 + n,
    )  # fmt: skip


def test_one_user_counts_at_most_n_corrections_the_earliest() -> None:
    samples = [correction("mallory", f"text {n}", "price", n) for n in range(200)]
    kept, review = trust_user_labels(samples, max_corrections_per_user=20)
    assert [s.request_id for s in kept] == [f"r{n}" for n in range(20)]
    assert len(review) == 180
    assert all(s.label is None and s.quality == "review" for s in review)
    assert "over 20 corrections" in review[0].note


def test_a_correction_contradicting_other_users_goes_to_review_and_spam_outvotes_nobody() -> None:
    honest = [correction(f"user-{n}", "how long is delivery?", "shipping", n) for n in range(3)]
    spam = [correction("mallory", "How long is delivery", "price", 100 + n) for n in range(50)]
    kept, review = trust_user_labels(honest + spam, max_corrections_per_user=1_000)
    assert {s.user_id for s in kept} == {"user-0", "user-1", "user-2"}
    assert {s.user_id for s in review} == {"mallory"} and len(review) == 50
    assert "contradicts" in review[0].note


def test_human_labels_decide_and_other_kinds_of_labels_are_untouched() -> None:
    human = PoolSample(
        session_id="s-h", request_id="h", text="refund please", predicted_intent="greeting",
        confidence=None, label="returns", label_source="human", quality="high",
    )  # fmt: skip
    auto = PoolSample(
        session_id="s-a", request_id="a", text="refund please", predicted_intent="price",
        confidence=0.95, label="price", label_source="auto", quality="medium",
    )  # fmt: skip
    wrong = correction("u1", "Refund please!", "price", 1)
    kept, review = trust_user_labels([human, auto, wrong], max_corrections_per_user=20)
    assert kept == [human, auto] and [s.key for s in review] == [wrong.key]


def test_the_training_set_leaves_untrusted_corrections_out() -> None:
    pool = [correction("mallory", f"spam {n}", "price", n) for n in range(30)] + [
        correction(f"u{n}", f"where is my parcel {n}", "shipping", 100 + n) for n in range(5)
    ]
    base = [LabeledText(text=f"base {n}", label=["price", "shipping"][n % 2]) for n in range(10)]
    result = build_training_set(
        pool, base, ["price", "shipping"], replay_ratio=0.0, eval_share=0.0,
        min_pool_classes=2, seed=1, max_corrections_per_user=20,
    )  # fmt: skip
    from_mallory = [e for e in result.train if e.session_id.startswith("s-mallory")]
    assert len(from_mallory) == 20 and len(result.sent_to_review) == 10


def test_a_user_caught_contradicting_twice_is_untrusted_for_the_round() -> None:
    honest = [correction(f"user-{n}", f"known question {k}", "shipping", 10 * k + n)
              for k in range(2) for n in range(2)]  # fmt: skip
    copies = [correction("mallory", f"known question {k}", "price", 100 + k) for k in range(2)]
    novel = [correction("mallory", f"never seen {k}", "price", 200 + k) for k in range(5)]
    kept, review = trust_user_labels(honest + copies + novel, max_corrections_per_user=20)
    assert {s.user_id for s in kept} == {"user-0", "user-1"}
    assert len(review) == 7
    assert sum("contradict other users' labels (2 times" in s.note for s in review) == 5


def test_one_contradiction_does_not_taint_a_users_other_corrections() -> None:
    honest = [correction(f"user-{n}", "known question", "shipping", n) for n in range(2)]
    own = [correction("carol", "known question", "price", 10),
           correction("carol", "something new", "price", 11)]  # fmt: skip
    kept, review = trust_user_labels(honest + own, max_corrections_per_user=20)
    assert [s.request_id for s in review] == ["r10"]
    assert "r11" in {s.request_id for s in kept}


def test_an_attacker_copying_honest_texts_takes_out_only_themselves() -> None:
    honest = [correction(f"user-{n}", f"question {n}", "shipping", n) for n in range(5)]
    copies = [correction("mallory", f"question {n}", "price", 100 + n) for n in range(5)]
    kept, review = trust_user_labels(honest + copies, max_corrections_per_user=20)
    assert {s.user_id for s in kept} == {f"user-{n}" for n in range(5)}
    assert {s.user_id for s in review} == {"mallory"}


def test_trusting_twice_changes_nothing() -> None:
    honest = [correction(f"user-{n}", f"question {n}", "shipping", n) for n in range(5)]
    copies = [correction("mallory", f"question {n}", "price", 100 + n) for n in range(5)]
    capped = [correction("bob", f"bob asks {n}", "price", 200 + n) for n in range(30)]
    kept, review = trust_user_labels(honest + copies + capped, max_corrections_per_user=20)
    again, more = trust_user_labels(kept + review, max_corrections_per_user=20)
    assert {s.key for s in again if s.label} == {s.key for s in kept if s.label}
    assert not [s for s in more if s.key not in {r.key for r in review}]
