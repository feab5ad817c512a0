"""A realistic, seeded chat workload for the throughput benchmarks (issue #11).

Unlike the friendly mix of ``bench_feature_job.py`` (12-event sessions, 8 short English
templates), this one looks like a shop assistant's traffic:

- sessions of 5 to 60 events, median about 20 (log-normal lengths);
- user texts from a long-tailed mix of English and Chinese, 5 to 300 characters; about
  half of them are phrases many users type ("hi", "how much?", "包邮吗"), Zipf-weighted,
  the rest composed from templates, slot fillers and numbers, a few of them paragraphs;
- bursts (a user typing several lines in a row) and silences (minutes, inside a session);
- 1-2% invalid lines of every kind the contract rejects, some of them far in the future;
- keyed by session, for as many partitions as the topic has.

It reuses the reference generator's session builder and delivery order (events out of
order by less than ``max_out_of_order``, a few producer retries), so every valid event
follows the contract.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.generator import (  # noqa: E402
    BASE_TS_MS,
    Delivery,
    GeneratedStream,
    _invalid_lines,
    _Session,
    build_deliveries,
)

COMMON_EN = [
    "hi", "hello", "hey there", "how much?", "how much is it?", "is shipping free?",
    "thanks", "thank you!", "ok", "yes", "no", "do you have it in stock?",
    "when will it arrive?", "can I return it?", "what sizes do you have?", "any discount?",
    "is there a warranty?", "can I pay with PayPal?", "where is my order?", "bye",
]  # fmt: skip
COMMON_ZH = [
    "你好", "在吗", "包邮吗", "多少钱", "有货吗", "什么时候发货", "可以便宜点吗", "谢谢",
    "好的", "有优惠吗", "能退货吗", "几天能到", "有什么颜色", "质量怎么样", "怎么付款",
    "我的订单到哪了", "再见", "有发票吗", "支持七天无理由退货吗", "尺码怎么选",
]  # fmt: skip
EN_TEMPLATES = [
    "do you have the {product} in {color}, size {size}?",
    "how long does shipping to {city} take for the {product}?",
    "I ordered the {product} {days} days ago and it has not arrived yet, order {order}",
    "what is the difference between the {product} and the {product2}?",
    "can I get {n} of the {product} delivered to {city} by {weekday}?",
    "the {product} I got is {color} but I ordered {color2}, what do I do?",
    "is the {product} waterproof? I need it for a trip to {city} next {weekday}",
    "my card was charged twice for order {order}, please refund one",
]
ZH_TEMPLATES = [
    "{product_zh}有{color_zh}的吗?要{size}码",
    "寄到{city_zh}要几天?我想买{n}个{product_zh}",
    "我{days}天前下的单,订单号{order},怎么还没发货",
    "{product_zh}和{product2_zh}有什么区别?哪个更好",
    "收到的{product_zh}是{color_zh}的,可是我买的是{color2_zh}的",
    "这个{product_zh}能防水吗?下周要去{city_zh}旅行",
    "订单{order}被扣了两次钱,麻烦退一次",
    "请问{product_zh}现在有活动吗?买{n}件能打几折",
]
SLOTS = {
    "product": ["running shoes", "rain jacket", "backpack", "desk lamp", "kettle", "headphones",
                "yoga mat", "coffee grinder", "phone case", "wool scarf"],
    "color": ["red", "black", "navy", "green", "white", "beige"],
    "city": ["Lyon", "Berlin", "Osaka", "Austin", "Porto", "Oslo", "Toronto", "Seoul"],
    "weekday": ["Monday", "Tuesday", "Friday", "Saturday"],
    "product_zh": ["跑鞋", "雨衣", "双肩包", "台灯", "电热水壶", "耳机", "瑜伽垫", "磨豆机"],
    "color_zh": ["红色", "黑色", "藏青色", "绿色", "白色", "米色"],
    "city_zh": ["上海", "北京", "广州", "深圳", "成都", "杭州", "武汉", "西安"],
}  # fmt: skip
PARAGRAPH_EN = (
    "I bought this last month and honestly it was great at first, but after two weeks the "
    "zipper broke and the lining started to come apart near the seams. I have the receipt "
    "and photos. I would like either a replacement or a refund, whichever is faster. "
)
PARAGRAPH_ZH = (
    "上个月买的,刚开始用着挺好,但是两个星期以后拉链就坏了,里衬的缝线也开了。我有购物凭证和照片,"
    "希望能换一个新的或者直接退款,哪个快就哪个。另外快递员态度也不太好,希望你们改进一下。"
)
ASSISTANT = [
    "Here is what I found.", "It ships in 2-3 days.", "Yes, it is in stock.",
    "您好,有货的。", "包邮的,亲。", "预计三天内送达。", "I can help with that.",
    "Let me check your order.", "这款有五种颜色可选。", "Sorry about that, let me fix it.",
]  # fmt: skip
INVALID_SHARE = 0.015


def _fill(rng: random.Random, template: str) -> str:
    values = {k: rng.choice(v) for k, v in SLOTS.items()}
    values.update(
        product2=rng.choice(SLOTS["product"]), product2_zh=rng.choice(SLOTS["product_zh"]),
        color2=rng.choice(SLOTS["color"]), color2_zh=rng.choice(SLOTS["color_zh"]),
        size=rng.choice(["S", "M", "L", "XL", "38", "42"]), n=rng.randint(1, 5),
        days=rng.randint(2, 12), order=f"{rng.randrange(10**9):09d}",
    )  # fmt: skip
    return template.format(**values)


def _zipf_choice(rng: random.Random, items: list[str]) -> str:
    # Weight 1/rank: "hi" is far more common than "is there a warranty?".
    weights = [1.0 / (rank + 1) for rank in range(len(items))]
    return rng.choices(items, weights=weights)[0]


def user_text(rng: random.Random, chinese: bool) -> str:
    """One user message: a common phrase (45%), filled templates, or a paragraph (9%)."""
    roll = rng.random()
    if roll < 0.45:
        return _zipf_choice(rng, COMMON_ZH if chinese else COMMON_EN)
    if roll < 0.91:
        text = _fill(rng, rng.choice(ZH_TEMPLATES if chinese else EN_TEMPLATES))
        if rng.random() < 0.5:  # a second sentence, as people add context
            text += " " + _fill(rng, rng.choice(ZH_TEMPLATES if chinese else EN_TEMPLATES))
        return text
    paragraph = PARAGRAPH_ZH if chinese else PARAGRAPH_EN
    return paragraph[: rng.randint(60, min(300, len(paragraph)))].strip()


def _gap_ms(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.25:
        return rng.randint(150, 1_500)  # a burst
    if roll < 0.93:
        return rng.randint(2_000, 45_000)
    return rng.randint(3 * 60_000, 12 * 60_000)  # a silence, inside the 30 min gap


def _session_length(rng: random.Random) -> int:
    return max(5, min(60, int(rng.lognormvariate(math.log(20), 0.55))))


def _session(rng: random.Random, index: int, start_ms: int) -> list[dict[str, Any]]:
    chinese = rng.random() < 0.45
    s = _Session(rng, index, f"rs{index:06d}", f"ru{rng.randrange(5_000):05d}", start_ms)
    target = _session_length(rng)
    s.add("fsm_state", rng.randint(0, 2_000), to_state="greeting")
    states = ["discovery", "recommendation", "checkout", "support"]
    while len(s.events) < target:
        for _ in range(rng.choice([1, 1, 1, 2, 3])):  # several lines in a row: a burst
            s.user(user_text(rng, chinese), _gap_ms(rng))
        reply = s.assistant(rng.randint(300, 8_000))
        reply["text"] = rng.choice(ASSISTANT)
        roll = rng.random()
        if roll < 0.15:
            s.add("fsm_state", rng.randint(100, 3_000), to_state=rng.choice(states))
        elif roll < 0.25:
            cta = f"cta-{index}-{len(s.events)}"
            s.add("cta_sent", rng.randint(100, 2_000), cta_id=cta, cta_type="product_card")
            if rng.random() < 0.4:
                s.add("cta_click", rng.randint(1_000, 120_000), cta_id=cta)
        elif roll < 0.29:
            s.add("cart_add", rng.randint(1_000, 30_000), sku=f"sku-{rng.randrange(800)}")
        elif roll < 0.31:
            s.add("order", rng.randint(1_000, 60_000), order_id=f"o-{index}-{len(s.events)}")
        elif roll < 0.36:
            s.add("feedback", rng.randint(1_000, 30_000), kind=rng.choice(
                ["thumbs_up", "thumbs_down", "rating"]), rating=rng.randint(1, 5))  # fmt: skip
    return s.events[: max(target, 5)]


def generate(
    sessions: int = 2_000, seed: int = 11, *, span_ms: int = 4 * 3600 * 1000
) -> GeneratedStream:
    """``sessions`` sessions starting over ``span_ms``, with 1.5% invalid lines among them."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for index in range(sessions):
        events.extend(_session(rng, index, BASE_TS_MS + rng.randrange(span_ms)))
    deliveries = build_deliveries(events, rng, duplicate_share=0.01)
    invalid_target = int(len(deliveries) * INVALID_SHARE)
    lines: list[Any] = []
    while len(lines) < invalid_target:
        lines.extend(_invalid_lines(rng))
    for line in lines[:invalid_target]:
        position = rng.randrange(len(deliveries) + 1)
        deliveries.insert(position, Delivery(raw=line.raw, key=line.key, invalid=line))
    return GeneratedStream(
        events=events, deliveries=deliveries, session_count_hint=sessions,
        stats={"events": len(events), "deliveries": len(deliveries), "invalid": invalid_target},
    )  # fmt: skip


def describe(stream: GeneratedStream) -> str:
    """One line: sizes, the text mix and how repetitive it is."""
    texts = [e["text"] for e in stream.events if e["event_type"] == "user_message"]
    by_session: dict[str, int] = {}
    for event in stream.events:
        by_session[event["session_id"]] = by_session.get(event["session_id"], 0) + 1
    lengths = sorted(by_session.values())
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in texts)
    chars = sorted(len(t) for t in texts)
    return (
        f"{len(stream.events):,} valid events in {len(lengths):,} sessions "
        f"(events per session median {lengths[len(lengths) // 2]}, max {lengths[-1]}), "
        f"{len(stream.invalid):,} invalid lines; {len(texts):,} user texts, "
        f"{len(set(texts)):,} distinct, {chinese / len(texts):.0%} Chinese, "
        f"{chars[0]}-{chars[-1]} chars (mean {sum(chars) / len(chars):.0f})"
    )


if __name__ == "__main__":
    print(describe(generate()))
