"""A lexical baseline for the judge: TF-IDF n-grams + logistic regression, alone and averaged with a judge.

    python benchmarks/judge_tfidf.py [--judge FOLDER] [--full-pool]

Trains on the rows of the default recipe (``--full-pool``: the whole training split of the pool plus
our labelled rows), scores our labelled validation set and the pool's held-out split, and prints
balanced accuracy for the TF-IDF model, the judge, and their averaged p(unsafe) at weights 0.3 / 0.5 /
0.7 on the judge. It answers "would a cheap second model that reads words, not meaning, fix the
judge's misses?" (README, "Recipes tried"). Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import time

from judge_recipes import large_source_macro  # benchmarks/ is on sys.path when run as a script


def scored(rows, probs) -> dict:
    """safeedit's judge metrics (overall, per source) for p(unsafe) under the argmax rule."""
    from safeedit.judge.train import evaluate_predictions

    return evaluate_predictions(rows, [float(p >= 0.5) for p in probs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default=None, help="judge folder (default: the cached default judge)")
    ap.add_argument("--full-pool", action="store_true", help="train on the whole training split of the pool")
    args = ap.parse_args()

    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from safeedit.judge import SafetyJudge
    from safeedit.judge.train import JudgeTrainConfig, build_splits

    splits = build_splits(JudgeTrainConfig(max_train=None) if args.full_pool else JudgeTrainConfig())
    judge = SafetyJudge.from_pretrained(args.judge)  # None: the default judge

    def judge_probs(rows):
        out = []
        for i in range(0, len(rows), 64):
            out += judge([r.response for r in rows[i:i + 64]]).unsafe_prob
        return out

    start = time.perf_counter()
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=200_000, sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, max_features=300_000, sublinear_tf=True)
    texts = [r.response for r in splits.train]
    features = hstack([words.fit_transform(texts), chars.fit_transform(texts)]).tocsr()
    model = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(features, [r.label for r in splits.train])

    def lexical_probs(rows):
        x = hstack([words.transform([r.response for r in rows]), chars.transform([r.response for r in rows])]).tocsr()
        return list(model.predict_proba(x)[:, 1])

    print(f"TF-IDF + logistic regression on {len(splits.train)} rows, fitted in {time.perf_counter() - start:.0f} s")
    for name, rows, pool in (("validation (our labelled set)", splits.validation, False),
                             ("held-out split of the pool", splits.test, True)):
        lex, jud = lexical_probs(rows), judge_probs(rows)
        # the pool's sources are data sets (the large-source macro means something); our set's are row kinds
        def line(label, probs):
            m = scored(rows, probs)
            bal = m["overall"]["balanced_accuracy"]
            extra = f"  (macro over sources >= 100 rows {large_source_macro(m):.3f})" if pool else ""
            print(f"  {label:<23} {bal:.3f}{extra}")

        print(f"\n{name}, {len(rows)} rows, balanced accuracy")
        line("TF-IDF alone", lex)
        line("judge alone", jud)
        for w in (0.3, 0.5, 0.7):
            line(f"{w:.1f} judge + {1 - w:.1f} TF-IDF", [w * j + (1 - w) * t for j, t in zip(jud, lex)])


if __name__ == "__main__":
    main()
