"""Build SafeEdit-style data: categories -> questions -> attack-wrapped prompts -> safe/unsafe responses
-> gates and human review -> instances with generalization inputs and knowledge constraints -> splits.

Entry point: :class:`safeedit.build.pipeline.Build` (the ``safeedit build`` command drives it).
"""

from safeedit.build.generators import Generation, Generator, LocalHFGenerator, OpenAIChatGenerator, make_generator
from safeedit.build.inputs import AttackTemplate, Category, InstructionPair, load_attacks, load_categories, load_pairs
from safeedit.build.pipeline import ALL_STAGES, STAGES, Build, BuildSettings, StageError

__all__ = [
    "ALL_STAGES", "STAGES", "AttackTemplate", "Build", "BuildSettings", "Category", "Generation", "Generator",
    "InstructionPair", "LocalHFGenerator", "OpenAIChatGenerator", "StageError", "load_attacks", "load_categories",
    "load_pairs", "make_generator",
]
