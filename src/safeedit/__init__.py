"""safeedit: detoxify LLMs by knowledge editing (DINM and baselines) and measure it on SafeEdit."""

__version__ = "0.1.0"
