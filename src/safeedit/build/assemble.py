"""Turn planned pairs, gated questions/templates/responses and instruction pairs into SafeEdit records.

For an instance (question q, attack a) in split S the four generalization inputs are, as in the
paper: only q; q under another attack a'; another question q' under a; q' under a'. a' is another
template of S and q' another question of q's category in S. When S has no such item the builder
falls back -- first to a question of another category in S, then to an item of another split --
and every fallback is counted; the ones that cross splits are reported as leakage.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from safeedit.build.gates import Drop
from safeedit.build.inputs import AttackTemplate, InstructionPair
from safeedit.data.schema import GeneralizationInputs, KnowledgeConstraint, SafeEditInstance

SPLITS = ("train", "validation", "test")


@dataclass
class AssembleResult:
    records: dict[str, list[dict]]
    drops: list[Drop] = field(default_factory=list)
    leakage: list[str] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)


def assemble(plan: dict, questions: list[dict], attacks: list[AttackTemplate], responses: dict[str, dict],
             pairs: list[InstructionPair], seed: int = 0) -> AssembleResult:
    rng = random.Random(seed + 7919)
    qmap = {q["id"]: q for q in questions}
    amap = {a.id: a for a in attacks}
    q_split, a_split = plan["question_split"], plan["attack_split"]
    split_questions = {sp: sorted(qid for qid in qmap if q_split.get(qid) == sp) for sp in SPLITS}
    split_attacks = {sp: sorted(aid for aid in amap if a_split.get(aid) == sp) for sp in SPLITS}
    all_attacks = sorted(amap)
    all_questions = sorted(qmap)
    constraints = list(pairs)
    rng.shuffle(constraints)

    drops: list[Drop] = []
    fallbacks: Counter = Counter()
    leaks: dict[str, Counter] = defaultdict(Counter)
    records: dict[str, list[dict]] = {sp: [] for sp in SPLITS}
    next_id = 0
    for split in SPLITS:
        for p in (p for p in plan["pairs"] if p["split"] == split):
            qid, aid = p["question_id"], p["attack_id"]
            reason = None
            if qid not in qmap:
                reason = "question removed by a gate or the review"
            elif aid not in amap:
                reason = "attack template removed by the review"
            elif f"{p['id']}:safe" not in responses:
                reason = "safe response removed by a gate or the review"
            elif f"{p['id']}:unsafe" not in responses:
                reason = "unsafe response removed by a gate or the review"
            if reason:
                drops.append(Drop(p["id"], "instance", reason))
                continue
            q, a = qmap[qid], amap[aid]
            if a_split.get(aid) != split:
                leaks[split]["adversarial prompt uses a template of another split"] += 1
            # another attack a' (same split first)
            options = [x for x in split_attacks[split] if x != aid]
            if not options:
                options = [x for x in all_attacks if x != aid]
                if options:
                    leaks[split]["DG_otherA uses a template of another split"] += 1
            if not options:
                drops.append(Drop(p["id"], "instance", "no other attack template for DG_otherA"))
                continue
            other_a = amap[rng.choice(options)]
            # another question q' of the same category (same split first)
            same_cat = [x for x in split_questions[split] if x != qid and qmap[x]["category"] == q["category"]]
            if same_cat:
                other_q = qmap[rng.choice(same_cat)]
            else:
                in_split = [x for x in split_questions[split] if x != qid]
                cross = [x for x in all_questions if x != qid and qmap[x]["category"] == q["category"]]
                if in_split:
                    fallbacks["DG_otherQ from another category (none left in the split)"] += 1
                    other_q = qmap[rng.choice(in_split)]
                elif cross or len(all_questions) > 1:
                    leaks[split]["DG_otherQ uses a question of another split"] += 1
                    other_q = qmap[rng.choice(cross or [x for x in all_questions if x != qid])]
                else:
                    drops.append(Drop(p["id"], "instance", "no other question for DG_otherQ"))
                    continue
            pair = constraints[next_id % len(constraints)]
            instance = SafeEditInstance(
                position=next_id, id=next_id, category=q["category"], question=q["question"],
                adversarial_prompt=a.wrap(q["question"]),
                safe_response=responses[f"{p['id']}:safe"]["text"],
                unsafe_response=responses[f"{p['id']}:unsafe"]["text"],
                knowledge_constraint=KnowledgeConstraint(prompt=pair.instruction, answer=pair.answer),
                attack_category=a.category, attack_name=a.name,
                generalization=GeneralizationInputs(
                    only_question=q["question"],
                    other_attack=other_a.wrap(q["question"]),
                    other_question=a.wrap(other_q["question"]),
                    other_attack_and_question=other_a.wrap(other_q["question"]),
                    other_attack_category=other_a.category, other_attack_name=other_a.name,
                ),
            )
            records[split].append(instance.to_record())
            next_id += 1
    leakage = [f"{split}: {n} instance(s): {what}" for split in SPLITS for what, n in sorted(leaks[split].items())]
    return AssembleResult(records, drops, leakage, dict(fallbacks))
