"""领导批转: the classes of matters a leader must instruct personally before the case is handled.

Plain rules, no gRPC, SQLAlchemy or broker. A node lists its classes in a YAML file named by
``LIANXIN_LEADER_CLASSES`` (for example a city's ten classes its Party secretary or mayor instructs
personally); without one, no case waits for a leader. A case placed at the node (with a unit, or in
the manual queue) whose category is one of a class's categories, or whose title or text holds one of
its keywords, stops in the leader's queue until an instruction (批示) is recorded::

    classes:
      - id: major-safety
        name: 重大安全事故隐患
        leader: 市委书记
        categories: [安全生产]
        keywords: [爆炸, 坍塌, 危化品]
      - id: mass-incident
        name: 群体性事件苗头
        leader: 市长
        keywords: [集体上访, 聚集]

A bad file stops the node at start with ``file: key: reason`` (as the catalogue and time limits do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument

LEADER_NAME_MAX = 40
INSTRUCTION_MAX = 2000


class LeaderClassError(ValueError):
    """The leader-classes file is invalid; the message names the file and the key."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")


@dataclass(frozen=True)
class LeaderClass:
    id: str
    name: str
    leader: str  # the office that instructs (市委书记, 市长), not a person's name
    categories: frozenset[str] = frozenset()
    keywords: tuple[str, ...] = ()

    def matches(self, category: str, text: str) -> bool:
        return (bool(category) and category in self.categories) or any(k in text for k in self.keywords)


@dataclass(frozen=True)
class LeaderClasses:
    classes: tuple[LeaderClass, ...] = ()
    source: str = "(none)"

    def match(self, category: str, text: str) -> LeaderClass | None:
        """The first class (in file order) the matter belongs to, or None."""
        for cls in self.classes:
            if cls.matches(category, text):
                return cls
        return None

    def get(self, class_id: str) -> LeaderClass | None:
        return next((c for c in self.classes if c.id == class_id), None)


def _strings(raw: Any, source: str, key: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, str) and x.strip() for x in raw):
        raise LeaderClassError(source, key, "expected a list of non-empty strings")
    return [x.strip() for x in raw]


def parse_leader_classes(raw: Any, *, source: str) -> LeaderClasses:
    """Validate the YAML's content; raises ``LeaderClassError`` naming the first bad key."""
    if not isinstance(raw, Mapping) or set(raw) - {"classes"}:
        raise LeaderClassError(source, "(top level)", "expected a mapping with the one key 'classes'")
    items = raw.get("classes")
    if not isinstance(items, list) or not items:
        raise LeaderClassError(source, "classes", "expected a non-empty list of classes")
    seen: set[str] = set()
    out: list[LeaderClass] = []
    for i, item in enumerate(items):
        key = f"classes[{i}]"
        if not isinstance(item, Mapping):
            raise LeaderClassError(source, key, "expected a mapping")
        unknown = set(item) - {"id", "name", "leader", "categories", "keywords"}
        if unknown:
            raise LeaderClassError(source, f"{key}.{sorted(map(str, unknown))[0]}", "unknown key")
        for field in ("id", "name", "leader"):
            value = item.get(field)
            if not isinstance(value, str) or not value.strip():
                raise LeaderClassError(source, f"{key}.{field}", "required, a non-empty string")
        class_id = str(item["id"]).strip()
        if class_id in seen:
            raise LeaderClassError(source, f"{key}.id", f"{class_id!r} is listed twice")
        seen.add(class_id)
        categories = _strings(item.get("categories"), source, f"{key}.categories")
        keywords = _strings(item.get("keywords"), source, f"{key}.keywords")
        if not categories and not keywords:
            raise LeaderClassError(source, key, "give categories or keywords (a class must match something)")
        out.append(
            LeaderClass(
                id=class_id,
                name=str(item["name"]).strip(),
                leader=str(item["leader"]).strip(),
                categories=frozenset(categories),
                keywords=tuple(keywords),
            )
        )
    return LeaderClasses(tuple(out), source)


def check_instruction(leader_name: str, instruction: str) -> tuple[str, str]:
    """The leader's name and the instruction (批示), trimmed; bad input names the request field."""
    name = (leader_name or "").strip()
    if not name:
        raise InvalidArgument("leader_name", "the name of the leader who instructed is required")
    if len(name) > LEADER_NAME_MAX:
        raise InvalidArgument("leader_name", f"at most {LEADER_NAME_MAX} characters, got {len(name)}")
    text = (instruction or "").strip()
    if not text:
        raise InvalidArgument("instruction", "the leader's instruction (批示) is required")
    if len(text) > INSTRUCTION_MAX:
        raise InvalidArgument("instruction", f"at most {INSTRUCTION_MAX} characters, got {len(text)}")
    return name, text


def queue_text(title: str, body: str, limit: int = 400) -> str:
    """What keywords are looked for in: the title and the start of the text."""
    return f"{title}\n{body[:limit]}"


def names(classes: Sequence[LeaderClass]) -> str:
    return ", ".join(f"{c.id} ({c.name}, {c.leader})" for c in classes)
