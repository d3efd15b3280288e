"""SafeEdit data: typed records, loaders (file, folder, hub id) and validation."""

from safeedit.data.loaders import SafeEditData, load_safeedit
from safeedit.data.schema import DG_KEYS, EVAL_KEYS, GeneralizationInputs, KnowledgeConstraint, SafeEditInstance
from safeedit.data.validation import RecordProblem, SafeEditValidationError

__all__ = [
    "DG_KEYS",
    "EVAL_KEYS",
    "GeneralizationInputs",
    "KnowledgeConstraint",
    "RecordProblem",
    "SafeEditData",
    "SafeEditInstance",
    "SafeEditValidationError",
    "load_safeedit",
]
