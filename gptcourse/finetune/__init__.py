"""Fine-tuning a pretrained GPT (lessons 10 and 11).

* :mod:`.lora` -- LoRA from scratch: ``LoRALinear``, ``apply_lora`` (freezes the base),
  ``merge_lora`` / ``unmerge_lora``, trainable-parameter and memory counts;
* :mod:`.classify` -- a classification head on the last real token (SMS spam), gathered from
  :mod:`.spam` (data loading, balanced stratified splits) and :mod:`.classifier` (padding
  collate, ``GPTClassifier``, which layers to train (``set_trainable``), predictions), with
  training, metrics, confusion-matrix and curve plots;
* :mod:`.instruct` -- instruction tuning, gathered from :mod:`.records` (Alpaca prompts, chat
  messages as prompts, the -100 collate with optional prompt masking), :mod:`.supervised`
  (``InstructionData`` for :class:`gptcourse.train.Trainer`, ``sft``, the response loss),
  :mod:`.responses` (generation), :mod:`.checkable` (checkable tasks) and :mod:`.judge` (an
  optional OpenAI-compatible judge).
"""

from .classify import (
    SPAM_LABELS,
    TRAINABLE_MODES,
    Batch,
    ClassificationDataset,
    ClassifierConfig,
    GPTClassifier,
    classification_metrics,
    classify_text,
    encode_text,
    evaluate_classifier,
    load_sms_spam,
    plot_confusion,
    plot_history,
    predict,
    set_trainable,
    split_dataset,
    train_classifier,
)
from .classify import collate as collate_classification
from .instruct import (
    CHECKABLE_KINDS,
    IGNORE_INDEX,
    PREAMBLE,
    InstructionData,
    check_response,
    checkable_accuracy,
    checkable_splits,
    checkable_tasks,
    collate_instructions,
    encode_record,
    extract_response,
    format_example,
    format_prompt,
    generate_responses,
    judge_responses,
    load_instruction_data,
    messages_to_prompt,
    response_loss,
    save_responses,
    score_checkable,
    sft,
    split_records,
)
from .lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    apply_lora,
    compare_memory,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    match_modules,
    merge_lora,
    trainable_parameters,
    training_memory,
    unmerge_lora,
)

__all__ = [
    "CHECKABLE_KINDS", "DEFAULT_TARGETS", "IGNORE_INDEX", "PREAMBLE", "SPAM_LABELS",
    "TRAINABLE_MODES", "Batch", "ClassificationDataset", "ClassifierConfig", "GPTClassifier",
    "InstructionData", "LoRALinear", "apply_lora", "check_response", "checkable_accuracy",
    "checkable_splits", "checkable_tasks", "classification_metrics", "classify_text",
    "collate_classification",
    "collate_instructions", "compare_memory", "encode_record", "encode_text",
    "evaluate_classifier", "extract_response", "format_example", "format_prompt",
    "generate_responses", "judge_responses", "load_instruction_data",
    "load_lora_state_dict", "load_sms_spam", "lora_layers", "lora_state_dict",
    "match_modules", "merge_lora", "messages_to_prompt", "plot_confusion", "plot_history",
    "predict", "response_loss", "save_responses", "score_checkable", "set_trainable", "sft",
    "split_dataset", "split_records", "train_classifier", "trainable_parameters",
    "training_memory", "unmerge_lora",
]
