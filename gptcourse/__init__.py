"""gptcourse: from raw text to a GPT you pretrain, fine-tune, evaluate and serve yourself."""

__version__ = "0.1.0"
