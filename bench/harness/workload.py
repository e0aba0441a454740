"""Synthetic submissions: varied texts (so duplicate and repeat detection see ordinary traffic, not one
re-posted text), a distinct invented phone per submission, category and region given as a hotline
operator would. No real personal data."""

from __future__ import annotations

import random
import uuid

from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as pb

PLACES = ("嘉州大道", "人民南路", "凤凰路", "柏杨中路", "迎春路", "滨江路", "春华路", "致江路", "白塔街", "肖公嘴")
MATTERS = (
    ("城乡建设", "路灯", "长期不亮，夜间出行不安全"),
    ("城乡建设", "人行道", "破损积水，老人容易摔倒"),
    ("环境保护", "工地", "夜间施工噪音扰民，影响休息"),
    ("环境保护", "餐馆", "油烟直排，楼上住户无法开窗"),
    ("交通运输", "公交车", "长期晚点，早高峰等车超过半小时"),
    ("交通运输", "路口", "红绿灯时间太短，行人过不了马路"),
    ("劳动和社会保障", "工厂", "拖欠工资三个月，工人多次讨要无果"),
    ("教育文体", "学校", "周边道路拥堵，接送孩子存在安全隐患"),
    ("商贸旅游", "超市", "出售过期食品，投诉后未处理"),
    ("卫生计生", "社区卫生站", "开放时间不固定，看病不方便"),
)


DETAILS = (
    "晚上十点以后尤其严重",
    "周末白天也一样",
    "已经向社区反映过两次",
    "物业说不归他们管",
    "附近住了很多老人和小孩",
    "下雨天情况更糟",
    "拍了照片可以提供",
    "邻居们都有意见",
    "上个月有人因此受伤",
    "打过电话但没有人接",
    "希望给个明确答复",
    "街道办让我们等通知",
    "现在每天都是这样",
    "之前修过一次又坏了",
    "旁边就是幼儿园",
    "商户也受到影响",
    "来往车辆很多",
    "执法人员来过但没有结果",
    "希望尽快派人看看",
    "这个问题已经影响正常生活",
)


class Submissions:
    """Request factory; thread-safe (each call draws from its own random state)."""

    def __init__(self, region_code: str, *, seed: int | None = None) -> None:
        self.region_code = region_code
        self.seed = seed if seed is not None else random.randrange(1 << 30)

    def request(self, client: int, n: int) -> pb.SubmitCaseRequest:
        rng = random.Random(f"{self.seed}-{client}-{n}")
        category, thing, problem = rng.choice(MATTERS)
        place = rng.choice(PLACES)
        number = rng.randrange(1, 999)
        tag = uuid.uuid4().hex[:8]
        return pb.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_APP,
            channel_ref=f"bench-{tag}",
            title=f"{place}{thing}{problem[:6]}",
            body=(
                f"{place}{number}号附近的{thing}{problem}。{'，'.join(rng.sample(DETAILS, 3))}。"
                f"已经持续{rng.randrange(2, 60)}天，参考编号 {tag}。"
            ),
            category=category,
            region_code=self.region_code,
            address=f"{place}{number}号",
            # An invented number per submission, so the same-person repeat rule rarely links two of them.
            complainant=common_pb2.Person(name="测试", phone=f"1390{int(tag, 16) % 10_000_000:07d}"),
        )
