"""Safety judge: score responses safe (0) / unsafe (1) like the SafeEdit paper.

- :class:`SafetyJudge` loads any Hugging Face safe/unsafe sequence classifier, the paper's
  ``zjunlp/SafeEdit-Safety-Classifier`` unchanged included, and applies the paper's rule
  (argmax label, empty response = 0.5, at most 512 tokens).
- :func:`train_judge` fine-tunes our own judge on CPU (the official one cannot be downloaded here)
  from a :class:`JudgeTrainConfig` and saves it, with a model card, to :func:`default_judge_dir`.
  A calibrated decision threshold, when the recipe stores one (``safeedit_judge.threshold`` in
  ``config.json``), replaces argmax; foreign judges keep argmax.
- :mod:`safeedit.judge.labels` reads our hand-labelled responses (``data/judge_labels/``), the
  validation set ``safeedit judge eval`` scores every judge on.

Response-only vs prompt+response. A judge records in its ``config.json``
(``safeedit_judge.with_prompt``) whether it reads the prompt too; ``SafetyJudge.__call__`` passes
prompts only to such a judge and refuses to run one without them. Our default judge reads the
response only, as the paper's does. Measured on the same grouped held-out split with the same
recipe, response-only scored accuracy 0.780 / F1 0.745, prompt+response 0.757 / 0.730; the prompt
helped only on DiaSafety chit-chat. A prompt-reading judge is also at risk of keying on SafeEdit's
jailbreak attack text rather than on the answer (details in ``train.MODE_NOTE`` and the model card).

Other judges. :func:`load_judge` takes any judge spec — our classifier (default), another
classifier folder or hub id, a generative judge (a causal LM with the ``llama-guard``,
``harmbench`` or ``rubric`` prompt format, :mod:`safeedit.judge.formats`) or ``http:MODEL`` at an
OpenAI-compatible endpoint — and returns a judge with the same call contract and an
``identity()`` to record. :mod:`safeedit.judge.agreement` measures two judges' agreement
(Cohen's kappa).
"""

from safeedit.judge.model import JudgeError, JudgeResult, SafetyJudge, default_judge_dir, unsafe_index
from safeedit.judge import pooled  # noqa: F401 - registers the pooled judge with transformers' Auto classes
from safeedit.judge.agreement import agreement, cohen_kappa
from safeedit.judge.formats import FORMATS, get_format
from safeedit.judge.generative import GenerativeJudge
from safeedit.judge.load import judge_kind, load_judge
from safeedit.judge.train import JudgeTrainConfig, evaluate, train_judge

__all__ = ["FORMATS", "GenerativeJudge", "JudgeError", "JudgeResult", "JudgeTrainConfig", "SafetyJudge", "agreement",
           "cohen_kappa", "default_judge_dir", "evaluate", "get_format", "judge_kind", "load_judge", "train_judge",
           "unsafe_index"]
