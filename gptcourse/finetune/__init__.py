"""Fine-tuning: classification, instruction tuning and LoRA."""
