"""Fine-tuning presets, picked by the --init model's hidden size unless --config names one."""
